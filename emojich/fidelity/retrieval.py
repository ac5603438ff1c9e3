"""Caption retrieval by nearest real emoji: a fidelity measure that does not ask the generator.

Every real emoji of the catalogue is reduced to a fixed feature: its 16 x 16 area-averaged
thumbnail in CIELAB. For a generated image, each caption of the catalogue gets the distance of
its nearest real emoji, and the prompt's caption is ranked among all captions by it. An image that
looks like the real «снеговик» ranks «снеговик» first; a brown blob ranks it at random.

A fixed pixel feature rather than a learned one: nothing has to be downloaded or trained, no
network judges images it was trained to produce, and the number means the same on every run.
It rewards the right colours in the right places, which is what a person sees in a 64 px emoji.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from emojich.fidelity.colour import to_lab
from emojich.foundation.layout import sequence_of
from emojich.text.normalise import normalise_caption

THUMBNAIL = 16
TOP_K = 10
THUMBNAILS_FILE = "thumbnails.safetensors"  # written by the tokenize stage beside index.csv


def thumbnails(images: torch.Tensor, side: int = THUMBNAIL) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> uint8 [N, 3, side, side] by area averaging."""
    small = F.interpolate(images.float(), size=(side, side), mode="area")
    return small.round().clamp(0, 255).to(torch.uint8)


def features(thumbs: torch.Tensor) -> torch.Tensor:
    """uint8 thumbnails [N, 3, s, s] -> float32 [N, s * s * 3], scaled so that the Euclidean
    distance is the root-mean-square ΔE over the thumbnail's pixels."""
    lab = torch.from_numpy(to_lab(thumbs)).flatten(1)
    return lab / (thumbs.shape[-1] * thumbs.shape[-2]) ** 0.5


def shape_features(thumbs: torch.Tensor) -> torch.Tensor:
    """uint8 thumbnails [N, 3, s, s] -> float32 features blind to hue: per pixel the largest and
    the smallest channel (HSV's value and value x (1 - saturation)), which a change of hue alone
    leaves as they are. A blue rabbit is then as near the real rabbit as a white one is."""
    values = thumbs.float()
    stacked = torch.stack([values.amax(dim=1), values.amin(dim=1)], dim=1) * (100.0 / 255.0)
    return stacked.flatten(1) / (thumbs.shape[-1] * thumbs.shape[-2]) ** 0.5


@dataclasses.dataclass
class RetrievalIndex:
    """Features of the real emoji and the caption each belongs to."""

    features: torch.Tensor  # [N, D] float32
    caption_ids: torch.Tensor  # [N] long, into `captions`
    captions: list[str]  # distinct, normalised

    @classmethod
    def build(
        cls,
        thumbs: torch.Tensor,
        captions: Sequence[str],
        feature: Callable[[torch.Tensor], torch.Tensor] = features,
    ) -> RetrievalIndex:
        if len(thumbs) != len(captions):
            raise ValueError(f"{len(thumbs)} thumbnails but {len(captions)} captions")
        normalised = [normalise_caption(c) for c in captions]
        distinct = sorted(set(normalised))
        position = {caption: i for i, caption in enumerate(distinct)}
        ids = torch.tensor([position[c] for c in normalised], dtype=torch.long)
        return cls(feature(thumbs), ids, distinct)

    def caption_id(self, caption: str) -> int | None:
        """Index of a caption of the catalogue, or None for a prompt it does not hold."""
        normalised = normalise_caption(caption)
        try:
            return self.captions.index(normalised)
        except ValueError:
            return None

    def ranks(
        self, query: torch.Tensor, targets: Sequence[int], exclude: Sequence[int] | None = None
    ) -> list[int]:
        """1-based rank of caption `targets[i]` for query feature row i among all captions.

        `exclude[i]`, when given, is a real emoji that query i must not be matched with (itself,
        for the real-image baseline). Ties count in the query's favour only once: the rank is
        1 + the number of captions strictly nearer than the target.
        """
        per_caption = self.caption_distances(query, exclude)
        target = torch.as_tensor(list(targets), dtype=torch.long)
        own = per_caption.gather(1, target[:, None])
        return (1 + (per_caption < own).sum(dim=1)).tolist()

    def caption_distances(self, query: torch.Tensor, exclude: Sequence[int] | None = None) -> torch.Tensor:
        """[queries, captions]: each caption's distance is that of its nearest real emoji."""
        distance = torch.cdist(query.float(), self.features)
        if exclude is not None:
            distance[torch.arange(len(query)), torch.as_tensor(list(exclude))] = float("inf")
        per_caption = torch.full((len(query), len(self.captions)), float("inf"))
        per_caption.scatter_reduce_(
            1, self.caption_ids.expand(len(query), -1), distance, reduce="amin", include_self=True
        )
        return per_caption

    def best_ranks(self, query: torch.Tensor, targets: Sequence[int]) -> list[int]:
        """1-based rank of the nearest of several acceptable captions, for every query row."""
        if not targets:
            return [len(self.captions)] * len(query)
        per_caption = self.caption_distances(query)
        best = per_caption[:, list(targets)].amin(dim=1, keepdim=True)
        return (1 + (per_caption < best).sum(dim=1)).tolist()


