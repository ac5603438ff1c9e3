"""Emoji generation: prompts, sampling cells, ranking, diversity, 512 px rendering and contact sheets.

The report samples many attempts per prompt (top-k 2048, top-p 0.995, temperature 1.0, seed 42,
~512 attempts) and keeps the best. Here "best" is the lowest score from `emojich.sampling` (mean
NLL of the image codes under the model): an automatic stand-in for the report's manual choice.

Reproducibility: each prompt is sampled by its own `generate` call, so image `i` of a prompt
depends only on (prompt, settings, seed, i), never on the other prompts in the list. The stage's
images can therefore be regenerated one by one with `emojich generate PROMPT --seed S`.

512 px output: a DWT VQGAN (paper profile) decodes to 512 px itself; otherwise the decoded images
are super-resolved x4 by the upscaler trained upstream and resized to 512 px (Lanczos), or only
resized when there is no usable upscaler. The method is recorded in every sidecar and metric.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from emojich import distributed
from emojich.device import resolve_device
from emojich.fidelity.retrieval import Reference, fidelity_metrics, load_reference, summarise, thumbnails
from emojich.imageset import to_uint8
from emojich.models.dalle import Dalle
from emojich.models.rrdbnet import RRDBNet
from emojich.models.standin import ORIGIN_KEY, combine, safetensors_origin
from emojich.models.vqgan import VQGan
from emojich.progress import progress_bar
from emojich.sampling import generate
from emojich.storage import (
    atomic_path,
    sha256_bytes,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from emojich.tokenizer import UNK_ID, TextTokenizer, is_latin_only
from emojich.upscale import needs_super_resolution, upscale_to

log = logging.getLogger("emojich.generation")

TARGET_SIZE = 512  # Telegram stickers and the report's DWT decoder are 512 x 512

DWT_DECODER = "dwt-decoder"
SELF_TRAINED = "rrdbnet-selftrained"
LANCZOS_FALLBACK = "lanczos-fallback"


# ----- sampling cells -----


@dataclasses.dataclass(frozen=True)
class SamplingCell:
    """One point of the sampling grid; invalid values fail here, before any model is loaded."""

    top_k: int
    top_p: float
    temperature: float
    seed: int
    # Classifier-free guidance scale (1 = off, the report's sampler). A stage parameter rather
    # than an axis of the grid, so it is not part of the cell's name.
    guidance: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not self.temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not self.guidance >= 1.0:
            raise ValueError(f"guidance must be >= 1 (1 = off), got {self.guidance!r}")

    @property
    def name(self) -> str:
        """Folder name of the cell; matches the `k${item.top_k}-p...` out path of dvc.yaml."""
        return f"k{self.top_k}-p{self.top_p}-t{self.temperature}-s{self.seed}"

    def clamped(self, image_vocab_size: int) -> tuple[SamplingCell, str | None]:
        """top_k above the image vocabulary means "no top-k filter": clamp it and say so.

        This lets the published defaults (top_k 2048) run on the demo model (512 codes).
        """
        if self.top_k <= image_vocab_size:
            return self, None
        note = f"top_k {self.top_k} > image vocabulary {image_vocab_size}: clamped to {image_vocab_size}"
        return dataclasses.replace(self, top_k=image_vocab_size), note


# ----- prompts -----


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
        raise ValueError("the prompt is empty; give a caption such as «розовая альпака улыбается»")
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


def check_prompt(tokenizer: TextTokenizer, text: str, text_seq_length: int) -> PromptCheck:
    pieces = tokenizer.tokenize(text)
    return PromptCheck(
        text=text,
        ids=tokenizer.frame(pieces, text_seq_length),
        tokens=len(pieces),
        truncated=len(pieces) + 2 > text_seq_length,  # + bos and eos
        unknown_tokens=sum(1 for token in pieces if token == UNK_ID),
        latin_only=is_latin_only(text),
    )


# ----- ranking and diversity -----


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


# ----- models -----


def load_upscaler(path: str | Path | None, device: torch.device) -> tuple[RRDBNet | None, str]:
    """The upscale stage's saved model and its variant, or (None, lanczos-fallback).

    The upscale stage always writes `rrdbnet.safetensors`, with its variant in the metadata;
    an untrained placeholder says `lanczos-fallback` and must not be used.
    """
    if not path:
        return None, LANCZOS_FALLBACK
    with safe_open(str(path), framework="pt") as handle:
        variant = (handle.metadata() or {}).get("variant", SELF_TRAINED)
    if variant == LANCZOS_FALLBACK:
        return None, LANCZOS_FALLBACK
    return RRDBNet.load(path).to(device).eval(), variant


@dataclasses.dataclass
class Models:
    dalle: Dalle
    tokenizer: TextTokenizer
    vqgan: VQGan
    upscaler: RRDBNet | None
    upscaler_variant: str
    provenance: dict[str, str]  # sha256 of every file the images depend on

    @property
    def device(self) -> torch.device:
        return next(self.dalle.parameters()).device

    @property
    def output_method(self) -> str:
        """How decoded images reach 512 px: recorded so a demo result is never taken for a paper one."""
        if self.vqgan.config.dwt:
            return DWT_DECODER
        size = self.vqgan.config.output_resolution  # load_models checked the grids agree
        if self.upscaler is None or not needs_super_resolution(size, size, TARGET_SIZE):
            return LANCZOS_FALLBACK
        return self.upscaler_variant


def load_models(
    checkpoint: str | Path,
    bpe: str | Path,
    vqgan: str | Path,
    upscaler: str | Path | None,
    device: torch.device,
) -> Models:
    dalle = Dalle.load(checkpoint).to(device).eval()
    tokenizer = TextTokenizer.load(bpe)
    image_model = VQGan.load(vqgan).to(device).eval()
    cfg, vq = dalle.config, image_model.config
    if (cfg.image_tokens_per_dim, cfg.image_vocab_size) != (vq.grid_size, vq.codebook_size):
        raise ValueError(
            f"{checkpoint} samples a {cfg.image_tokens_per_dim}² grid of {cfg.image_vocab_size} codes, "
            f"{vqgan} decodes {vq.grid_size}² of {vq.codebook_size}"
        )
    if tokenizer.vocab_size > cfg.vocab_size - cfg.text_seq_length:
        raise ValueError(f"{bpe} has {tokenizer.vocab_size} tokens, more than {checkpoint} was trained with")
    sr_model, variant = (None, DWT_DECODER) if vq.dwt else load_upscaler(upscaler, device)
    provenance = {
        "checkpoint_sha256": sha256_file(checkpoint),
        "tokenizer_sha256": sha256_file(bpe),
        "vqgan_sha256": sha256_file(vqgan),
    }
    origins = [safetensors_origin(checkpoint), safetensors_origin(vqgan)]
    if sr_model is not None and upscaler:
        provenance["upscaler_sha256"] = sha256_file(upscaler)
        origins.append(safetensors_origin(upscaler))
    # Every image says whether stand-in weights drew it, so no result passes for the paper's.
    provenance[ORIGIN_KEY] = combine(origins)
    return Models(dalle, tokenizer, image_model, sr_model, variant, provenance)


# ----- sampling and rendering -----


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
) -> CellRun:
    """Sample `attempts` images per prompt and rank them; warnings are logged and returned."""
    if not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be an integer >= 1, got {attempts!r}")
    cfg = models.dalle.config
    effective, clamp_note = cell.clamped(cfg.image_vocab_size)
    notes = [clamp_note] if clamp_note else []
    checks = [check_prompt(models.tokenizer, require_prompt(text), cfg.text_seq_length) for text in prompts]
    for check in checks:
        notes.extend(check.warnings())
    for note in notes:
        log.warning("%s", note)
    started = time.perf_counter()
    units = work_units(len(checks), attempts, batch_size)
    mine = units[distributed.rank() :: distributed.world_size()]
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
        )
        shares.append((prompt_index, first, sample.codes, sample.scores))
    gathered = distributed.gather_to_main(shares)
    if gathered is None:  # not rank 0: its share is delivered
        return CellRun(cell, effective, notes, [], time.perf_counter() - started)
    grid = models.dalle.config.image_seq_length
    codes = torch.empty(len(checks), attempts, grid, dtype=torch.long)
    scores = torch.empty(len(checks), attempts)
    for prompt_index, first, unit_codes, unit_scores in (share for rank in gathered for share in rank):
        codes[prompt_index, first : first + len(unit_codes)] = unit_codes
        scores[prompt_index, first : first + len(unit_scores)] = unit_scores
    results = [
        PromptResult(check, codes[i], scores[i], rank_by_score(scores[i])) for i, check in enumerate(checks)
    ]
    return CellRun(cell, effective, notes, results, time.perf_counter() - started)


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


@torch.inference_mode()
def decode(models: Models, codes: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Codes [N, L] -> uint8 [N, 3, H, W] at the VQGAN's own output size."""
    if not len(codes):
        size = models.vqgan.config.output_resolution
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.cat(
        [to_uint8(models.vqgan.decode(chunk.to(models.device))) for chunk in codes.split(batch_size)]
    )


