"""How well a cell's images show their captions: caption retrieval against the real catalogue
(`emojich.fidelity`), per prompt and for the kept images a user is shown."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from emojich.fidelity.retrieval import Reference, fidelity_metrics, pixel_spread, summarise, thumbnails
from emojich.fidelity.sets import set_metrics
from emojich.generate.cell import CellRun
from emojich.generate.loading import Models
from emojich.generate.rendering import decode
from emojich.text.prompt_sets import PromptSet


@dataclasses.dataclass
class Fidelity:
    """Caption retrieval of a cell's images against the real catalogue (`emojich.fidelity`)."""

    kinds: list[str]  # per prompt: train / held-out / zero-shot
    ranks: list[list[int]]  # per prompt, per attempt (attempt order); empty for zero-shot
    metrics: dict[str, Any]


def measure_fidelity(
    reference: Reference, run: CellRun, models: Models, keep: int, batch_size: int
) -> Fidelity:
    prompts = [r.check.text for r in run.prompts]
    thumbs = [thumbnails(decode(models, r.codes, batch_size)) for r in run.prompts]
    ranks = reference.prompt_ranks(prompts, thumbs)
    metrics: dict[str, Any] = fidelity_metrics(reference, prompts, ranks)
    # The same measure on what a user is shown: the best `keep` of each learnt prompt.
    kept = [
        rank
        for r, per in zip(run.prompts, ranks, strict=True)
        if per and reference.prompt_kind(r.check.text) == "train"
        for rank in (per[int(i)] for i in r.order[:keep])
    ]
    summary = summarise(kept, len(reference.index.captions))
    for name in ("top1", "top10"):
        if name in summary:
            metrics[f"train_{name}_kept"] = round(summary[name], 4)
    # Do the kept images of a prompt differ? Beside how much real emoji differ from each other.
    spreads = [pixel_spread(t[r.order[:keep]]) for t, r in zip(thumbs, run.prompts, strict=True)]
    metrics["kept_spread"] = round(float(sum(spreads) / max(len(spreads), 1)), 4)
    metrics["real_spread"] = round(reference.real_spread(), 4)
    return Fidelity([reference.prompt_kind(p) for p in prompts], ranks, metrics)


def score_sets(
    reference: Reference,
    prompt_sets: Sequence[PromptSet],
    runs: Sequence[CellRun],
    models: Models,
    batch_size: int,
) -> dict[str, Any]:
    """Generalisation numbers of evaluation sets (`emojich.fidelity.sets`) from their sampled runs."""
    metrics: dict[str, Any] = {}
    for prompt_set, run in zip(prompt_sets, runs, strict=True):
        images = [decode(models, result.codes, batch_size) for result in run.prompts]
        metrics.update(set_metrics(reference, prompt_set, images))
    return metrics
