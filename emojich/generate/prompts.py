"""Prompts as the model will see them: prompt lists, the empty-prompt check, and what may surprise
the user about a prompt (truncation, unknown tokens, Latin-only text)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path

from emojich.text.bpe import UNK_ID, TextTokenizer, is_latin_only

log = logging.getLogger("emojich.generate")


@dataclasses.dataclass(frozen=True)
class PromptList:
    prompts: list[str]
    skipped_empty: int  # blank lines inside the prompt list (not counting trailing ones)


def parse_prompts(lines: Iterable[str]) -> PromptList:
    """One prompt per line; `#` starts a comment line; empty lines are skipped and counted."""
    lines = list(lines)
    prompts, empty = [], 0
    for line in lines:
        text = line.strip()
        if text.startswith("#"):
            continue
        if text:
            prompts.append(text)
        else:
            empty += 1
    # Blank lines after the last prompt are formatting, not a mistake worth a warning.
    trailing = 0
    for line in reversed(lines):
        if line.strip():
            break
        trailing += 1
    return PromptList(prompts, max(empty - trailing, 0))


def read_prompts(path: str | Path) -> PromptList:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    result = parse_prompts(lines)
    if result.skipped_empty:
        log.warning("%s: skipped %d empty prompt line(s)", path, result.skipped_empty)
    if not result.prompts:
        raise ValueError(f"{path}: no prompts (one prompt per line expected)")
    return result


def require_prompt(text: str) -> str:
    """A prompt given directly (command line) must not be empty: there is nothing to skip to."""
    if not text or not text.strip():
        raise ValueError("the prompt is empty; give a caption in Russian")
    return text.strip()


@dataclasses.dataclass(frozen=True)
class PromptCheck:
    """A prompt as the model will see it, with what may surprise the user about it."""

    text: str
    ids: list[int]  # the framed text row fed to the model
    tokens: int  # BPE tokens before framing
    truncated: bool  # bos + tokens + eos did not fit the text length; the tail was cut
    unknown_tokens: int  # characters the BPE does not know (emoji, rare symbols) -> <UNK>
    latin_only: bool  # no Cyrillic letter: the model was trained on Russian captions

    def warnings(self) -> list[str]:
        notes = []
        if self.truncated:
            notes.append(f"«{self.text}»: {self.tokens} tokens do not fit the text length; truncated")
        if self.latin_only:
            notes.append(f"«{self.text}»: Latin-only text; the model was trained on Russian captions")
        if self.unknown_tokens:
            notes.append(f"«{self.text}»: {self.unknown_tokens} unknown token(s) (emoji or rare symbols)")
        return notes


def check_prompt(
    tokenizer: TextTokenizer, text: str, text_seq_length: int, conditioned: bool = False
) -> PromptCheck:
    """A conditioned model reads the caption through its text encoder: its text row is padding,
    and nothing is cut (the BPE counts stay, as a note on unknown symbols)."""
    pieces = tokenizer.tokenize(text)
    return PromptCheck(
        text=text,
        ids=[0] * text_seq_length if conditioned else tokenizer.frame(pieces, text_seq_length),
        tokens=len(pieces),
        truncated=not conditioned and len(pieces) + 2 > text_seq_length,  # + bos and eos
        unknown_tokens=sum(1 for token in pieces if token == UNK_ID),
        latin_only=is_latin_only(text),
    )