@torch.inference_mode()
def render(models: Models, codes: torch.Tensor, batch_size: int = 16) -> list[np.ndarray]:
    """Codes [N, L] -> N uint8 (512, 512, 3) arrays, by `models.output_method`."""
    pixels = list(decode(models, codes, batch_size).permute(0, 2, 3, 1).numpy())
    # upscale_to super-resolves only images smaller than the target, then resizes exactly.
    sr_model = models.upscaler if models.output_method not in (DWT_DECODER, LANCZOS_FALLBACK) else None
    return upscale_to(pixels, sr_model, TARGET_SIZE, batch_size)


# ----- contact sheets -----


@cache
def sheet_font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans from matplotlib's package data: has Cyrillic and is the same on every machine."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size)


def _fit(text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[np.ndarray]]],
    title: str = "",
    thumb: int = 128,
    columns: int | None = None,
    pad: int = 4,
    font_size: int = 16,
) -> Image.Image:
    """One row of thumbnails per prompt, best first, with the prompt written under its row."""
    columns = columns or max((len(images) for _, images in rows), default=1)
    font = sheet_font(font_size)
    line = font_size + 2 * pad
    width = columns * (thumb + pad) + pad
    top = line if title else 0
    height = top + len(rows) * (thumb + pad + line) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad), _fit(title, font, width - 2 * pad), fill="black", font=font)
    for row, (prompt, images) in enumerate(rows):
        y = top + pad + row * (thumb + pad + line)
        for column, pixels in enumerate(images[:columns]):
            tile = Image.fromarray(pixels).resize((thumb, thumb), Image.Resampling.BOX)
            sheet.paste(tile, (pad + column * (thumb + pad), y))
        draw.text((pad, y + thumb + pad), _fit(prompt, font, width - 2 * pad), fill="black", font=font)
    return sheet


