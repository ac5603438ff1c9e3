"""Russian emoji names: repairing the `emoji` package's spelling and reading CLDR annotations.

The `emoji` package's Russian names were produced by stripping combining marks, so «й» (и + breve)
became «и» everywhere: «темныи», «рукои», «джоистик». Most of the damage sits in adjective and
instrumental endings, where Russian spelling makes the repair unambiguous; elsewhere «и» after a
vowel is often correct («Гаити», «воин», «строитель»), so only whole words known to be broken are
fixed there. Every rule below was checked against CLDR's own spelling of the same names: a rule that
would turn a correct word into a wrong one is left out, even if it would fix more words.

«ё» was flattened to «е» the same way, but CLDR's Russian names also write «е», so it is left alone.

CLDR's own "tts" names (the short names the emoji package's names were derived from) come first and
need no repair. They are read from the npm registry's `cldr-annotations-full` and
`cldr-annotations-derived-full` packages (names of sequences: flags, keycaps, skin-tone and ZWJ
variants), pinned in `cldr_packages.json` and fetched by `make setup` into `.venv/share/emojich/npm/`, so every
machine builds its captions from the same CLDR release. Nothing is read from the system: Debian's
`unicode-cldr-core`, where installed, is another release and would give another dataset.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

from emojich.data.catalogue import SourceUnavailable, normalise_caption

# The pins (committed; a dependency of the scrape stage through emojich/data) and where `make setup`
# puts the files they name: <environment>/share/emojich/npm/<package>/<file>. Inside the environment,
# not the checkout, because DVC's queued experiments run in temporary copies of the repository that
# share the environment but not its git-ignored folders.
CLDR_PINS = Path(__file__).with_name("cldr_packages.json")
NPM_DIR = Path(sys.prefix) / "share" / "emojich" / "npm"
INTEGRITY_MARKER = ".integrity"  # written by tools/npm_fetch.py once a package's files are in place

VARIATION_SELECTOR = "\ufe0f"

_WORD = re.compile(r"[^\W\d_]+")
_CONSONANTS = "бвгджзйклмнпрстфхцчшщ"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Whole words that are not Russian words at all in their broken form, so replacing them cannot
# damage a correct text. «поцелуи» is a real plural, but emoji names only ever use the singular.
_BROKEN_WORDS = {
    "джоистик": "джойстик",
    "лаинер": "лайнер",
    "слаидер": "слайдер",
    "строика": "стройка",
    "таимер": "таймер",
    "полицеискии": "полицейский",
    "студииныи": "студийный",
    "поцелуи": "поцелуй",
    "суперзлодеи": "суперзлодей",
}

# Soft-stem adjectives end in «-ний»; nouns in «-ния» end in «-нии» in the genitive («Японии»,
# «ожидании»), so «нии» is only repaired for this closed set of adjective stems.
_SOFT_ADJECTIVE_STEMS = _words(
    "средн син последн передн задн верхн нижн летн зимн осенн весенн утренн вечерн поздн ранн "
    "древн домашн внешн внутренн крайн лишн дальн ближн соседн прежн сегодняшн здешн"
)

# Final «ои» is almost always «-ой» (adjectives, feminine instrumental: «рукои», «ночнои»), but
# these are correct as written: possessives and plurals of «-ой» nouns.
_OI_WORDS_KEPT = _words("мои твои свои бои слои рои обои строи покои герои конвои изгои")


def repair_short_i(text: str) -> str:
    """Restore «й» where the `emoji` package wrote «и» and the spelling leaves no doubt."""
    return _WORD.sub(lambda match: _repair_word(match.group()), text)


def _repair_word(word: str) -> str:
    lower = word.lower()
    fixed = _BROKEN_WORDS.get(lower) or _repair_ending(lower)
    if fixed == lower:
        return word
    return fixed[0].upper() + fixed[1:] if word[0].isupper() else fixed


def _repair_ending(word: str) -> str:
    # No Russian word ends in «ыи», «ыися» or «иися»: these are always «-ый», «-ыйся», «-ийся».
    if word.endswith("ыи"):
        return word[:-1] + "й"
    if word.endswith(("ыися", "иися")):
        return word[:-3] + "йся"
    if word.endswith("ии") and _is_adjective_ii(word):
        return word[:-1] + "й"
    if word.endswith("ои") and len(word) >= 4 and word not in _OI_WORDS_KEPT:
        return word[:-1] + "й"
    return word


def _is_adjective_ii(word: str) -> bool:
    """Whether a word in «-ии» is an adjective in «-ий» rather than a noun in the genitive.

    After «ж ш ч щ» (горячий, следующий) and after consonant + «к» (маленький, женский) only the
    adjective reading exists in practice; vowel + «к» is left alone because of «Словакии».
    """
    stem = word[:-2]
    if stem.endswith(("ж", "ш", "ч", "щ")):
        return True
    if stem.endswith("к") and len(stem) >= 2 and stem[-2] in _CONSONANTS + "ь":
        return True
    return stem in _SOFT_ADJECTIVE_STEMS


def caption_from_emoji_name(name: str) -> str:
    """':темныи_тон_кожи:' -> 'темный тон кожи'. Underscores stand for spaces and hyphens alike."""
    return normalise_caption(repair_short_i(name.strip(":").replace("_", " ")))


_SKIN_TONE_PHRASE = re.compile(r"\s*[:,]?\s*(?:очень\s+)?(?:светл|средн|темн)\w*\s+тон\s+кожи", re.IGNORECASE)


def strip_skin_tone(caption: str) -> str:
    """'поднятая рука: очень светлый тон кожи' -> 'поднятая рука' (also for two-tone couples)."""
    return normalise_caption(_SKIN_TONE_PHRASE.sub("", caption)).rstrip(":, ")


def cldr_key(sequence: str) -> str:
    """CLDR keys its annotations by the emoji with every U+FE0F removed."""
    return sequence.replace(VARIATION_SELECTOR, "")


@dataclasses.dataclass(frozen=True)
class CldrPackage:
    name: str
    version: str
    integrity: str
    annotations: str  # the Russian annotations file inside the package


def cldr_packages(pins: Path = CLDR_PINS) -> list[CldrPackage]:
    """The pinned CLDR packages, annotations before derived annotations (first name wins)."""
    entries = json.loads(pins.read_text(encoding="utf-8"))["packages"]
    return [
        CldrPackage(
            entry["name"],
            entry["version"],
            entry["integrity"],
            next(file for file in entry["files"] if file.endswith("/ru/annotations.json")),
        )
        for entry in entries
    ]


def cldr_caption(tts: str) -> str:
    """'флаг: Гвинея-Бисау' -> 'флаг Гвинея-Бисау'.

    CLDR joins a sequence's base name and its qualifier with ': '. Dropping the colon gives the same
    shape as the emoji package's names (and the demo prompts, «флаг Япония»); the words, hyphens and
    commas stay as CLDR spells them.
    """
    return normalise_caption(tts.replace(": ", " "))


def read_cldr_annotations(path: Path) -> dict[str, str]:
    """One cldr-json annotations file: {cldr_key: caption} from each emoji's "tts" name."""
    data = json.loads(path.read_text(encoding="utf-8"))
    # cldr-json nests the table under the file's kind: "annotations" or "annotationsDerived".
    (table,) = data.values()
    names: dict[str, str] = {}
    for sequence, entry in table["annotations"].items():
        tts = entry.get("tts") or []
        if tts and tts[0].strip():
            names.setdefault(cldr_key(sequence), cldr_caption(tts[0]))
    return names


