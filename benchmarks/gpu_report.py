"""Merges the parts `benchmarks/gpu.sh` wrote into one JSON report (stdout).

python benchmarks/gpu_report.py OUT_DIR MODE
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

# The report's run: 2,749 images, 40 epochs, batch 2 (0.36 s/step, 5.5 h on one A100).
REPORT_IMAGES, REPORT_EPOCHS = 2749, 40
# Memory-bandwidth ceilings of decode images/s on one H100 in the Malevich shape, batch 1 / 16 / 64:
# what the measured figures are set against.
H100_BOUND = {1: 1.27, 16: 11.7, 64: 19.9}


def _batch(path: Path) -> int:
    return int(re.search(r"-b(\d+)\.json$", path.name).group(1))


def projected_hours(step_s: float, batch: int) -> float:
    steps = math.ceil(REPORT_IMAGES / batch) * REPORT_EPOCHS
    return round(steps * step_s / 3600, 2)


def report(folder: Path, mode: str) -> dict:
    decode = {}
    for path in sorted(folder.glob("decode-b*.json"), key=_batch):
        part = json.loads(path.read_text())
        ours = part["decoders"]["ours"]
        bandwidth = part["memory_bandwidth"]
        row = {
            "ms_per_step": ours["ms_per_step"],
            "images_per_s": ours["images_per_s"],
            "achieved_gbps": bandwidth["achieved_gbps"],
            "peak_gbps": bandwidth["peak_gbps"],
            "fraction_of_peak": bandwidth["fraction_of_peak"],
        }
        if _batch(path) in H100_BOUND:
            row["h100_bound_images_per_s"] = H100_BOUND[_batch(path)]
        decode[f"batch_{_batch(path)}"] = row
    finetune = {}
    for path in sorted(folder.glob("finetune-b*.json"), key=_batch):
        if path.name.endswith(".failed.json"):
            continue
        result = json.loads(path.read_text())["results"]["adam8bit"]
        step_s = result["median_step_s"]
        peak = result.get("peak_memory_bytes", result.get("peak_rss_bytes"))
        finetune[f"batch_{_batch(path)}"] = {
            "s_per_step": step_s,
            "peak_memory_gb": round(peak / 1e9, 2),
            "projected_hours_2749x40": projected_hours(step_s, _batch(path)),
        }
    fitted = [int(key.split("_")[1]) for key in finetune]
    unet = json.loads((folder / "unet.json").read_text())
    return {
        "mode": mode,
        "decode": decode,
        "finetune": finetune,
        "finetune_largest_batch": max(fitted) if fitted else None,
        "finetune_report": {"s_per_step": 0.36, "hours": 5.5, "device": "A100"},
        "unet": unet,
    }


if __name__ == "__main__":
    print(json.dumps(report(Path(sys.argv[1]), sys.argv[2]), indent=2))
