"""How a caption was read: the catalogue emoji whose training captions the encoder puts nearest it,
and the colour words it holds, so a user sees what the model will draw before judging the images.

«синий кролик» -> «кролик · синий»; «котик» -> «кошка (котенок)»; a caption far from everything the
model learnt says so instead of pretending.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from emojich.text.colours import colours_in, without_colour_words

# Below this cosine the nearest training caption is no reading of the prompt (USE places unrelated
# short Russian captions at about 0.3-0.55, a word and its diminutive at 0.6-0.9).
CONFIDENT = 0.6
SHOWN = 3


@dataclasses.dataclass(frozen=True)
class Match:
    name: str  # the emoji's catalogue name
    caption: str  # the training caption that matched (the name itself, a keyword, ...)
    similarity: float


@dataclasses.dataclass(frozen=True)
class Reading:
    prompt: str
    matches: tuple[Match, ...]  # best first, one per emoji
    colours: tuple[str, ...]

    @property
    def confident(self) -> bool:
        return bool(self.matches) and self.matches[0].similarity >= CONFIDENT

    def text(self) -> str:
        """One line for a person: «кролик · синий», or what the nearest guess was."""
        if not self.matches:
            return "нечего сопоставить: нет подписей обучения"
        best = self.matches[0]
        if not self.confident:
            return f"не узнал: ближе всего «{best.name}» (сходство {best.similarity:.2f})"
        head = best.name if best.caption == best.name else f"{best.name} ({best.caption})"
        return " · ".join([head, *self.colours])

    def line(self) -> str:
        """The sentence a user is shown: «Понял как: кролик · синий» or «Не узнал: …»."""
        text = self.text() if not self.confident else f"понял как: {self.text()}"
        return text[0].upper() + text[1:]

    def to_record(self) -> dict:
        return {
            "read_as": self.text(),
            "read_as_confident": self.confident,
            "nearest": [
                {"name": m.name, "caption": m.caption, "similarity": round(m.similarity, 4)}
                for m in self.matches
            ],
        }


class CaptionReader:
    """Training captions (names, keywords, inflections; colour phrases left out: colour is read by
    its words) with their caption vectors and the name of the emoji each belongs to."""

    def __init__(self, captions: list[str], names: list[str], vectors: torch.Tensor) -> None:
        self.captions, self.names, self.vectors = captions, names, vectors.float()

    @classmethod
    def load(cls, tokens: str | Path) -> CaptionReader | None:
        """From the tokenize stage's `pairs.csv` / `pairs.safetensors`; None where there are none."""
        folder = Path(tokens)
        if not (folder / "pairs.csv").is_file() or not (folder / "pairs.safetensors").is_file():
            return None
        with open(folder / "index.csv", encoding="utf-8", newline="") as handle:
            name_of = {row["id"]: row["caption"] for row in csv.DictReader(handle)}
        with open(folder / "pairs.csv", encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        vectors = load_file(str(folder / "pairs.safetensors"))["vectors"][
            :, 0
        ]  # the captions', not subjects'
        keep = [i for i, row in enumerate(rows) if row["split"] == "train" and row["kind"] != "colour"]
        return cls(
            [rows[i]["caption"] for i in keep],
            [name_of.get(rows[i]["id"], rows[i]["caption"]) for i in keep],
            vectors[keep],
        )

    def read(self, prompt: str, encode: Callable[[list[str]], torch.Tensor]) -> Reading:
        """`encode`: the model's caption encoder. Colour words are read by themselves and left out
        of the match, so «синий кролик» finds the rabbit, not «синее сердце»."""
        colours = tuple(colour.name for colour in colours_in(prompt))
        if not self.captions:
            return Reading(prompt, (), colours)
        rest = without_colour_words(prompt) if colours else prompt
        similarity = self.vectors @ encode([rest or prompt])[0].float()
        matches: list[Match] = []
        for row in torch.argsort(similarity, descending=True, stable=True).tolist():
            if any(m.name == self.names[row] for m in matches):
                continue
            matches.append(Match(self.names[row], self.captions[row], float(similarity[row])))
            if len(matches) == SHOWN:
                break
        return Reading(prompt, tuple(matches), colours)
