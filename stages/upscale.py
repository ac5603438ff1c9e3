"""Stage `upscale`: prepared RGB images -> exactly target x target, with x4 SR where they are small.

Reads `data/prepared/manifest.csv` and the `<id>.rgb.png` and `<id>.mask.png` members of the
prepared shards (`data/prepared/images/`); writes under `data/upscaled/`:

- `images/upscaled-NNNNN.tar`: shards (see `emojich.foundation.shards`) with members `<id>.rgb.png` (RGB,
  target x target) and `<id>.mask.png` (the prepared mask, nearest-neighbour), in id order;
- `manifest.csv` (one row per image, with the sha256 of each member), `rrdbnet.safetensors` (the
  model used, for later stages) and `provenance.json` (the variant, its training, every count);
- `metrics/upscale.json`: the held-out PSNR and image counts a person compares. Timings vary run
  to run, so they are printed, never written into an output.

Upscaler, in order of preference: published Real-ESRGAN weights (`weights:` path), else a small
RRDBNet trained here on the train split's large renders, else (no image large enough to train on)
plain Lanczos, named `lanczos-fallback` in the metrics. No resume: DVC removes the outputs before
a run anyway, and the whole stage takes about two minutes in the demo profile.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emojich.data.images import PreparedRow, decode_png_array, encode_png, read_prepared_manifest
from emojich.data.split import TRAIN, VALIDATION
from emojich.foundation.device import check_precision
from emojich.foundation.layout import IMAGES_DIR, MASK_KIND, RGB_KIND, UPSCALED_PREFIX
from emojich.foundation.params import from_dict, load_section
from emojich.foundation.progress import progress_bar
from emojich.foundation.records import METRICS_DIR, PROVENANCE_FILE, rounded, write_records
from emojich.foundation.shards import ShardReader, ShardWriter
from emojich.foundation.storage import sha256_bytes, write_csv_atomic
from emojich.models.origin import ORIGIN_KEY, file_origin
from emojich.models.rrdbnet import RRDBNet, preset
from emojich.upscale.selftrain import TrainConfig, evaluate_sr, train_rrdbnet
from emojich.upscale.superres import needs_super_resolution, pad_to_square, resize_square, upscale_to

PREPARED_DIR = Path("data/prepared")
OUT_DIR = Path("data/upscaled")
MODEL_FILE = "rrdbnet.safetensors"
MANIFEST_COLUMNS = ("id", "caption", "split", "style", "method", "sha256", "mask_sha256", "source_sha256")

PUBLISHED = "realesrgan-x4-published"
SELF_TRAINED = "rrdbnet-selftrained"
FALLBACK = "lanczos-fallback"


@dataclasses.dataclass(frozen=True)
class UpscaleParams:
    target_size: int = 256
    weights: str | None = None  # published RealESRGAN_x4.pth; None trains `preset` here
    preset: str = "demo"
    batch_size: int = 16
    tile: int = 0  # 0 = whole images; else tile side in input px
    tile_overlap: int = 8
    sr_max_side: int = 255  # larger inputs are resized only (the report super-resolves all < 256)
    seed: int = 42
    train_steps: int = 400
    train_batch: int = 8
    train_patch: int = 16  # LR patch side; HR crops are 4x this
    lr: float = 2e-3
    train_images: int = 512  # at most this many large train-split renders are loaded for training
    eval_images: int = 64  # held-out (validation) pairs for the PSNR metric
    threads: int = 2  # torch intra-op threads; 0 leaves torch's default
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16: super-resolution under bf16 autocast (training stays fp32)

    def __post_init__(self) -> None:
        check_precision(self.precision, "upscale.precision")


def _spread(rows: list[PreparedRow], count: int) -> list[PreparedRow]:
    """At most `count` rows spread evenly over the id order: deterministic, and covers every style."""
    if len(rows) <= count:
        return rows
    return [rows[int(i)] for i in np.linspace(0, len(rows) - 1, count)]


def _load_rgb(prepared: ShardReader, rows: list[PreparedRow]) -> list[np.ndarray]:
    return [decode_png_array(prepared.read(row.id, RGB_KIND), "RGB") for row in rows]


def _largest(rows: list[PreparedRow], split: str, min_side: int) -> list[PreparedRow]:
    """The split's images of the largest size present, if that size is at least `min_side`."""
    rows = [row for row in rows if row.split == split and min(row.width, row.height) >= min_side]
    if not rows:
        return []
    largest = max(min(row.width, row.height) for row in rows)
    return [row for row in rows if min(row.width, row.height) == largest]


