"""Training captions: every way a person might write an emoji's caption, and how they were chosen.

For each emoji the model trains on its catalogue name and, where they help:

- **keywords** from CLDR (🐇 зайчик, заяц; ⛄ снеговичок, снежная баба), but only the distinctive
  ones: a keyword shared by many emoji («животное», «лицо», «флаг») would teach the model the
  average of their drawings, a blob. A keyword is kept when at most `max_emoji_per_keyword` emoji
  carry it (counted by name, so skin-tone variants count once) and it is not another emoji's name;
- **inflections** of names of the form «флаг X» in the genitive («флаг Японии»), how people write
  them, beside CLDR's nominative «флаг Япония»;
- **colours** (`emojich.text.colours`) for recoloured images, built by the tokenize stage.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from emojich.text.morphology import genitive
from emojich.text.normalise import normalise_caption

KINDS = ("name", "keyword", "inflection", "colour")


@dataclasses.dataclass(frozen=True)
class CaptionConfig:
    keywords: bool = True
    max_emoji_per_keyword: int = 2  # a keyword carried by more emoji than this is not a caption
    inflections: bool = True

    def __post_init__(self) -> None:
        if self.max_emoji_per_keyword < 1:
            raise ValueError(f"max_emoji_per_keyword must be >= 1, got {self.max_emoji_per_keyword}")


@dataclasses.dataclass(frozen=True)
class KeywordChoice:
    """Which keywords became captions, and why the others did not (counted for the stage's record)."""

    kept: dict[str, list[str]]  # emoji name -> its kept keywords
    dropped_shared: int  # distinct keywords carried by too many emoji
    dropped_other_name: int  # keywords that are another emoji's own name


def choose_keywords(keywords_by_name: Mapping[str, Sequence[str]], max_emoji: int) -> KeywordChoice:
    """Keep each name's distinctive keywords (see the module docstring)."""
    names = {normalise_caption(name) for name in keywords_by_name}
    carriers: dict[str, set[str]] = defaultdict(set)
    for name, words in keywords_by_name.items():
        for word in words:
            carriers[normalise_caption(word)].add(normalise_caption(name))
    shared = {word for word, owners in carriers.items() if len(owners) > max_emoji}
    other_name = {word for word, owners in carriers.items() if word in names and owners != {word}}
    kept: dict[str, list[str]] = {}
    for name, words in keywords_by_name.items():
        own = normalise_caption(name)
        chosen = []
        for word in words:
            key = normalise_caption(word)
            if key == own or key in shared or (key in other_name and key != own) or key in chosen:
                continue
            chosen.append(key)
        kept[name] = chosen
    return KeywordChoice(kept, len(shared), len(other_name - shared))


def inflections(name: str) -> list[str]:
    """Forms of a name people write that CLDR does not: «флаг Япония» -> «флаг Японии»."""
    words = name.split()
    if len(words) >= 2 and normalise_caption(words[0]) == "флаг":
        form = genitive(" ".join(words[1:]))
        if form and normalise_caption(form) != normalise_caption(" ".join(words[1:])):
            return [f"{words[0]} {form}"]
    return []


def caption_counts(kinds: Sequence[str]) -> dict[str, int]:
    counts = Counter(kinds)
    return {f"captions_{kind}": counts.get(kind, 0) for kind in KINDS}
