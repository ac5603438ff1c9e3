"""Evaluation sets of prompts with the emoji a person would accept for each (`prompts/*.tsv`).

One prompt per line: `prompt<TAB>emoji[ emoji ...][<TAB>colour]`, `#` starts a comment. The emoji
are written as themselves (🐈), so a reader sees what each line asks for; a colour set names the
colour asked for, as its dictionary form («синий»).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from emojich.text.colours import BY_NAME
from emojich.text.normalise import normalise_caption

VARIATION_SELECTOR = "\ufe0f"


@dataclasses.dataclass(frozen=True)
class SetPrompt:
    text: str
    emoji: tuple[str, ...]  # sequences, U+FE0F removed; any of them counts as the intended emoji
    colour: str | None = None

    def image_ids(self, style: str) -> list[str]:
        """The catalogue ids these emoji have in a style: 'twemoji-1f408'."""
        return [f"{style}-" + "-".join(f"{ord(char):04x}" for char in sequence) for sequence in self.emoji]


@dataclasses.dataclass(frozen=True)
class PromptSet:
    name: str  # the file's stem: phrasings, colours, appendix
    prompts: list[SetPrompt]


def parse_prompt_set(name: str, lines: list[str]) -> PromptSet:
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) not in (2, 3) or not fields[0].strip() or not fields[1].strip():
            raise ValueError(f"{name}:{number}: expected `prompt<TAB>emoji[<TAB>colour]`, got {line!r}")
        colour = normalise_caption(fields[2]) if len(fields) == 3 else None
        if colour is not None and colour not in BY_NAME:
            raise ValueError(f"{name}:{number}: unknown colour {fields[2]!r}; one of {', '.join(BY_NAME)}")
        emoji = tuple(sequence.replace(VARIATION_SELECTOR, "") for sequence in fields[1].split())
        prompts.append(SetPrompt(fields[0].strip(), emoji, colour))
    if not prompts:
        raise ValueError(f"{name}: no prompts")
    return PromptSet(name, prompts)


def read_prompt_set(path: str | Path) -> PromptSet:
    path = Path(path)
    return parse_prompt_set(path.stem, path.read_text(encoding="utf-8").splitlines())