def choose_upscaler(
    rows: list[PreparedRow],
    prepared: ShardReader,
    params: UpscaleParams,
    device: torch.device,
    progress: bool,
) -> tuple[RRDBNet | None, str, dict]:
    """The model to use, its variant name and training numbers."""
    if params.weights:
        return RRDBNet.load_published(params.weights).to(device), PUBLISHED, {}
    config = preset(params.preset)
    train_rows = _spread(_largest(rows, TRAIN, params.train_patch * config.scale), params.train_images)
    if not train_rows:
        return None, FALLBACK, {}
    train = TrainConfig(params.train_steps, params.train_batch, params.train_patch, params.lr, params.seed)
    model, info = train_rrdbnet(_load_rgb(prepared, train_rows), config, train, progress)
    return model.to(device), SELF_TRAINED, {**info, "images": len(train_rows)}


def upscale_dataset(
    prepared_dir: Path,
    out_dir: Path,
    params: UpscaleParams,
    progress: bool = True,
    metrics: Path | None = None,
) -> dict:
    """Run the whole stage; returns its provenance record plus `timing_s`. Metrics go to `metrics`
    (default `out_dir/metrics.json`), the record to `out_dir/provenance.json`."""
    previous_threads = torch.get_num_threads()
    if params.threads > 0:
        torch.set_num_threads(params.threads)
    try:
        with ShardReader(prepared_dir / IMAGES_DIR) as prepared:
            record = _upscale_dataset(prepared_dir, prepared, out_dir, params, progress)
    finally:
        torch.set_num_threads(previous_threads)
    provenance = {key: value for key, value in record.items() if key != "timing_s"}
    compact = summary(provenance)
    write_records(metrics or out_dir / "metrics.json", compact, out_dir / PROVENANCE_FILE, provenance)
    return record


def summary(record: dict) -> dict:
    """The numbers a person compares between runs (the rest stays in the provenance)."""
    quality = record["psnr_heldout"]
    return {
        "super_resolved": record["images"]["super_resolved"],
        **{f"psnr_{key}": rounded(quality[key], 2) for key in ("model_db", "bicubic_db")},
    }


