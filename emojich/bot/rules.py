"""Telegram's rules for sticker sets and the bot's own rules for captions, as pure functions.

Everything here is checked before any Bot API call, so a user hears about a bad name, emoji list
or caption from the bot in plain words instead of as a Telegram error code. The file rules
(PNG/WEBP, one side exactly 512 px, 512 KB; thumbnails 100 x 100, 128 KB) live in
`emojich.segment.stickers`, beside the code that encodes the files.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable, Iterator
from functools import cache

from emojich.text.bpe import is_latin_only
from emojich.text.normalise import normalise_caption

SET_NAME_MAX = 64  # characters, `_by_<bot>` included
SET_TITLE_MAX = 64
STICKERS_AT_CREATION = (1, 50)  # createNewStickerSet takes 1-50 stickers
STICKERS_PER_SET = 120  # static sets
EMOJI_PER_STICKER = (1, 20)

_SET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

# Set names are Latin only; Russian titles are transliterated so the link still reads like the title.
_TRANSLIT = {
    **dict(zip("абвгдезийклмнопрстуфыэ", "abvgdeziyklmnoprstufye", strict=True)),
    **{"ё": "e", "ж": "zh", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "shch", "ю": "yu", "я": "ya"},
    **{"ъ": "", "ь": ""},
}


class RuleError(ValueError):
    """Input that breaks a rule; `code` names the rule, the message says it in words."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# ----- set names -----


def set_name_problems(name: str, bot_username: str) -> list[str]:
    """Every way `name` breaks Telegram's rules for a set's short name; empty when it is valid."""
    problems = []
    if not _SET_NAME.fullmatch(name):
        problems.append("only Latin letters, digits and underscores, starting with a letter")
    if "__" in name:
        problems.append("no two underscores in a row")
    if not name.lower().endswith(f"_by_{bot_username.lower()}"):
        problems.append(f"must end in _by_{bot_username}")
    if len(name) > SET_NAME_MAX:
        problems.append(f"{len(name)} characters, over {SET_NAME_MAX}")
    return problems


def transliterate(title: str) -> str:
    """Russian letters to Latin, everything else that is not a letter or digit to `_`."""
    out = []
    for char in unicodedata.normalize("NFKC", title).lower():
        if char in _TRANSLIT:
            out.append(_TRANSLIT[char])
        elif char.isascii() and char.isalnum():
            out.append(char)
        else:
            out.append("_")
    return re.sub("_+", "_", "".join(out)).strip("_")


def set_name(title: str, bot_username: str, number: int = 1) -> str:
    """The short name for a set titled `title`; `number` > 1 adds a suffix for an occupied name.

    Always valid: the slug is cut so that the suffix and `_by_<bot>` fit in 64 characters, and a
    title with nothing usable (emoji only, say) becomes `stickers`.
    """
    if number < 1:
        raise ValueError(f"number must be >= 1, got {number}")
    tail = (f"_{number}" if number > 1 else "") + f"_by_{bot_username}"
    slug = transliterate(title)
    if not slug or not slug[0].isalpha():
        slug = f"stickers_{slug}".strip("_")
    slug = slug[: SET_NAME_MAX - len(tail)].rstrip("_")
    name = slug + tail
    problems = set_name_problems(name, bot_username)
    if problems:  # only a bot username that is itself invalid gets here
        raise RuleError("set-name", f"cannot make a set name from {title!r}: {'; '.join(problems)}")
    return name


def set_name_candidates(title: str, bot_username: str, taken: Callable[[str], bool]) -> Iterator[str]:
    """Names for `title`, the plain one first, then `_2`, `_3`, ... skipping those `taken` knows of."""
    number = 1
    while True:
        name = set_name(title, bot_username, number)
        if not taken(name):
            yield name
        number += 1


def check_title(text: str) -> str:
    title = " ".join(text.split())
    if not title:
        raise RuleError("title-empty", "the set needs a title")
    if len(title) > SET_TITLE_MAX:
        raise RuleError("title-long", f"a set title has at most {SET_TITLE_MAX} characters")
    return title


# ----- set sizes -----


