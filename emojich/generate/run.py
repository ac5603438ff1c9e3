"""One cell end to end (sample, rank, write images, attempts, sheet and metrics), and `emojich generate`."""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emojich.fidelity.retrieval import Reference, load_reference
from emojich.foundation import distributed
from emojich.foundation.device import resolve_device
from emojich.foundation.storage import write_json_atomic
from emojich.generate.cell import cell_metrics, sample_cell, timing
from emojich.generate.evaluation import measure_fidelity, score_sets
from emojich.generate.grid import SamplingCell
from emojich.generate.loading import Models, load_models
from emojich.generate.prompts import PromptList, read_prompts, require_prompt
from emojich.generate.records import write_attempts, write_ranked_images
from emojich.generate.sheets import sheet_rows, write_sheet
from emojich.text.normalise import normalise_caption
from emojich.text.prompt_sets import PromptSet

log = logging.getLogger("emojich.generate")


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
    prompt_sets: Sequence[PromptSet] = (),
    set_attempts: int = 4,
) -> dict[str, Any]:
    """Sample, rank and write one cell into `out` (layout in stages/generate.py); returns its metrics,
    its `notes` and its `timing`.

    With a `reference` (the real catalogue), the metrics gain caption retrieval (`fidelity`). The
    metrics go to `out/<record>`; the timing, which differs run to run, to `out/<timing_file>`
    unless that is None (the pipeline's cells, whose folder other stages read, only log it).

    `prompt_sets` (evaluation sets, `emojich.text.prompt_sets`) are sampled too, `set_attempts`
    images per prompt, for their generalisation numbers only (`emojich.fidelity.sets`)."""
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
    set_runs = [
        sample_cell(models, [p.text for p in prompt_set.prompts], cell, set_attempts, batch_size, progress)
        for prompt_set in prompt_sets
    ]
    if not distributed.is_main():  # its share of the sampling went to rank 0, which writes
        return {}
    readings = {text: models.read(text) for text in prompt_list.prompts}
    for text, reading in readings.items():
        if reading is not None and (reference is None or reference.prompt_kind(text) == "zero-shot"):
            log.info("«%s» read as: %s", text, reading.text())
    # A run owns its folder: leftovers of an earlier run with other settings must not linger.
    for stale in ("kept", "all"):
        shutil.rmtree(out / stale, ignore_errors=True)
    kept = write_ranked_images(out / "kept", run, models, keep, batch_size, readings)
    if save_all:
        write_ranked_images(out / "all", run, models, attempts, batch_size, readings)
    write_attempts(out / "all", run)
    fidelity = measure_fidelity(reference, run, models, keep, batch_size) if reference else None
    title = f"{run.cell.name} · {models.output_method}"
    groups = {
        normalise_caption(p.text): prompt_set.name for prompt_set in prompt_sets for p in prompt_set.prompts
    }
    write_sheet(out / "sheet.png", title, sheet_rows(run, kept, fidelity, keep, readings, groups), thumb)
    metrics = cell_metrics(run, models, keep, prompt_list.skipped_empty)
    if fidelity is not None:
        metrics["fidelity"] = fidelity.metrics
        metrics["fidelity"].update(score_sets(reference, prompt_sets, set_runs, models, batch_size))
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
                getattr(args, "weights_dtype", "checkpoint"),
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
    # The notes (truncated or Latin-only prompts, a clamped top_k) were logged as warnings when
    # they arose; printing them again here said each one twice.
    print(
        f"{metrics['prompts']} prompt(s) x {metrics['attempts']} images, 512 px by {metrics['upscaler']}, "
        f"mean score {metrics['mean_score']:.4f}, diversity {metrics['diversity']:.3f} -> {args.out}"
    )
    return 0