def _upscale_dataset(
    prepared_dir: Path, prepared: ShardReader, out_dir: Path, params: UpscaleParams, progress: bool
) -> dict:
    started = time.perf_counter()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if params.device == "auto" else params.device)
    rows = sorted(read_prepared_manifest(prepared_dir / "manifest.csv"))
    target = params.target_size

    model, variant, train_info = choose_upscaler(rows, prepared, params, device, progress)
    trained = time.perf_counter()
    held_out = _spread(_largest(rows, VALIDATION, 16), params.eval_images)
    quality = evaluate_sr(model, _load_rgb(prepared, held_out), params.batch_size, params.precision)
    evaluated = time.perf_counter()

    if model is None:  # keep the declared output; its metadata says nothing was learnt
        model = RRDBNet(preset(params.preset))
    origin = file_origin(params.weights)
    model.save(out_dir / MODEL_FILE, {"variant": variant, "seed": str(params.seed), ORIGIN_KEY: origin})

    # The shards take ids in increasing order, so the work goes in chunks of consecutive ids.
    # Inside a chunk `upscale_to` batches equal-sized images together; ids of one style share a
    # size, so chunks several batches long keep the network's batches full.
    records: list[tuple] = []
    counts = {"super_resolved": 0, "resized_only": 0}
    chunk = max(params.batch_size * 8, 64)
    sr_model = None if variant == FALLBACK else model
    with (
        progress_bar(total=len(rows), desc="upscale", unit="img", disable=not progress) as bar,
        ShardWriter(out_dir / IMAGES_DIR, UPSCALED_PREFIX) as shards,
    ):
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            records += _upscale_chunk(part, prepared, shards, sr_model, params, counts)
            bar.update(len(part))

    _write_manifest(out_dir / "manifest.csv", records)
    finished = time.perf_counter()
    metrics = {
        "upscaler": variant,
        ORIGIN_KEY: origin,
        "target_size": target,
        "images": {"total": len(rows), **counts},
        "psnr_heldout": quality,
        "precision": params.precision,
        "train": train_info,
        "timing_s": {
            "train": round(trained - started, 2),
            "evaluate": round(evaluated - trained, 2),
            "upscale": round(finished - evaluated, 2),
            "total": round(finished - started, 2),
        },
    }
    return metrics


def _upscale_chunk(
    rows: list[PreparedRow],
    prepared: ShardReader,
    shards: ShardWriter,
    model: RRDBNet | None,
    params: UpscaleParams,
    counts: dict[str, int],
) -> list[tuple]:
    """Upscale `rows` (in id order), add them to `shards` and return their manifest records."""
    target = params.target_size
    results: dict[str, tuple[bytes, bytes, str]] = {}  # id -> (image PNG, mask PNG, method)
    work: list[tuple[PreparedRow, bytes]] = []
    for row in rows:
        mask_png = prepared.read(row.id, MASK_KIND)
        if row.width == row.height == target:
            # Already the target: the prepared bytes are exactly what re-encoding would give.
            results[row.id] = (prepared.read(row.id, RGB_KIND), mask_png, "copy")
            counts["resized_only"] += 1
        else:
            work.append((row, mask_png))
    if work:
        images = _load_rgb(prepared, [row for row, _ in work])
        outputs = upscale_to(
            images,
            model,
            target,
            params.batch_size,
            params.tile,
            params.tile_overlap,
            sr_max_side=params.sr_max_side,
            precision=params.precision,
        )
        for (row, mask_png), pixels in zip(work, outputs, strict=True):
            sr = model is not None and needs_super_resolution(
                row.height, row.width, target, params.sr_max_side
            )
            counts["super_resolved" if sr else "resized_only"] += 1
            mask = pad_to_square(decode_png_array(mask_png, "L"), 0)
            mask = resize_square(mask, target, Image.Resampling.NEAREST)
            results[row.id] = (encode_png(pixels), encode_png(mask), "sr-x4+lanczos" if sr else "lanczos")

    records = []
    for row in rows:
        image_png, mask_png, method = results[row.id]
        shards.add(row.id, {RGB_KIND: image_png, MASK_KIND: mask_png})
        records.append(
            (
                row.id,
                row.caption,
                row.split,
                row.style,
                method,
                sha256_bytes(image_png),
                sha256_bytes(mask_png),
                row.rgb_sha256,
            )
        )
    return records


def _write_manifest(path: Path, records: list[tuple]) -> None:
    write_csv_atomic(path, MANIFEST_COLUMNS, records)


def main() -> int:
    params = from_dict(UpscaleParams, load_section("upscale"), "upscale")
    metrics = upscale_dataset(PREPARED_DIR, OUT_DIR, params, metrics=METRICS_DIR / "upscale.json")
    quality = metrics["psnr_heldout"]
    print(
        f"upscale: {metrics['upscaler']}, {metrics['images']}, held-out PSNR model {quality['model_db']} "
        f"vs bicubic {quality['bicubic_db']} dB, {metrics['timing_s']['total']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
