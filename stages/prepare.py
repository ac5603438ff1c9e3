"""Stage `prepare`: scraped images -> RGB on white, RGBA and binary masks, split by caption.

Reads `data/raw/captions.csv` and the raw shards (`data/raw/images/`, member `<id>.png`, looked
up by the row's id); writes under `data/prepared/`:

- `images/prepared-NNNNN.tar`: shards (see `emojich.foundation.shards`) with members `<id>.rgb.png`,
  `<id>.rgba.png` and `<id>.mask.png` for every accepted image, in id order;
- `manifest.csv` (one row per accepted image, with the sha256 of each member), `rejects.csv`,
  `provenance.json` (counts per split, reason and size, the thresholds in force);
- `metrics/prepare.json`: the few counts a person compares (see `emojich.foundation.records`).

An image that cannot be used is skipped with a reason (counted in the metrics), never a crash.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import sys
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from emojich.data.catalogue import CAPTIONS_FILE, CatalogueRow, read_catalogue
from emojich.data.images import (
    DEFAULT_MAX_PIXELS,
    PreparedRow,
    RejectedImage,
    prepare_image,
    write_prepared_manifest,
)
from emojich.data.split import SPLITS, split_captions, split_of
from emojich.foundation.layout import IMAGES_DIR, MASK_KIND, PREPARED_PREFIX, RAW_KIND, RGB_KIND, RGBA_KIND
from emojich.foundation.params import from_dict, load_section
from emojich.foundation.progress import progress_bar
from emojich.foundation.records import METRICS_DIR, PROVENANCE_FILE, pick, write_records
from emojich.foundation.shards import ShardReader, ShardWriter
from emojich.foundation.storage import dumps_csv, sha256_bytes, write_text_atomic

RAW_DIR = Path("data/raw")
OUT_DIR = Path("data/prepared")
MANIFEST_FILE = "manifest.csv"
REJECTS_FILE = "rejects.csv"
METRICS_FILE = METRICS_DIR / "prepare.json"

_CHUNK = 32  # rows per task sent to a worker: amortises pickling without starving the other core
# Chunks in flight per worker: enough to keep every worker busy while this process writes shards,
# few enough that raw bytes read ahead and PNGs waiting to be written stay a few MB.
_AHEAD = 4


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
    members: dict[str, bytes] | None = None  # shard member kind -> PNG bytes, until written
    hashes: dict[str, str] | None = None  # member kind -> sha256 of its bytes; None when rejected
    size: tuple[int, int] = (0, 0)
    reason: str = ""
    detail: str = ""


def _process_row(row: CatalogueRow, data: bytes | None, params: PrepareParams) -> _Outcome:
    """Prepare one catalogue row's raw bytes (None: not in the raw shards). Runs in a worker process."""
    if data is None:
        return _Outcome(row, reason="missing-file", detail=f"no member {row.id}.{RAW_KIND} in the raw shards")
    digest = sha256_bytes(data)
    if row.sha256 and digest != row.sha256:
        # The catalogue's hash is the lineage record; an image that changed since is not the one cited.
        return _Outcome(row, reason="hash-mismatch", detail=f"sha256 {digest}, catalogue {row.sha256}")
    try:
        prepared = prepare_image(data, params.alpha_threshold, params.max_pixels)
    except RejectedImage as error:
        return _Outcome(row, reason=error.reason, detail=str(error))
    members = {RGB_KIND: prepared.rgb_png, RGBA_KIND: prepared.rgba_png, MASK_KIND: prepared.mask_png}
    hashes = {kind: sha256_bytes(png) for kind, png in members.items()}
    return _Outcome(row, members, hashes, (prepared.width, prepared.height))


def _process_chunk(tasks: list[tuple[CatalogueRow, bytes | None]], params: PrepareParams) -> list[_Outcome]:
    return [_process_row(row, data, params) for row, data in tasks]


def _tasks(rows: list[CatalogueRow], raw: ShardReader) -> Iterator[list[tuple[CatalogueRow, bytes | None]]]:
    """Rows with their raw bytes, in chunks, read lazily (the raw shards are in id order, like `rows`)."""
    pairs = ((row, raw.read(row.id, RAW_KIND) if raw.has(row.id, RAW_KIND) else None) for row in rows)
    while chunk := list(itertools.islice(pairs, _CHUNK)):
        yield chunk


def _outcomes(rows: list[CatalogueRow], raw: ShardReader, params: PrepareParams) -> Iterator[_Outcome]:
    """One outcome per row, in the order of `rows`."""
    if params.workers <= 1 or len(rows) <= _CHUNK:
        for chunk in _tasks(rows, raw):
            yield from _process_chunk(chunk, params)
        return
    # PNG encoding holds the GIL, so threads do not help; processes do. "spawn" because the
    # caller may already have started OpenMP threads (torch), which a fork would copy broken.
    # The raw shards are read here, not in the workers: one sequential reader, and the workers
    # need no file handles of their own.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(params.workers, mp_context=context) as pool:
        pending: deque[Future[list[_Outcome]]] = deque()
        for chunk in _tasks(rows, raw):
            pending.append(pool.submit(_process_chunk, chunk, params))
            if len(pending) >= params.workers * _AHEAD:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def prepare(
    raw_dir: Path, out_dir: Path, params: PrepareParams, progress: bool = True, metrics: Path | None = None
) -> dict:
    """Run the whole stage; returns its provenance record. Metrics go to `metrics` (default
    `out_dir/metrics.json`), the record to `out_dir/provenance.json`."""
    rows = sorted(read_catalogue(raw_dir / CAPTIONS_FILE))
    accepted: list[_Outcome] = []
    rejected: list[_Outcome] = []
    # The writer replaces the whole shard set, so no image of an earlier, larger run survives.
    with (
        ShardReader(raw_dir / IMAGES_DIR) as raw,
        ShardWriter(out_dir / IMAGES_DIR, PREPARED_PREFIX) as shards,
    ):
        stream = _outcomes(rows, raw, params)
        for outcome in progress_bar(
            stream, total=len(rows), desc="prepare", unit="img", disable=not progress
        ):
            if outcome.members is None:
                rejected.append(outcome)
                continue
            shards.add(outcome.row.id, outcome.members)
            accepted.append(dataclasses.replace(outcome, members=None))  # the bytes are in the shard now

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
            rgb_sha256=o.hashes[RGB_KIND],
            rgba_sha256=o.hashes[RGBA_KIND],
            mask_sha256=o.hashes[MASK_KIND],
            width=o.size[0],
            height=o.size[1],
        )
        for o in accepted
        if o.hashes
    ]
    write_prepared_manifest(manifest, out_dir / MANIFEST_FILE)
    write_text_atomic(out_dir / REJECTS_FILE, _rejects_csv(rejected))
    record = prepare_metrics(manifest, Counter(o.reason for o in rejected), params)
    write_records(metrics or out_dir / "metrics.json", summary(record), out_dir / PROVENANCE_FILE, record)
    return record


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


def summary(record: dict) -> dict:
    """The numbers a person compares between runs (the rest stays in the provenance)."""
    splits = record["splits"]
    return {
        **pick(record, ("images", "rejected_total")),
        **{f"{split}_images": value["images"] for split, value in splits.items()},
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
    metrics = prepare(RAW_DIR, OUT_DIR, params, metrics=METRICS_FILE)
    counts = ", ".join(f"{split} {value['images']}" for split, value in metrics["splits"].items())
    print(
        f"prepare: {metrics['images']} images ({counts}), {metrics['rejected_total']} rejected {metrics['rejected']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