def check_set_capacity(stickers_in_set: int, adding: int = 1) -> None:
    """Raise when adding `adding` stickers to a set of `stickers_in_set` breaks Telegram's limits."""
    low, high = STICKERS_AT_CREATION
    if stickers_in_set == 0 and not low <= adding <= high:
        raise RuleError("set-size", f"a new set starts with {low}-{high} stickers, not {adding}")
    if stickers_in_set + adding > STICKERS_PER_SET:
        raise RuleError("set-full", f"a set holds at most {STICKERS_PER_SET} stickers")


# ----- emoji -----


@cache
def _emoji_module():
    """The `emoji` package with its Russian names loaded (a global switch, so done once, lazily)."""
    import emoji

    emoji.config.load_language("ru")
    return emoji


def parse_emoji_list(text: str) -> list[str]:
    """The emoji of a message such as «😺 👍🏽», in order, without repeats; 1-20 and nothing else."""
    emoji = _emoji_module()
    found = emoji.emoji_list(text)
    rest = emoji.replace_emoji(text, replace="")
    if rest.strip(" ,;\t\n\ufe0f\u200d"):
        raise RuleError("emoji-text", "send only emoji, for example 😺 or 😺👍")
    unique = list(dict.fromkeys(match["emoji"] for match in found))
    low, high = EMOJI_PER_STICKER
    if not low <= len(unique) <= high:
        raise RuleError("emoji-count", f"a sticker takes {low} to {high} emoji, not {len(unique)}")
    return unique


_WORD = re.compile(r"[^\W\d_]+")


def _stems(text: str) -> set[str]:
    # A 5-letter prefix is a crude Russian stem, but it matches «кошка» with «кошки» and keeps
    # «сердце» apart from «сердитое»; shorter words («кот», «лев») are kept whole.
    return {word[:5] for word in _WORD.findall(normalise_caption(text)) if len(word) >= 3}


@cache
def _emoji_names() -> tuple[tuple[str, frozenset[str]], ...]:
    from emojich.data.russian import repair_short_i

    emoji = _emoji_module()
    names = []
    for char, data in emoji.EMOJI_DATA.items():
        name = data.get("ru")
        # Fully qualified, single emoji without skin tones: what a user would pick by hand.
        if (
            not name
            or data.get("status") != emoji.STATUS["fully_qualified"]
            or "\U0001f3fb" <= char[-1] <= "\U0001f3ff"
        ):
            continue
        names.append((char, frozenset(_stems(repair_short_i(name.strip(":").replace("_", " "))))))
    return tuple(names)


def propose_emoji(caption: str, count: int = 3, fallback: str = "🙂") -> list[str]:
    """Emoji whose Russian names share the most word stems with the caption, best first."""
    stems = _stems(caption)
    scored = []
    for order, (char, name) in enumerate(_emoji_names()):
        overlap = len(stems & name)
        if overlap:
            # More shared words first, then shorter names (closer matches), then catalogue order.
            scored.append((-overlap, len(name), order, char))
    proposals = [char for *_, char in sorted(scored)[:count]]
    return proposals or [fallback]


# ----- captions -----


@dataclasses.dataclass(frozen=True)
class CaptionCheck:
    text: str
    tokens: int
    latin_only: bool  # allowed, but the model learnt Russian: the user gets a note


def check_caption(text: str | None, count_tokens: Callable[[str], int], max_tokens: int) -> CaptionCheck:
    """A caption the model can use, or a RuleError saying why not (empty, only emoji, too long)."""
    caption = " ".join((text or "").split())
    if not caption:
        raise RuleError("caption-empty", "the caption is empty")
    emoji = _emoji_module()
    words = emoji.replace_emoji(caption, replace="")
    if not any(char.isalnum() for char in words):
        if emoji.emoji_count(caption):
            raise RuleError("caption-only-emoji", "the caption is only emoji")
        raise RuleError("caption-empty", "the caption has no words")
    tokens = count_tokens(caption)
    if tokens > max_tokens:
        raise RuleError("caption-long", f"the caption is {tokens} tokens, the model reads {max_tokens}")
    return CaptionCheck(caption, tokens, is_latin_only(caption))