# ----- writing -----


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG without metadata: equal pixels give equal bytes, so hashes are stable."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def image_stem(prompt_index: int, rank: int, attempt: int) -> str:
    return f"p{prompt_index:03d}-r{rank:04d}-i{attempt:04d}"


def image_record(
    run: CellRun, models: Models, prompt_index: int, rank: int, png_sha256: str, *, keep_codes: bool = True
) -> dict[str, Any]:
    """The sidecar: everything needed to trace (and regenerate) one image."""
    result = run.prompts[prompt_index]
    attempt = int(result.order[rank])
    record: dict[str, Any] = {
        "prompt": result.check.text,
        "prompt_index": prompt_index,
        "seed": run.cell.seed,
        "image_index": attempt,
        "rank": rank,
        "top_k": run.cell.top_k,
        "top_k_effective": run.effective.top_k,
        "top_p": run.cell.top_p,
        "temperature": run.cell.temperature,
        "guidance": run.cell.guidance,
        "score": round(float(result.scores[attempt]), 6),
        "truncated": result.check.truncated,
        "unknown_tokens": result.check.unknown_tokens,
        "latin_only": result.check.latin_only,
        "size": TARGET_SIZE,
        "upscaler": models.output_method,
        "png_sha256": png_sha256,
        **models.provenance,
    }
    if keep_codes:
        record["codes"] = result.codes[attempt].tolist()
    return record


