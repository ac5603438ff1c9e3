"""Stage `segment`: train the background U-Net with pseudo-labelling and label every generated image.

Reads the real emojis with true alpha from data/upscaled (image shards and manifest; train split to
train, val split to score), runs pseudo-label rounds over the generated images matched by
`segment.generated_glob` in the cells of the current `generate.grid` (a folder an older grid left
behind is named in the log and not read), and writes to data/segment/:

- unet.safetensors: the final weights (config in the file's metadata)
- rounds.csv: one row per round (plotted by DVC)
- provenance.json: which variant ran, the cells read, every count and score
- masks/<path under the glob's folder>.png and labels.csv (image, mask, method, confidence)

and metrics/segment.json: the validation scores and method counts a person compares.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import itertools
import json
import logging
import shutil
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from emojich.foundation.layout import IMAGES_DIR, MASK_KIND, RGB_KIND
from emojich.foundation.logs import setup_logging
from emojich.foundation.params import from_dict, load_section
from emojich.foundation.records import METRICS_DIR, PROVENANCE_FILE, pick, write_records
from emojich.foundation.shards import ShardReader
from emojich.foundation.storage import remove_stale_temporaries, write_bytes_atomic, write_csv_atomic
from emojich.models.origin import ORIGIN_KEY, SELFTRAINED, combine, file_origin
from emojich.segment.contour import ContourConfig, contour_alpha
from emojich.segment.metrics import mask_scores
from emojich.segment.pseudolabel import (
    PseudoLabelConfig,
    PseudoLabelResult,
    RoundRecord,
    SegmentationSet,
    resize_images,
    resize_masks,
    run_pseudolabel,
)
from emojich.segment.stream import ShardStream, StreamConfig
from emojich.segment.unet import build_unet, load_unet, preset, save_unet

UPSCALED_DIR = Path("data/upscaled")
OUT_DIR = Path("data/segment")

log = logging.getLogger("stages.segment")


@dataclasses.dataclass
class SegmentParams:
    preset: str = "demo"  # demo | paper | published-b5 | tiny
    init_weights: str | None = None  # start from these weights (the published .bin for published-b5)
    generated_glob: str = "data/generated/*/kept/*.png"
    max_train_images: int = 0  # 0 = the whole train split; else the first N by id (smoke runs)
    pseudolabel: PseudoLabelConfig = dataclasses.field(default_factory=PseudoLabelConfig)
    contour: ContourConfig = dataclasses.field(default_factory=ContourConfig)
    stream: StreamConfig = dataclasses.field(default_factory=StreamConfig)


def _read_rgb(source: Path | bytes) -> np.ndarray:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        return np.asarray(image.convert("RGB"))


def _read_grey(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"))


def _empty_set() -> SegmentationSet:
    return SegmentationSet(np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0, 1, 1), bool))


def load_real_sets(
    upscaled_dir: Path, train_side: int, max_train: int = 0, stream: StreamConfig | None = None
) -> tuple[SegmentationSet | ShardStream, SegmentationSet]:
    """(train, val) from manifest.csv: white-composited RGB and the binary alpha (>= 128) masks.

    With `stream`, train is a `ShardStream` over the shards: read, resized to the network side
    and shuffled as training goes, never held whole (the paper's 246k images would be 190 GB).
    Without, train is loaded at the network side. Validation keeps the stored size, where its
    scores are measured, and is held in memory.
    """
    with open(upscaled_dir / "manifest.csv", encoding="utf-8", newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: row["id"])
    ids = {split: [row["id"] for row in rows if row["split"] == split] for split in ("train", "val")}
    if max_train:
        ids["train"] = ids["train"][:max_train]

    def read(split: str, side: int | None) -> SegmentationSet:
        keys = ids[split]
        if not keys:
            return _empty_set()
        with ShardReader(upscaled_dir / IMAGES_DIR) as shards:
            pairs = (
                (_read_rgb(shards.read(k, RGB_KIND)), _read_grey(shards.read(k, MASK_KIND))) for k in keys
            )
            if side:
                images = np.empty((len(keys), side, side, 3), np.uint8)
                masks = np.empty((len(keys), side, side), bool)
                for index, (image, mask) in enumerate(pairs):
                    images[index], masks[index] = (
                        resize_images([image], side)[0],
                        resize_masks([mask], side)[0],
                    )
                return SegmentationSet(images, masks)
            images, masks = (list(column) for column in zip(*pairs, strict=True))
        if len({image.shape for image in images}) > 1:
            raise ValueError(
                f"{upscaled_dir}: {split} images differ in size; the upscale stage makes them square"
            )
        return SegmentationSet(np.stack(images), np.stack(masks) >= 128)

    if stream is not None:
        return ShardStream(upscaled_dir / IMAGES_DIR, ids["train"], train_side, stream), read("val", None)
    return read("train", train_side), read("val", None)


def glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard: mask names are relative to it."""
    parts = Path(pattern).parts
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts))
    if len(fixed) == len(parts):  # no wildcard: a single file
        fixed = fixed[:-1]
    return Path(*fixed) if fixed else Path(".")


