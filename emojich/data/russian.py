"""Russian emoji names: repairing the `emoji` package's spelling and reading CLDR annotations.

The `emoji` package's Russian names were produced by stripping combining marks, so «й» (и + breve)
became «и» everywhere: «темныи», «рукои», «джоистик». Most of the damage sits in adjective and
instrumental endings, where Russian spelling makes the repair unambiguous; elsewhere «и» after a
vowel is often correct («Гаити», «воин», «строитель»), so only whole words known to be broken are
fixed there. Every rule below was checked against CLDR's own spelling of the same names: a rule that
would turn a correct word into a wrong one is left out, even if it would fix more words.

«ё» was flattened to «е» the same way, but CLDR's Russian names also write «е», so it is left alone.

Where Debian's `unicode-cldr-core` is installed, CLDR's "tts" names (the short names the emoji
package's names were derived from) are read directly and need no repair.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from emojich.data.catalogue import normalise_caption

CLDR_ANNOTATION_FILES = (
    Path("/usr/share/unicode/cldr/common/annotations/ru.xml"),
    # Derived names cover sequences: flags, skin-tone and ZWJ variants, keycaps.
    Path("/usr/share/unicode/cldr/common/annotationsDerived/ru.xml"),
)

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


def load_cldr_names(paths: Iterable[Path] = CLDR_ANNOTATION_FILES) -> dict[str, str]:
    """CLDR's Russian short ("tts") names keyed by `cldr_key`; empty where none are installed."""
    names: dict[str, str] = {}
    for path in paths:
        if not path.is_file():
            continue
        for node in ET.parse(path).getroot().iter("annotation"):
            # Unconfirmed drafts are proposals that CLDR itself does not ship as data.
            if node.get("type") != "tts" or node.get("draft") in {"unconfirmed", "provisional"}:
                continue
            if node.text and node.get("cp"):
                names.setdefault(cldr_key(node.get("cp", "")), normalise_caption(node.text))
    return names


def installed_cldr_files(paths: Iterable[Path] = CLDR_ANNOTATION_FILES) -> list[Path]:
    return [path for path in paths if path.is_file()]