def write_ranked_images(folder: Path, run: CellRun, models: Models, per_prompt: int, batch_size: int) -> list:
    """The best `per_prompt` images of each prompt as PNG + JSON sidecar; returns pixels per prompt."""
    folder.mkdir(parents=True, exist_ok=True)
    kept = []
    for prompt_index, result in enumerate(run.prompts):
        ranks = range(min(per_prompt, len(result.order)))
        pixels = render(models, result.codes[result.order[: len(ranks)]], batch_size)
        for rank, image in zip(ranks, pixels, strict=True):
            data = png_bytes(image)
            stem = image_stem(prompt_index, rank, int(result.order[rank]))
            write_bytes_atomic(folder / f"{stem}.png", data)
            write_json_atomic(
                folder / f"{stem}.json", image_record(run, models, prompt_index, rank, sha256_bytes(data))
            )
        kept.append(pixels)
    return kept


CODES_FILE = "codes.safetensors"


def write_attempts(folder: Path, run: CellRun) -> None:
    """Every attempt's score and rank (one JSON line each), its codes, and per-prompt statistics.

    Codes go to `codes.safetensors` as one int16 tensor `codes` [prompts, attempts, grid²]
    (row `[p, i]` is attempt i of prompt p): 2 bytes a code instead of ~5 as JSON text, so the
    report's 512 attempts of 1,024 codes take 1 MB per prompt, and the JSONL stays a few dozen
    bytes a line. Enough to decode any attempt again later without keeping its PNG.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lines, stats = [], []
    for prompt_index, result in enumerate(run.prompts):
        rank_of = torch.empty_like(result.order)
        rank_of[result.order] = torch.arange(len(result.order))
        for attempt in range(len(result.scores)):
            row = {
                "prompt_index": prompt_index,
                "image_index": attempt,
                "rank": int(rank_of[attempt]),
                "score": round(float(result.scores[attempt]), 6),
            }
            lines.append(json.dumps(row, sort_keys=True))
        stats.append(
            {
                "prompt": result.check.text,
                "tokens": result.check.tokens,
                "truncated": result.check.truncated,
                "unknown_tokens": result.check.unknown_tokens,
                "latin_only": result.check.latin_only,
                "mean_score": round(float(result.scores.mean()), 6),
                "best_score": round(float(result.scores.min()), 6),
                "diversity": round(result.diversity, 6),
            }
        )
    write_text_atomic(folder / "attempts.jsonl", "\n".join(lines) + "\n")
    write_codes(folder / CODES_FILE, torch.stack([r.codes for r in run.prompts]))
    write_json_atomic(folder / "prompts.json", stats)


def write_codes(dest: Path, codes: torch.Tensor) -> None:
    if len(codes) and int(codes.max()) > torch.iinfo(torch.int16).max:
        raise ValueError(f"image codes up to {int(codes.max())} do not fit int16")
    with atomic_path(dest) as tmp:
        save_file({"codes": codes.to(torch.int16).contiguous()}, str(tmp))


def read_codes(path: str | Path) -> torch.Tensor:
    """All attempts' codes of a cell, [prompts, attempts, grid²] long."""
    return load_file(str(path))["codes"].long()


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


def write_sheet(dest: Path, title: str, rows: Sequence[tuple[str, Sequence[np.ndarray]]], thumb: int) -> None:
    write_bytes_atomic(dest, png_bytes(np.asarray(contact_sheet(rows, title, thumb))))


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
    return Fidelity([reference.prompt_kind(p) for p in prompts], ranks, metrics)


def sheet_rows(
    run: CellRun, kept: Sequence[Sequence[np.ndarray]], fidelity: Fidelity | None, keep: int
) -> list:
    """(label, images) per prompt; the label says what kind of prompt it is and how each kept
    image ranked its prompt's caption, so a reader tells learnt emoji from zero-shot probes."""
    rows = []
    for index, (result, images) in enumerate(zip(run.prompts, kept, strict=True)):
        label = result.check.text
        if fidelity is not None:
            label += f" · {fidelity.kinds[index]}"
            ranks = fidelity.ranks[index]
            if ranks:
                label += " · ranks " + " ".join(str(ranks[int(i)]) for i in result.order[:keep])
        rows.append((label, images))
    return rows


