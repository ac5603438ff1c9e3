"""Stage `prepare`: scraped images -> RGB on white, RGBA and binary masks, split by caption.

Reads `data/raw/captions.csv` and the images it lists; writes under `data/prepared/`:
`rgb/<id>.png`, `rgba/<id>.png`, `mask/<id>.png`, `manifest.csv`, `rejects.csv`, `metrics.json`.
A file that cannot be used is skipped with a reason (counted in the metrics), never a crash.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from emojich.data.catalogue import CAPTIONS_FILE, CatalogueRow, read_catalogue
from emojich.data.images import (
    DEFAULT_MAX_PIXELS,
    PreparedRow,
    RejectedImage,
    prepare_image,
    write_prepared_manifest,
)
from emojich.data.split import SPLITS, split_captions, split_of
from emojich.params import from_dict, load_section
from emojich.storage import dumps_csv, sha256_bytes, write_bytes_atomic, write_json_atomic, write_text_atomic

RAW_DIR = Path("data/raw")
OUT_DIR = Path("data/prepared")
IMAGE_DIRS = ("rgb", "rgba", "mask")
MANIFEST_FILE = "manifest.csv"
REJECTS_FILE = "rejects.csv"
METRICS_FILE = "metrics.json"

_CHUNK = 32  # rows per task sent to a worker: amortises pickling without starving the other core


@dataclasses.dataclass(frozen=True)
class PrepareParams:
    alpha_threshold: int = 128
    val_fraction: float = 0.05
    seed: int = 42
    workers: int = 2  # processes; 0 or 1 runs in this process
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclasses.dataclass(frozen=True)
class _Outcome:
    row: CatalogueRow
    hashes: dict[str, str] | None = None  # rgb/rgba/mask -> sha256 of the written PNG
    size: tuple[int, int] = (0, 0)
    reason: str = ""
    detail: str = ""


def _process_row(row: CatalogueRow, raw_dir: Path, out_dir: Path, params: PrepareParams) -> _Outcome:
    """Prepare one catalogue row and write its three PNGs. Runs in a worker process."""
    path = raw_dir / row.image_path
    try:
        data = path.read_bytes()
    except OSError as error:
        return _Outcome(row, reason="missing-file", detail=str(error))
    if row.sha256 and sha256_bytes(data) != row.sha256:
        # The catalogue's hash is the lineage record; an image that changed since is not the one cited.
        return _Outcome(row, reason="hash-mismatch", detail=str(path))
    try:
        prepared = prepare_image(data, params.alpha_threshold, params.max_pixels)
    except RejectedImage as error:
        return _Outcome(row, reason=error.reason, detail=str(error))
    hashes = {}
    for kind, png in zip(IMAGE_DIRS, (prepared.rgb_png, prepared.rgba_png, prepared.mask_png), strict=True):
        write_bytes_atomic(out_dir / kind / f"{row.id}.png", png)
        hashes[kind] = sha256_bytes(png)
    return _Outcome(row, hashes=hashes, size=(prepared.width, prepared.height))


def _process_chunk(
    rows: list[CatalogueRow], raw_dir: Path, out_dir: Path, params: PrepareParams
) -> list[_Outcome]:
    return [_process_row(row, raw_dir, out_dir, params) for row in rows]


def _outcomes(
    rows: list[CatalogueRow], raw_dir: Path, out_dir: Path, params: PrepareParams
) -> Iterator[_Outcome]:
    chunks = [rows[start : start + _CHUNK] for start in range(0, len(rows), _CHUNK)]
    if params.workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield from _process_chunk(chunk, raw_dir, out_dir, params)
        return
    # PNG encoding holds the GIL, so threads do not help; processes do. "spawn" because the
    # caller may already have started OpenMP threads (torch), which a fork would copy broken.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(params.workers, mp_context=context) as pool:
        n = len(chunks)
        for result in pool.map(_process_chunk, chunks, [raw_dir] * n, [out_dir] * n, [params] * n):
            yield from result


def prepare(raw_dir: Path, out_dir: Path, params: PrepareParams, progress: bool = True) -> dict:
    """Run the whole stage; returns the metrics it also writes."""
    rows = sorted(read_catalogue(raw_dir / CAPTIONS_FILE))
    for kind in IMAGE_DIRS:  # every run regenerates all images: no stale ids from an earlier run
        shutil.rmtree(out_dir / kind, ignore_errors=True)
        (out_dir / kind).mkdir(parents=True, exist_ok=True)

    accepted: list[_Outcome] = []
    rejected: list[_Outcome] = []
    stream = _outcomes(rows, raw_dir, out_dir, params)
    for outcome in tqdm(stream, total=len(rows), desc="prepare", unit="img", disable=not progress):
        (accepted if outcome.hashes else rejected).append(outcome)

    # Split over accepted images only: a caption whose every image was rejected does not exist here.
    splits = split_captions((o.row.caption for o in accepted), params.val_fraction, params.seed)
    manifest = [
        PreparedRow(
            id=o.row.id,
            caption=o.row.caption,
            split=split_of(o.row.caption, splits),
            style=o.row.style,
            source=o.row.source,
            licence=o.row.licence,
            raw_sha256=o.row.sha256,
            rgb_sha256=o.hashes["rgb"],
            rgba_sha256=o.hashes["rgba"],
            mask_sha256=o.hashes["mask"],
            width=o.size[0],
            height=o.size[1],
        )
        for o in accepted
        if o.hashes
    ]
    write_prepared_manifest(manifest, out_dir / MANIFEST_FILE)
    write_text_atomic(out_dir / REJECTS_FILE, _rejects_csv(rejected))
    metrics = prepare_metrics(manifest, Counter(o.reason for o in rejected), params)
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    return metrics


def prepare_metrics(manifest: list[PreparedRow], rejects: Counter[str], params: PrepareParams) -> dict:
    per_split = {}
    for split in SPLITS:
        rows = [row for row in manifest if row.split == split]
        per_split[split] = {"images": len(rows), "captions": len({row.caption for row in rows})}
    return {
        "images": len(manifest),
        "splits": per_split,
        "rejected": dict(sorted(rejects.items())),
        "rejected_total": sum(rejects.values()),
        "sizes": {
            f"{w}x{h}": n for (w, h), n in sorted(Counter((r.width, r.height) for r in manifest).items())
        },
        "alpha_threshold": params.alpha_threshold,
        "val_fraction": params.val_fraction,
    }


def _rejects_csv(rejected: list[_Outcome]) -> str:
    # Details can carry absolute paths or library versions; keep the file machine-independent.
    rows = (
        (o.row.id, o.row.image_path, o.reason, o.detail.replace(str(Path.cwd()), "."))
        for o in sorted(rejected, key=lambda o: o.row.id)
    )
    return dumps_csv(("id", "image_path", "reason", "detail"), rows)


def main() -> int:
    params = from_dict(PrepareParams, load_section("prepare"), "prepare")
    metrics = prepare(RAW_DIR, OUT_DIR, params)
    counts = ", ".join(f"{split} {value['images']}" for split, value in metrics["splits"].items())
    print(
        f"prepare: {metrics['images']} images ({counts}), {metrics['rejected_total']} rejected {metrics['rejected']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
