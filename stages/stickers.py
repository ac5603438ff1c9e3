"""Stage `stickers`: turn every labelled generated image into a Telegram sticker.

Reads data/segment/labels.csv and the alpha masks beside it, and writes:

- data/stickers/images/<name>.<format> with a sidecar <name>.json (the generation sidecar plus
  mask method, confidence and the sticker's sha256)
- data/stickers/pack/manifest.json and preview.png (all stickers on a checkerboard)
- data/stickers/provenance.json (counts per method and encoding, every rule a file broke), and
  metrics/stickers.json (the counts a person compares)

Stickers live in images/ rather than directly in data/stickers/ because DVC outputs may not
overlap, and provenance.json sits beside them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from emojich.foundation.logs import setup_logging
from emojich.foundation.params import from_dict, load_section
from emojich.foundation.records import METRICS_DIR, PROVENANCE_FILE, write_records
from emojich.foundation.storage import sha256_file, write_json_atomic
from emojich.models.origin import ORIGIN_KEY, SELFTRAINED, combine
from emojich.segment.stickers import (
    MAX_STICKER_BYTES,
    STICKER_SIDE,
    PackEntry,
    check_telegram_sticker,
    sticker_sidecar,
    write_pack,
    write_sticker,
)

SEGMENT_DIR = Path("data/segment")
OUT_DIR = Path("data/stickers")

log = logging.getLogger("stages.stickers")


@dataclasses.dataclass
class StickersParams:
    format: str = "webp"  # webp | png
    side: int = STICKER_SIDE
    max_bytes: int = MAX_STICKER_BYTES
    preview_cell: int = 128
    preview_columns: int = 8


def sticker_name(mask: str) -> str:
    """A flat, unique file stem from the mask's relative path (cell/kept/x.png -> cell__kept__x)."""
    return "__".join(Path(mask).with_suffix("").parts)


def _generation_sidecar(image: Path) -> dict | None:
    path = image.with_suffix(".json")
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def make_stickers(
    params: StickersParams,
    segment_dir: Path = SEGMENT_DIR,
    out_dir: Path = OUT_DIR,
    metrics: Path | None = None,
) -> dict:
    """Write every sticker, its sidecar, the pack and the records; returns the provenance record.

    Metrics go to `metrics` (default `out_dir/metrics.json`), the record to `out_dir/provenance.json`."""
    with open(segment_dir / "labels.csv", encoding="utf-8", newline="") as handle:
        labels = list(csv.DictReader(handle))
    images_dir, pack_dir = out_dir / "images", out_dir / "pack"
    for folder in (images_dir, pack_dir):  # this stage's own outputs: nothing stale may survive
        shutil.rmtree(folder, ignore_errors=True)

    entries, problems, entry_origins = [], {}, []
    methods: Counter[str] = Counter()
    encodings: Counter[str] = Counter()
    for row in labels:
        image_path, mask_path = Path(row["image"]), segment_dir / "masks" / row["mask"]
        with Image.open(image_path) as image:
            rgb = np.asarray(image.convert("RGB"))
        with Image.open(mask_path) as mask:
            alpha = np.asarray(mask.convert("L"))
        name = f"{sticker_name(row['mask'])}.{params.format}"
        encoded = write_sticker(images_dir / name, rgb, alpha, params.max_bytes, params.side)
        confidence = float(row["confidence"]) if row["confidence"] else None
        generation = _generation_sidecar(image_path)
        entry_origins.append((generation or {}).get(ORIGIN_KEY, SELFTRAINED))
        sidecar = sticker_sidecar(
            generation,
            row["method"],
            confidence,
            encoded,
            source_image=image_path.as_posix(),
            source_sha256=sha256_file(image_path),
            mask_sha256=sha256_file(mask_path),
        )
        write_json_atomic(images_dir / f"{Path(name).stem}.json", sidecar)
        found = check_telegram_sticker(images_dir / name)
        if found:
            problems[name] = found
        methods[row["method"]] += 1
        encodings[encoded.encoding] += 1
        entries.append(
            PackEntry(
                file=name,
                prompt=(generation or {}).get("prompt", ""),
                score=(generation or {}).get("score"),
                method=row["method"],
                confidence=sidecar["confidence"],
                sha256=sidecar["sticker_sha256"],
            )
        )
    write_pack(entries, images_dir, pack_dir, params.preview_cell, params.preview_columns)
    record = {
        "count": len(entries),
        # Stand-in weights anywhere upstream show in every generation sidecar the stickers copy.
        ORIGIN_KEY: combine(entry_origins),
        "valid": len(entries) - len(problems),
        "all_valid": not problems,
        "format": params.format,
        "methods": dict(sorted(methods.items())),
        "encodings": dict(sorted(encodings.items())),
        "problems": problems,
    }
    write_records(metrics or out_dir / "metrics.json", summary(record), out_dir / PROVENANCE_FILE, record)
    return record


def summary(record: dict) -> dict:
    """The counts a person compares between runs (the rest stays in provenance.json). Stickers per
    cutting method are segment's numbers again; as metrics they would share segment's names and
    widen every `dvc exp show` table with both files' paths."""
    return {"count": record["count"], "valid": record["valid"]}


def main() -> None:
    setup_logging()
    params = from_dict(StickersParams, load_section("stickers"), "stickers")
    metrics = make_stickers(params, metrics=METRICS_DIR / "stickers.json")
    log.info("%d stickers, %d valid, methods %s", metrics["count"], metrics["valid"], metrics["methods"])
    if not metrics["all_valid"]:
        raise SystemExit(f"stickers failing Telegram's rules: {metrics['problems']}")


if __name__ == "__main__":
    main()