def write_cell(
    out: Path,
    models: Models,
    prompt_list: PromptList,
    cell: SamplingCell,
    attempts: int,
    keep_best: int,
    save_all: bool = False,
    batch_size: int = 16,
    thumb: int = 128,
    progress: bool = True,
    reference: Reference | None = None,
    record: str = "metrics.json",
    timing_file: str | None = "timing.json",
) -> dict[str, Any]:
    """Sample, rank and write one cell into `out` (layout in stages/generate.py); returns its metrics,
    its `notes` and its `timing`.

    With a `reference` (the real catalogue), the metrics gain caption retrieval (`fidelity`). The
    metrics go to `out/<record>`; the timing, which differs run to run, to `out/<timing_file>`
    unless that is None (the pipeline's cells, whose folder other stages read, only log it)."""
    if not isinstance(keep_best, int) or keep_best < 1:
        raise ValueError(f"keep_best must be an integer >= 1, got {keep_best!r}")
    keep = min(keep_best, attempts)
    log.info(
        "cell %s: %d prompt(s) x %d attempts, 512 px by %s",
        cell.name,
        len(prompt_list.prompts),
        attempts,
        models.output_method,
    )
    run = sample_cell(models, prompt_list.prompts, cell, attempts, batch_size, progress)
    if not distributed.is_main():  # its share of the sampling went to rank 0, which writes
        return {}
    # A run owns its folder: leftovers of an earlier run with other settings must not linger.
    for stale in ("kept", "all"):
        shutil.rmtree(out / stale, ignore_errors=True)
    kept = write_ranked_images(out / "kept", run, models, keep, batch_size)
    if save_all:
        write_ranked_images(out / "all", run, models, attempts, batch_size)
    write_attempts(out / "all", run)
    fidelity = measure_fidelity(reference, run, models, keep, batch_size) if reference else None
    title = f"{run.cell.name} · {models.output_method}"
    write_sheet(out / "sheet.png", title, sheet_rows(run, kept, fidelity, keep), thumb)
    metrics = cell_metrics(run, models, keep, prompt_list.skipped_empty)
    if fidelity is not None:
        metrics["fidelity"] = fidelity.metrics
    write_json_atomic(out / record, metrics)
    speed = timing(run)
    if timing_file is not None:
        write_json_atomic(out / timing_file, speed)
    return {**metrics, "notes": run.notes, "timing": speed}


def generate_command(args: Any) -> int:
    """`emojich generate`: the stage's work for prompts given on the command line."""
    try:
        prompts = [require_prompt(text) for text in args.prompts]
        skipped = 0
        if args.prompts_file:
            listed = read_prompts(args.prompts_file)
            prompts, skipped = prompts + listed.prompts, listed.skipped_empty
        if not prompts:
            raise ValueError("give a prompt, or --prompts-file")
        cell = SamplingCell(args.top_k, args.top_p, args.temperature, args.seed, args.guidance)
        if args.images < 1:
            raise ValueError(f"-n must be >= 1, got {args.images}")
        nproc = distributed.check_nproc(getattr(args, "nproc_per_node", 1), "--nproc-per-node")
        if nproc > 1 and not distributed.launched():
            return distributed.relaunch("emojich.cli", args.argv, nproc)
        tokens = Path(args.tokens)
        with distributed.process_group(resolve_device(args.device)) as device:
            models = load_models(
                args.checkpoint,
                tokens / "bpe.json",
                tokens / "vqgan.safetensors",
                args.upscaler or None,
                device,
            )
            metrics = write_cell(
                Path(args.out),
                models,
                PromptList(prompts, skipped),
                cell,
                attempts=args.images,
                keep_best=args.keep_best or args.images,
                batch_size=args.batch_size,
                reference=load_reference(tokens) if distributed.is_main() else None,
            )
    except (ValueError, FileNotFoundError) as error:
        print(f"emojich generate: error: {error}", file=sys.stderr)
        return 2
    if not metrics:  # a rank other than 0: rank 0 reports
        return 0
    for note in metrics["notes"]:
        print(f"note: {note}")
    print(
        f"{metrics['prompts']} prompt(s) x {metrics['attempts']} images, 512 px by {metrics['upscaler']}, "
        f"mean score {metrics['mean_score']:.4f}, diversity {metrics['diversity']:.3f} -> {args.out}"
    )
    return 0
