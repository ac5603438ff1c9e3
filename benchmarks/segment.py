"""Background U-Net inference speed: batched `predict` against one image at a time.

The published segmentation code feeds one image per forward pass. Both schemes run here on
the same model, weights and images, interleaved repeat by repeat so that machine load affects
them alike; each reports the median images/s over the repeats, and the JSON gives the ratio.
Both include the same preprocessing (resize to the network side, scaling) and the resize of the
probabilities back to the input, so only the batching differs.

CPU default: the demo preset (128 px network side) on 64 images of 256 px, about a minute on
two cores. GPU: `--device cuda --preset published-b5 --images 256 --batch-size 32`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from emojich.segment.unet import PRESETS, build_unet, predict, preset


def synthetic_images(count: int, side: int, seed: int = 0) -> np.ndarray:
    """Emoji-like inputs: a coloured disc on white (content does not change the cost)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.indices((side, side))
    radius = rng.uniform(0.25, 0.45, count) * side
    disc = (ys - side / 2) ** 2 + (xs - side / 2) ** 2 <= radius[:, None, None] ** 2
    colour = rng.integers(0, 220, (count, 1, 1, 3))
    return np.where(disc[..., None], colour, 255).astype(np.uint8)


def timed(run, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--side", type=int, default=256, help="input image side in px")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = preset(args.preset)
    torch.manual_seed(0)
    model = build_unet(config).to(device).eval()
    images = synthetic_images(args.images, args.side)

    def one_at_a_time() -> None:
        predict(model, images, batch_size=1, size=config.size, device=device)

    def batched() -> None:
        predict(model, images, batch_size=args.batch_size, size=config.size, device=device)

    predict(
        model, images[: args.batch_size], batch_size=args.batch_size, size=config.size, device=device
    )  # warm-up
    times: dict[str, list[float]] = {"batch_1": [], f"batch_{args.batch_size}": []}
    for _ in range(args.repeats):
        times["batch_1"].append(timed(one_at_a_time, device))
        times[f"batch_{args.batch_size}"].append(timed(batched, device))

    rates = {name: args.images / statistics.median(values) for name, values in times.items()}
    report = {
        "preset": args.preset,
        "encoder": config.encoder,
        "network_side": config.size,
        "input_side": args.side,
        "images": args.images,
        "repeats": args.repeats,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "median_images_per_s": {name: round(rate, 2) for name, rate in rates.items()},
        "median_seconds": {name: round(statistics.median(values), 3) for name, values in times.items()},
        "speedup_batched_vs_batch_1": round(rates[f"batch_{args.batch_size}"] / rates["batch_1"], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