def pixel_spread(thumbs: torch.Tensor) -> float:
    """Mean over pairs of images of their RMS pixel distance (0 to 1): how different a set of
    images is. Four copies of one drawing give 0; unrelated emoji about 0.3."""
    if len(thumbs) < 2:
        return 0.0
    flat = thumbs.flatten(1).float() / 255.0
    distance = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    count = len(flat)
    return float(distance.sum() / (count * (count - 1)))


def summarise(ranks: Sequence[int], caption_count: int, top_k: int = TOP_K) -> dict[str, float]:
    """Top-1 and top-k rates, median rank, and what chance would give."""
    if not ranks:
        return {}
    values = np.asarray(ranks)
    return {
        "count": len(values),
        "top1": float((values <= 1).mean()),
        f"top{top_k}": float((values <= top_k).mean()),
        "median_rank": float(statistics.median(values.tolist())),
        f"top{top_k}_chance": min(top_k, caption_count) / caption_count,
        "median_rank_chance": (caption_count + 1) / 2,
    }


# ----- the catalogue as a reference set ------------------------------------------------------------

PROMPT_KINDS = ("train", "held-out", "zero-shot")


@dataclasses.dataclass
class Reference:
    """The real emoji, their captions and splits: what generated images are compared with."""

    index: RetrievalIndex
    caption_split: dict[str, str]  # normalised caption -> "train" / "val"
    val_rows: list[int]  # real validation emoji, for the real-image baseline
    thumbs: torch.Tensor | None = None  # uint8 [N, 3, s, s], row-aligned with `emoji`
    emoji: list[str] = dataclasses.field(default_factory=list)  # each row's sequence, U+FE0F removed
    learnt: frozenset[str] = frozenset()  # normalised captions the model trained on, beyond names

    @classmethod
    def build(
        cls,
        thumbs: torch.Tensor,
        captions: Sequence[str],
        splits: Sequence[str],
        emoji: Sequence[str] = (),
        learnt: Iterable[str] = (),
    ) -> Reference:
        index = RetrievalIndex.build(thumbs, captions)
        caption_split = {normalise_caption(c): s for c, s in zip(captions, splits, strict=True)}
        val_rows = [row for row, split in enumerate(splits) if split != "train"]
        learnt_set = frozenset(normalise_caption(c) for c in learnt)
        return cls(index, caption_split, val_rows, thumbs, list(emoji), learnt_set)

    @functools.cached_property
    def shape_index(self) -> RetrievalIndex:
        """The same catalogue under the hue-blind `shape_features`."""
        if self.thumbs is None:
            raise ValueError("this reference holds no thumbnails")
        captions = [self.index.captions[int(i)] for i in self.index.caption_ids]
        return RetrievalIndex.build(self.thumbs, captions, shape_features)

    def caption_ids_of(self, emoji: Iterable[str]) -> list[int]:
        """Caption ids of the real emoji among `emoji` (sequences without U+FE0F)."""
        wanted = set(emoji)
        return sorted(
            {int(self.index.caption_ids[row]) for row, key in enumerate(self.emoji) if key in wanted}
        )

    def rows_of(self, emoji: Iterable[str]) -> list[int]:
        wanted = set(emoji)
        return [row for row, key in enumerate(self.emoji) if key in wanted]

    def prompt_kind(self, prompt: str) -> str:
        """train: a caption the model learnt (a training name, or another training caption such as
        a keyword); held-out: a validation name; zero-shot: neither."""
        caption = normalise_caption(prompt)
        split = self.caption_split.get(caption)
        if split is None:
            return "train" if caption in self.learnt else "zero-shot"
        return "train" if split == "train" else "held-out"

    def real_spread(self, rows: int = 256) -> float:
        """`pixel_spread` of real emoji of the catalogue (the first `rows`): how different emoji are."""
        return pixel_spread(self.thumbs[:rows]) if self.thumbs is not None else float("nan")

    def real_baseline(self, top_k: int = TOP_K) -> dict[str, float]:
        """How often a real validation emoji, itself left out, retrieves its own caption."""
        rows = self.val_rows
        if not rows:
            return {}
        ranks = self.index.ranks(self.index.features[rows], self.index.caption_ids[rows].tolist(), rows)
        return summarise(ranks, len(self.index.captions), top_k)

    def prompt_ranks(
        self, prompts: Sequence[str], thumbs_per_prompt: Sequence[torch.Tensor]
    ) -> list[list[int]]:
        """Ranks of each prompt's caption for its images; empty for zero-shot prompts."""
        out = []
        for prompt, thumbs in zip(prompts, thumbs_per_prompt, strict=True):
            caption = self.index.caption_id(prompt)
            if caption is None or not len(thumbs):
                out.append([])
                continue
            out.append(self.index.ranks(features(thumbs), [caption] * len(thumbs)))
        return out


