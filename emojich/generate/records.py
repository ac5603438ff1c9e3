"""What a cell writes per image: ranked PNGs with JSON sidecars (enough to trace and regenerate each
image), every attempt's score and rank, and all attempts' codes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from emojich.foundation.storage import (
    atomic_path,
    sha256_bytes,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from emojich.generate.cell import CellRun
from emojich.generate.loading import TARGET_SIZE, Models
from emojich.generate.reading import Reading
from emojich.generate.rendering import png_bytes, render


def image_stem(prompt_index: int, rank: int, attempt: int) -> str:
    return f"p{prompt_index:03d}-r{rank:04d}-i{attempt:04d}"


def image_record(
    run: CellRun,
    models: Models,
    prompt_index: int,
    rank: int,
    png_sha256: str,
    *,
    keep_codes: bool = True,
    reading: Reading | None = None,
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
    if reading is not None:
        record.update(reading.to_record())
    if keep_codes:
        record["codes"] = result.codes[attempt].tolist()
    return record


def write_ranked_images(
    folder: Path,
    run: CellRun,
    models: Models,
    per_prompt: int,
    batch_size: int,
    readings: Mapping[str, Reading | None] | None = None,
) -> list:
    """The best `per_prompt` images of each prompt as PNG + JSON sidecar; returns pixels per prompt.
    `readings`: how the model read each prompt, recorded in its sidecars."""
    folder.mkdir(parents=True, exist_ok=True)
    kept = []
    for prompt_index, result in enumerate(run.prompts):
        ranks = range(min(per_prompt, len(result.order)))
        pixels = render(models, result.codes[result.order[: len(ranks)]], batch_size)
        for rank, image in zip(ranks, pixels, strict=True):
            data = png_bytes(image)
            stem = image_stem(prompt_index, rank, int(result.order[rank]))
            write_bytes_atomic(folder / f"{stem}.png", data)
            reading = (readings or {}).get(result.check.text)
            record = image_record(run, models, prompt_index, rank, sha256_bytes(data), reading=reading)
            write_json_atomic(folder / f"{stem}.json", record)
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