def read_cldr_keywords(path: Path) -> dict[str, list[str]]:
    """One cldr-json annotations file: {cldr_key: keywords} from each emoji's "default" list."""
    data = json.loads(path.read_text(encoding="utf-8"))
    (table,) = data.values()
    return {
        cldr_key(sequence): [word.strip() for word in entry.get("default") or [] if word.strip()]
        for sequence, entry in table["annotations"].items()
    }


def load_cldr_keywords(npm_dir: Path = NPM_DIR, pins: Path = CLDR_PINS) -> dict[str, list[str]]:
    """CLDR's Russian keywords per emoji (about five: 🐇 зайчик, заяц, кролик), keyed by `cldr_key`."""
    keywords: dict[str, list[str]] = {}
    for package in cldr_packages(pins):
        path = _checked_file(npm_dir, package)
        for key, words in read_cldr_keywords(path).items():
            keywords.setdefault(key, words)
    return keywords


def _checked_file(npm_dir: Path, package: CldrPackage) -> Path:
    """The package's annotations file, if `make setup` fetched exactly the pinned version."""
    folder = npm_dir / package.name
    path = folder / package.annotations
    marker = folder / INTEGRITY_MARKER
    if not path.is_file() or not marker.is_file():
        raise SourceUnavailable(f"{package.name}@{package.version} not found in {folder}; run `make setup`")
    if marker.read_text(encoding="utf-8").strip() != package.integrity:
        raise SourceUnavailable(
            f"{folder} holds another version than the pinned {package.name}@{package.version}; run `make setup`"
        )
    return path


def load_cldr_names(npm_dir: Path = NPM_DIR, pins: Path = CLDR_PINS) -> dict[str, str]:
    """CLDR's Russian short names keyed by `cldr_key`, from the pinned packages.

    Raises SourceUnavailable when `make setup` has not fetched them, or fetched other versions: a
    catalogue without them would silently have other captions.
    """
    names: dict[str, str] = {}
    for package in cldr_packages(pins):
        path = _checked_file(npm_dir, package)
        for key, caption in read_cldr_annotations(path).items():
            names.setdefault(key, caption)
    return names


def cldr_versions(pins: Path = CLDR_PINS) -> dict[str, str]:
    """{package: version} of the pinned CLDR packages, for the stage's stats."""
    return {package.name: package.version for package in cldr_packages(pins)}
