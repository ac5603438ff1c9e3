"""One point of the sampling grid: sampling every prompt's attempts, ranking them, and the cell's numbers.

The report samples many attempts per prompt (top-k 2048, top-p 0.995, temperature 1.0, seed 42,
~512 attempts) and keeps the best. Here "best" is the lowest score from `emojich.generate.sampling`
(mean NLL of the image codes under the model): an automatic stand-in for the report's manual choice.

Reproducibility: each prompt is sampled by its own `generate` call, so image `i` of a prompt
depends only on (prompt, settings, seed, i), never on the other prompts in the list. The stage's
images can therefore be regenerated one by one with `emojich generate PROMPT --seed S`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from emojich.foundation import distributed
from emojich.foundation.progress import OnProgress, progress_bar
from emojich.generate.grid import SamplingCell
from emojich.generate.loading import TARGET_SIZE, Models
from emojich.generate.prompts import PromptCheck, check_prompt, require_prompt
from emojich.generate.sampling import generate
from emojich.models.origin import ORIGIN_KEY

log = logging.getLogger("emojich.generate")


def rank_by_score(scores: torch.Tensor) -> torch.Tensor:
    """Indices of `scores` best (lowest NLL) first; ties keep index order, so ranks are stable."""
    return torch.argsort(scores, stable=True)


def code_diversity(codes: torch.Tensor) -> float:
    """Mean over pairs of images of the fraction of code positions where they differ.

    Counted per position from code histograms instead of over explicit pairs: at a position
    where code v occurs c_v times, c_v (c_v - 1) / 2 pairs agree. O(N L) instead of O(N^2 L),
    which matters for the report's 512 attempts of 1024 codes.
    """
    count, length = codes.shape
    if count < 2:
        return 0.0
    vocab = int(codes.max()) + 1
    keys = torch.arange(length, device=codes.device) * vocab + codes
    histogram = torch.bincount(keys.flatten(), minlength=length * vocab).double()
    agreeing = (histogram * (histogram - 1)).sum() / 2
    pairs = length * count * (count - 1) / 2
    return float(1.0 - agreeing / pairs)


@dataclasses.dataclass
class PromptResult:
    check: PromptCheck
    codes: torch.Tensor  # [attempts, grid * grid] long, CPU
    scores: torch.Tensor  # [attempts] mean NLL (lower is better)
    order: torch.Tensor  # [attempts] attempt indices, best first

    @property
    def diversity(self) -> float:
        return code_diversity(self.codes)


@dataclasses.dataclass
class CellRun:
    cell: SamplingCell  # as requested
    effective: SamplingCell  # as sampled (top_k clamped)
    notes: list[str]
    prompts: list[PromptResult]
    seconds: float  # sampling only; the figure behind images/s


def sample_cell(
    models: Models,
    prompts: Sequence[str],
    cell: SamplingCell,
    attempts: int,
    batch_size: int = 16,
    progress: bool = True,
    on_progress: OnProgress | None = None,
) -> CellRun:
    """Sample `attempts` images per prompt and rank them; warnings are logged and returned.

    `on_progress(done, total)` counts the image tokens this process samples over the whole cell
    (all its batches), not per batch as `generate` does.
    """
    if not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be an integer >= 1, got {attempts!r}")
    cfg = models.dalle.config
    effective, clamp_note = cell.clamped(cfg.image_vocab_size)
    notes = [clamp_note] if clamp_note else []
    checks = [
        check_prompt(models.tokenizer, require_prompt(text), cfg.text_seq_length, cfg.conditioned)
        for text in prompts
    ]
    vectors = models.caption_vectors([check.text for check in checks])
    for check in checks:
        notes.extend(check.warnings())
    for note in notes:
        log.warning("%s", note)
    started = time.perf_counter()
    units = work_units(len(checks), attempts, batch_size)
    mine = units[distributed.rank() :: distributed.world_size()]
    grid = models.dalle.config.image_seq_length
    total_tokens = sum(last - first for _, first, last in mine) * grid
    done_tokens = 0
    shares = []
    for prompt_index, first, last in progress_bar(
        mine, disable=not progress or not distributed.is_main(), desc="sampling", unit="batch"
    ):
        sample = generate(
            models.dalle,
            checks[prompt_index].ids,
            images_num=attempts,
            top_k=effective.top_k,
            top_p=effective.top_p,
            temperature=effective.temperature,
            seed=effective.seed,
            batch_size=batch_size,
            progress=False,
            guidance=effective.guidance,
            image_indices=range(first, last),
            conditions=None if vectors is None else vectors[prompt_index : prompt_index + 1],
            on_progress=_shifted(on_progress, done_tokens, total_tokens),
        )
        done_tokens += (last - first) * grid
        shares.append((prompt_index, first, sample.codes, sample.scores))
    gathered = distributed.gather_to_main(shares)
    if gathered is None:  # not rank 0: its share is delivered
        return CellRun(cell, effective, notes, [], time.perf_counter() - started)
    codes = torch.empty(len(checks), attempts, grid, dtype=torch.long)
    scores = torch.empty(len(checks), attempts)
    for prompt_index, first, unit_codes, unit_scores in (share for rank in gathered for share in rank):
        codes[prompt_index, first : first + len(unit_codes)] = unit_codes
        scores[prompt_index, first : first + len(unit_scores)] = unit_scores
    results = [
        PromptResult(check, codes[i], scores[i], rank_by_score(scores[i])) for i, check in enumerate(checks)
    ]
    return CellRun(cell, effective, notes, results, time.perf_counter() - started)


def _shifted(on_progress: OnProgress | None, before: int, total: int) -> OnProgress | None:
    """A batch's `on_progress` that counts the tokens of the batches before it too."""
    if on_progress is None:
        return None
    return lambda done, _: on_progress(before + done, total)


