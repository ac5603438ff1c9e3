"""Peak memory of one U-Net training epoch: streamed from the shards against loaded in memory.

Builds a synthetic `data/upscaled`-like folder (image shards + manifest.csv) of `--images`
emoji-like discs at a small side, then runs one epoch of `train_unet` over the train split in
a fresh process per mode and size, as the segment stage does:

- `memory`: today's loader before streaming (`load_real_sets` without a stream), the whole
  train split resized into arrays, no DataLoader workers;
- `stream`: `ShardStream` with DataLoader workers and a seeded shuffle buffer.

Each child samples the proportional set size (PSS) of itself and its DataLoader workers every
50 ms (Linux `/proc/<pid>/smaps_rollup`; PSS shares pages between forked processes instead of
counting them in each) and also reports its own `ru_maxrss`. Both modes run at a tenth of the
set and at the whole set, so a flat streaming figure shows memory independent of set size.

CPU default (about five minutes on two cores): 50,000 images of 32 px, the tiny U-Net.
CI runs it with `--images 400` in seconds (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

# Run as a script (`python benchmarks/segment_memory.py`): the repository root holds `stages`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emojich.foundation.layout import IMAGES_DIR, MASK_KIND, RGB_KIND, UPSCALED_PREFIX
from emojich.foundation.shards import write_shards


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def build_synthetic_set(folder: Path, count: int, side: int, seed: int = 0) -> None:
    """`count` discs on white with their masks, as upscale writes them (5% val)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.indices((side, side))

    def items():
        for index in range(count):
            radius = rng.uniform(0.25, 0.45) * side
            disc = (ys - side / 2) ** 2 + (xs - side / 2) ** 2 <= radius**2
            image = np.where(disc[..., None], rng.integers(0, 220, 3), 255).astype(np.uint8)
            yield f"s{index:07d}", {RGB_KIND: _png(image), MASK_KIND: _png(disc.astype(np.uint8) * 255)}

    write_shards(folder / IMAGES_DIR, UPSCALED_PREFIX, items())
    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "caption", "split"])
        for index in range(count):
            writer.writerow([f"s{index:07d}", f"диск {index}", "val" if index % 20 == 0 else "train"])


# -- measuring ----------------------------------------------------------------------------------


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:  # a worker that just exited
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []


class PeakSampler:
    """The largest summed PSS of this process and its children seen while running."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.every_s, self.peak_kb = every_s, 0
        self.at_peak: tuple[int, int] = (0, 0)  # (this process, its children) when the sum peaked
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pid = os.getpid()
        while not self._stop.is_set():
            main, children = _pss_kb(pid), sum(_pss_kb(child) for child in _children(pid))
            if main + children > self.peak_kb:
                self.peak_kb, self.at_peak = main + children, (main, children)
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def child(args: argparse.Namespace) -> dict:
    """One epoch in this process; the JSON line it prints is read by the parent."""
    import torch

    from emojich.segment.pseudolabel import train_unet
    from emojich.segment.stream import StreamConfig
    from emojich.segment.unet import build_unet, preset
    from stages.segment import load_real_sets

    torch.set_num_threads(1)
    config = preset(args.preset)
    side = args.network_side or config.size
    model = build_unet(config, seed=0)
    stream = StreamConfig(args.workers, args.shuffle_buffer) if args.mode == "stream" else None
    started = time.perf_counter()
    with PeakSampler() as sampler:
        train, _ = load_real_sets(args.folder, side, args.limit, stream)
        steps = -(-len(train) // args.batch_size)  # one epoch
        train_unet(model, train, steps, args.batch_size, size=side, progress=False)
    return {
        "mode": args.mode,
        "train_images": len(train),
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_pss_mb": round(sampler.peak_kb / 1024, 1),
        "at_peak_main_mb": round(sampler.at_peak[0] / 1024, 1),
        "at_peak_workers_mb": round(sampler.at_peak[1] / 1024, 1),
        "main_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_child(args: argparse.Namespace, folder: Path, mode: str, limit: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--folder",
        str(folder),
        "--limit",
        str(limit),
        *("--preset", args.preset, "--network-side", str(args.network_side)),
        *("--batch-size", str(args.batch_size), "--workers", str(args.workers)),
        *("--shuffle-buffer", str(args.shuffle_buffer)),
    ]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--side", type=int, default=32, help="stored image side (px)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--network-side", type=int, default=0, help="0: the preset's side")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shuffle-buffer", type=int, default=512)
    parser.add_argument("--modes", default="memory,stream", help="comma-separated: memory, stream")
    parser.add_argument("--folder", type=Path, help="an existing synthetic set (else a temporary one)")
    parser.add_argument("--child", choices=["memory", "stream"], help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.mode = args.child
        print(json.dumps(child(args)))
        return {}

    with tempfile.TemporaryDirectory(prefix="segment-memory-") as temporary:
        folder = args.folder or Path(temporary)
        started = time.perf_counter()
        if not args.folder:
            build_synthetic_set(folder, args.images, args.side)
        build_s = time.perf_counter() - started
        sizes = sorted({max(args.images // 10, 1), args.images})
        runs = {
            f"{mode}_{size}": run_child(args, folder, mode, size)
            for size in sizes
            for mode in args.modes.split(",")
        }
    small, large = sizes[0], sizes[-1]

    def ratio(numerator: str, denominator: str) -> float | None:
        if numerator not in runs or denominator not in runs:
            return None
        return round(runs[numerator]["peak_pss_mb"] / runs[denominator]["peak_pss_mb"], 3)

    def growth(mode: str) -> float | None:
        if f"{mode}_{large}" not in runs:
            return None
        return round(runs[f"{mode}_{large}"]["peak_pss_mb"] - runs[f"{mode}_{small}"]["peak_pss_mb"], 1)

    report = {
        "images": args.images,
        "side": args.side,
        "preset": args.preset,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "shuffle_buffer": args.shuffle_buffer,
        "build_s": round(build_s, 1),
        "runs": runs,
        # > 1: streaming needs less; the growth figures say how each scales with the set.
        "memory_over_stream": ratio(f"memory_{large}", f"stream_{large}"),
        "memory_growth_mb": growth("memory"),
        "stream_growth_mb": growth("stream"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