def find_generated(pattern: str) -> list[Path]:
    return sorted(Path(path) for path in glob.glob(pattern, recursive=True) if Path(path).is_file())


def grid_cells(grid: Mapping[str, Sequence[object]]) -> list[str]:
    """Folder names of the cells dvc.yaml's `matrix` expands `generate.grid` into
    (`k${item.top_k}-p${item.top_p}-t${item.temperature}-s${item.seed}`)."""
    from emojich.generate.grid import SamplingCell

    product = itertools.product(grid["top_k"], grid["top_p"], grid["temperature"], grid["seed"])
    return [SamplingCell(k, p, t, s).name for k, p, t, s in product]  # type: ignore[arg-type]


def in_cells(paths: list[Path], root: Path, cells: Collection[str]) -> list[Path]:
    """The paths inside one of `cells` (folders directly under `root`); the others are logged.

    DVC leaves the folders of cells dropped from the grid in place; reading them would make an
    older grid's images training data."""
    kept = [path for path in paths if _relative(path, root).parts[0] in cells]
    leftovers = sorted({_relative(path, root).parts[0] for path in paths} - set(cells))
    if leftovers:
        log.warning("not read, not in generate.grid: %s", ", ".join(str(root / name) for name in leftovers))
    return kept


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def segment(
    params: SegmentParams,
    upscaled_dir: Path = UPSCALED_DIR,
    out_dir: Path = OUT_DIR,
    progress: bool = True,
    cells: Collection[str] | None = None,
    metrics: Path | None = None,
) -> dict:
    """Run the whole stage and write its outputs; returns the provenance record.

    `cells`: the generated folders to read (None: every folder the glob matches). Metrics go to
    `metrics` (default `out_dir/metrics.json`), the record to `out_dir/provenance.json`."""
    config = preset(params.preset)
    if params.init_weights:
        model, config = load_unet(params.init_weights, params.preset)
    else:
        model = build_unet(config, seed=params.pseudolabel.seed)
    train_set, val_set = load_real_sets(upscaled_dir, config.size, params.max_train_images, params.stream)
    root = glob_root(params.generated_glob)
    paths = find_generated(params.generated_glob)
    if cells is not None:
        paths = in_cells(paths, root, cells)
    generated = [_read_rgb(path) for path in paths]
    log.info(
        "U-Net %s (%s): %d real train, %d val, %d generated images",
        params.preset, config.encoder, len(train_set), len(val_set), len(generated),
    )  # fmt: skip

    rounds_rows = [
        ["round", "accepted", "accepted_new", "val_iou", "val_boundary_f", "val_confident", "fallback"]
    ]

    def on_round(record: RoundRecord) -> None:
        log.info("round %d: %s", record.round, record)
        rounds_rows.append(
            [
                record.round,
                record.accepted_total,
                record.accepted_new,
                f"{record.val_iou:.6f}",
                f"{record.val_boundary_f:.6f}",
                f"{record.val_confident:.6f}",
                record.fallback,
            ]
        )

    result = run_pseudolabel(
        model,
        train_set,
        val_set,
        generated,
        params.pseudolabel,
        config.size,
        progress,
        on_round,
    )

    for folder in (out_dir / "masks",):  # this stage's own output: clear what a larger run left
        shutil.rmtree(folder, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    origin = combine([file_origin(params.init_weights), *(_generated_origin(path) for path in paths)])
    save_unet(model, config, out_dir / "unet.safetensors", {ORIGIN_KEY: origin})
    write_csv_atomic(out_dir / "rounds.csv", rounds_rows[0], rounds_rows[1:])

    methods = write_labels(paths, generated, result, root, out_dir, params.contour)
    final = result.history[-1]
    contour_val = contour_scores(val_set, params.contour, params.pseudolabel.boundary_tolerance)
    record = {
        "variant": f"unet-{params.preset}-{'finetuned' if params.init_weights else 'selftrained'}",
        ORIGIN_KEY: origin,
        "encoder": config.encoder,
        "input_size": config.size,
        "rounds": final.round,
        "real_train_images": len(train_set),
        "val_images": len(val_set),
        "val_iou": _finite(final.val_iou),
        "val_boundary_f": _finite(final.val_boundary_f),
        # Real emoji at or above the threshold: how often a well-segmented image can be accepted
        # at this input size, beside how many generated ones were.
        "val_confident": _finite(final.val_confident),
        "contour_val_iou": _finite(contour_val["iou"]),
        "contour_val_boundary_f": _finite(contour_val["boundary_f"]),
        "generated_images": len(paths),
        "methods": {"unet": methods["unet"], "contour": methods["contour"]},
        "threshold": params.pseudolabel.threshold,
        "cells": sorted({_relative(path, root).parts[0] for path in paths}),
    }
    write_records(metrics or out_dir / "metrics.json", summary(record), out_dir / PROVENANCE_FILE, record)
    return record


def summary(record: dict) -> dict:
    """The numbers a person compares between runs (the rest stays in provenance.json)."""
    return {**pick(record, ("val_iou", "val_confident", "contour_val_iou", "rounds")), **record["methods"]}


def _generated_origin(image: Path) -> str:
    """What drew a generated image, from its sidecar (self-trained when it has none)."""
    sidecar = image.with_suffix(".json")
    if not sidecar.is_file():
        return SELFTRAINED
    return json.loads(sidecar.read_text(encoding="utf-8")).get(ORIGIN_KEY, SELFTRAINED)


def write_labels(
    paths: list[Path],
    images: list[np.ndarray],
    result: PseudoLabelResult,
    root: Path,
    out_dir: Path,
    contour: ContourConfig,
) -> Counter[str]:
    """masks/<path under root>.png for every generated image, and labels.csv; returns method counts."""
    rows = [["image", "mask", "method", "confidence"]]
    methods: Counter[str] = Counter()
    for index, (path, image) in enumerate(zip(paths, images, strict=True)):
        if result.accepted[index]:
            alpha, method = result.alphas[index], "unet"
        else:
            alpha, method = contour_alpha(image, contour), "contour"
        methods[method] += 1
        mask = _relative(path, root).with_suffix(".png")
        write_bytes_atomic(out_dir / "masks" / mask, _png(alpha))
        rows.append([path.as_posix(), mask.as_posix(), method, f"{result.confidence[index]:.6f}"])
    write_csv_atomic(out_dir / "labels.csv", rows[0], rows[1:])
    return methods


def contour_scores(val_set: SegmentationSet, contour: ContourConfig, tolerance: int) -> dict[str, float]:
    """The fallback's own validation scores, so the U-Net's can be judged against them."""
    if not len(val_set):
        return {"iou": float("nan"), "boundary_f": float("nan")}
    alphas = np.stack([contour_alpha(image, contour) for image in val_set.images])
    return mask_scores(alphas >= 128, val_set.masks, tolerance)


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:  # a recursive pattern may reach outside the fixed prefix; keep the name
        return Path(path.name)


def _finite(value: float) -> float | None:
    # JSON has no NaN; an empty validation set is reported as null.
    return None if np.isnan(value) else round(float(value), 6)


def main() -> None:
    setup_logging()
    params = from_dict(SegmentParams, load_section("segment"), "segment")
    cells = grid_cells(load_section("generate")["grid"])
    metrics = segment(params, cells=cells, metrics=METRICS_DIR / "segment.json")
    log.info("%s", metrics)


if __name__ == "__main__":
    main()