def work_units(prompts: int, attempts: int, batch_size: int) -> list[tuple[int, int, int]]:
    """(prompt index, first attempt, end) per sampling batch, in one process's order.

    Processes share a cell by whole batches: each batch is then computed exactly as one
    process computes it (same rows, same shapes), so the images, and their scores to the last
    bit, do not depend on how many processes ran. Per-image seeds alone would give the same
    draws but not bit-equal logits, since a matrix product may round differently by batch shape.
    """
    return [
        (prompt, first, min(first + batch_size, attempts))
        for prompt in range(prompts)
        for first in range(0, attempts, batch_size)
    ]


def cell_metrics(run: CellRun, models: Models, keep_best: int, skipped_empty: int = 0) -> dict[str, Any]:
    """Per-cell numbers for `dvc metrics show/diff`; deterministic (timings live elsewhere)."""
    scores = torch.stack([r.scores for r in run.prompts])
    kept = torch.stack([r.scores[r.order[:keep_best]] for r in run.prompts])
    kept_diversity = [code_diversity(r.codes[r.order[:keep_best]]) for r in run.prompts]
    checks = [r.check for r in run.prompts]
    return {
        "top_k": run.cell.top_k,
        "top_k_effective": run.effective.top_k,
        "top_p": run.cell.top_p,
        "temperature": run.cell.temperature,
        "guidance": run.cell.guidance,
        "seed": run.cell.seed,
        "prompts": len(run.prompts),
        "attempts": scores.shape[1],
        "kept_per_prompt": kept.shape[1],
        "mean_score": round(float(scores.mean()), 6),
        "mean_score_kept": round(float(kept.mean()), 6),
        "best_score": round(float(scores.min()), 6),
        "diversity": round(float(np.mean([r.diversity for r in run.prompts])), 6),
        "diversity_kept": round(float(np.mean(kept_diversity)), 6),
        "prompts_skipped_empty": skipped_empty,
        "prompts_truncated": sum(c.truncated for c in checks),
        "prompts_latin_only": sum(c.latin_only for c in checks),
        "unknown_tokens": sum(c.unknown_tokens for c in checks),
        "size": TARGET_SIZE,
        "upscaler": models.output_method,
        ORIGIN_KEY: models.provenance[ORIGIN_KEY],
    }


def timing(run: CellRun) -> dict[str, float]:
    images = sum(len(r.scores) for r in run.prompts)
    return {
        "images": images,
        "processes": distributed.world_size(),  # sampling shared by whole batches, same images
        "sampling_s": round(run.seconds, 3),
        "images_per_s": round(images / run.seconds, 3) if run.seconds > 0 else 0.0,
    }