def fidelity_metrics(
    reference: Reference, prompts: Sequence[str], ranks: Sequence[Sequence[int]], top_k: int = TOP_K
) -> dict[str, float]:
    """Flat metrics per prompt kind, beside chance and the real-image baseline."""
    captions = len(reference.index.captions)
    metrics: dict[str, float] = {}
    for kind in PROMPT_KINDS:
        chosen = [r for p, r in zip(prompts, ranks, strict=True) if reference.prompt_kind(p) == kind]
        metrics[f"prompts_{kind.replace('-', '_')}"] = len(chosen)
        if kind == "zero-shot":
            continue  # no caption to retrieve
        summary = summarise([rank for per_prompt in chosen for rank in per_prompt], captions, top_k)
        for name in ("top1", f"top{top_k}", "median_rank"):
            if name in summary:
                metrics[f"{kind.replace('-', '_')}_{name}"] = round(summary[name], 4)
    baseline = reference.real_baseline(top_k)
    for name in ("top1", f"top{top_k}", "median_rank"):
        if name in baseline:
            metrics[f"real_val_{name}"] = round(baseline[name], 4)
    metrics[f"chance_top{top_k}"] = round(min(top_k, captions) / captions, 6)
    metrics["captions"] = captions
    return metrics


def load_reference(tokens: str | Path) -> Reference | None:
    """The tokenize stage's `thumbnails.safetensors` and `index.csv` (and the training captions of
    `pairs.csv`, where written), or None where it has none: then nothing is measured."""
    folder = Path(tokens)
    if not (folder / THUMBNAILS_FILE).is_file() or not (folder / "index.csv").is_file():
        return None
    rows = _read_csv(folder / "index.csv")
    thumbs = load_file(str(folder / THUMBNAILS_FILE))["thumbnails"]
    if len(thumbs) != len(rows):
        raise ValueError(f"{folder}: {len(thumbs)} thumbnails but {len(rows)} rows in index.csv")
    learnt = []
    if (folder / "pairs.csv").is_file():
        learnt = [row["caption"] for row in _read_csv(folder / "pairs.csv") if row["split"] == "train"]
    emoji = [(sequence_of(r["id"]) or "").replace("\ufe0f", "") for r in rows]
    return Reference.build(thumbs, [r["caption"] for r in rows], [r["split"] for r in rows], emoji, learnt)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))
