"""Image-token sampling speed: three decoders on the same weights and seed, one JSON report.

1. naive      - a full forward pass over the whole sequence for every token;
2. reference  - the released scheme: key/value cache grown by concatenation, embeddings and
                layer norms recomputed over the whole sequence, logits for every position,
                at every step;
3. ours       - `emojich.generate.sampling.generate` (static cache, one-token decode, sparse key reads,
                image-vocabulary logits of the last position only).

Our decoder is timed end to end over whole images. The other two get slower as the sequence
grows and would take minutes per image on a CPU, so they are timed for a few steps at evenly
spaced image positions (from a cache built untimed up to that position); their mean step time
estimates the average over a whole image, and images/s is extrapolated from it (the JSON says so).

CPU default: the published 32 x 32 grid, 128 text tokens and vocabularies with a narrow, shallow
transformer. GPU: `--device cuda --preset malevich --dtype bf16 --batch 16 --peak-gbps 3350`
also reports achieved memory bandwidth (weights + keys/values read per step / step time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from emojich.generate.sampling import filter_logits, generate, key_segments
from emojich.models.dalle import Dalle, DalleConfig, masked_attention

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def bench_config(args: argparse.Namespace) -> DalleConfig:
    if args.preset:
        return DalleConfig.preset(args.preset)
    base = DalleConfig.preset("malevich")
    return DalleConfig(
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_attention_heads=args.heads,
        text_seq_length=base.text_seq_length,
        image_tokens_per_dim=base.image_tokens_per_dim,
        vocab_size=base.vocab_size,
        image_vocab_size=base.image_vocab_size,
        format="v3",
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def sample(logits: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """The same top-k / top-p filtering for the baselines as ours (draws differ: a shared generator)."""
    probs = torch.softmax(filter_logits(logits.float(), top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# ----- baseline 1: full recompute -----


def naive_step(model: Dalle, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return model(text, image)[:, -1, model.config.vocab_size :]


# ----- baseline 2: the released caching scheme -----


class ReferenceStyleDecoder:
    """Released-style cached decoding: per layer a (keys, values, attention output) cache grown by
    `torch.cat`; the whole sequence is embedded, normalised and projected to logits every step."""

    def __init__(self, model: Dalle) -> None:
        self.model = model
        self.cache: list[tuple[torch.Tensor, ...]] = []

    def __call__(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        model, transformer, cfg = self.model, self.model.transformer, self.model.config
        tokens = model.text_tokens(text)
        x = model.embed_text(tokens)
        if image.shape[1]:
            x = torch.cat((x, model.embed_image(image)), dim=1)
        n = x.shape[1]
        cached = self.cache[0][0].shape[2] if self.cache else 0
        new_cache = []
        for index, (layer, kind) in enumerate(zip(transformer.layers, transformer.layer_masks, strict=True)):
            h = layer.input_layernorm(x)  # whole sequence, as released
            q, k, v = layer.attention.project(h[:, cached:])
            if cached:
                past_k, past_v, past_out, *past_mlp = self.cache[index]
                k, v = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
            mask = transformer.mask_for(kind)[cached:n, :n].to(x.device)
            out = layer.attention.merge(masked_attention(q, k, v, mask))
            if cached:
                out = torch.cat((past_out, out), dim=1)
            x = x + layer.before_first_addition_layernorm(out)
            h = layer.post_attention_layernorm(x)
            last = index == len(transformer.layers) - 1
            mlp = layer.mlp(h[:, cached:])
            if cached:
                # The release keeps true MLP outputs only for the last layer; earlier layers reuse
                # the normalised input for past positions (harmless: nothing reads them again).
                mlp = torch.cat((past_mlp[0] if last else h[:, :cached], mlp), dim=1)
            x = x + layer.before_second_addition_layernorm(mlp)
            new_cache.append((k, v, out, mlp) if last else (k, v, out))
        self.cache = new_cache
        logits = model.to_logits(transformer.final_layernorm(x))  # every position, as released
        return logits[:, -1, cfg.vocab_size :]


# ----- timing -----


def time_call(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def probe_positions(steps: int, count: int, probe_steps: int) -> list[int]:
    """Evenly spaced image positions, leaving room for `probe_steps` more inputs after each."""
    last = steps - 1 - probe_steps
    return sorted({round(i * last / max(count - 1, 1)) for i in range(count)})


@torch.inference_mode()
def time_baselines(
    model: Dalle,
    text: torch.Tensor,
    image: torch.Tensor,
    positions: list[int],
    probe_steps: int,
    repeats: int,
    top_k: int,
    top_p: float,
) -> dict[str, float]:
    """Mean seconds per step at the probe positions for the naive and released-style decoders."""
    device = text.device
    generator = torch.Generator(device=device).manual_seed(0)
    naive, reference = [], []
    naive_step(model, text, image[:, :1])  # warm-up (lazy initialisation)
    for position in positions:

        def naive_once(position: int = position) -> None:
            sample(naive_step(model, text, image[:, :position]), top_k, top_p, generator)

        naive.append(time_call(naive_once, device, repeats))

        decoder = ReferenceStyleDecoder(model)
        decoder(text, image[:, :position])  # the cache up to `position`, built once, untimed
        built = decoder.cache

        def reference_steps(
            decoder: ReferenceStyleDecoder = decoder, position: int = position, built: list = built
        ) -> None:
            decoder.cache = built  # the cache grows by new tensors: `built` stays intact
            for j in range(position, position + probe_steps):
                sample(decoder(text, image[:, : j + 1]), top_k, top_p, generator)

        reference.append(time_call(reference_steps, device, repeats) / probe_steps)
    return {"naive": statistics.mean(naive), "reference": statistics.mean(reference)}


def bytes_per_step(model: Dalle, batch: int, element: int) -> dict[str, float]:
    """Bytes a decode step must read: transformer weights, the image rows of `to_logits`, and the
    allowed keys and values of every layer (averaged over image positions)."""
    cfg = model.config
    weights = (
        sum(p.numel() for name, p in model.named_parameters() if name.startswith("transformer.")) * element
    )
    weights += (cfg.image_vocab_size + 2) * cfg.hidden_size * element
    keys_per_layer = []
    for kind in cfg.layer_masks or ():
        segments = key_segments(
            kind,
            cfg.text_seq_length,
            cfg.image_tokens_per_dim,
            cfg.format,
            cfg.conv_kernel,
            cfg.text_positions,
        )
        counts = [
            sum(len(range(s.start, s.stop, s.step or 1)) if isinstance(s, slice) else len(s) for s in segs)
            for segs in segments
        ]
        keys_per_layer.append(statistics.mean(counts))
    kv = sum(keys_per_layer) * 2 * cfg.hidden_size * element * batch
    return {"weights": float(weights), "kv": float(kv)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default=None, help="a DalleConfig preset (default: a small CPU config)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--images", type=int, default=1, help="batches of images timed for ours")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probes", type=int, default=5, help="image positions timed for the baselines")
    parser.add_argument("--probe-steps", type=int, default=3, help="released-style steps per probe")
    parser.add_argument("--top-k", type=int, default=2048)
    parser.add_argument("--top-p", type=float, default=0.995)
    parser.add_argument("--seed", type=int, default=42)
    # One thread by default: a decode step is many small ops, and on a small shared CPU the
    # hand-offs between threads cost more than they save (all three decoders get the same).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--peak-gbps", type=float, default=None, help="device memory bandwidth, GB/s")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    cfg = bench_config(args)
    torch.manual_seed(args.seed)
    with torch.device(device):  # initialise the weights where they will live
        model = Dalle(cfg)
    model = model.to(device=device, dtype=dtype).eval()  # moves the (CPU-built) mask buffers too
    steps = cfg.image_seq_length
    generator = torch.Generator().manual_seed(args.seed)
    text = torch.randint(
        4, cfg.vocab_size - cfg.text_seq_length, (args.batch, cfg.text_seq_length), generator=generator
    )
    text[:, cfg.text_seq_length // 2 :] = 0
    image = torch.randint(0, cfg.image_vocab_size, (args.batch, steps), generator=generator)
    text, image = text.to(device), image.to(device)

    def ours() -> None:
        generate(
            model,
            text,
            images_num=1,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            batch_size=args.batch,
            progress=False,
        )

    ours_image_s = time_call(ours, device, args.repeats)
    ours_step = ours_image_s / steps
    positions = probe_positions(steps, args.probes, args.probe_steps)
    baselines = time_baselines(
        model, text, image, positions, args.probe_steps, args.repeats, args.top_k, args.top_p
    )

    def row(step_s: float, image_s: float) -> dict[str, float]:
        return {
            "ms_per_step": round(step_s * 1e3, 3),
            "tokens_per_s": round(args.batch / step_s, 1),
            "images_per_s": round(args.batch / image_s, 4),
        }

    report: dict[str, object] = {
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "config": {
            "preset": args.preset,
            "layers": cfg.num_layers,
            "hidden": cfg.hidden_size,
            "heads": cfg.num_attention_heads,
            "text_tokens": cfg.text_seq_length,
            "grid": cfg.image_tokens_per_dim,
            "vocab": cfg.total_vocab_size,
            "parameters": model.num_parameters(),
        },
        "batch": args.batch,
        "sampling": {"top_k": args.top_k, "top_p": args.top_p},
        "method": (
            f"ours: median of {args.repeats} whole-image runs (prefill and sampling included) / {steps} steps; "
            f"naive and reference: mean over image positions {positions} of the median of "
            f"{args.repeats} timings ({args.probe_steps} steps each for reference), "
            f"images/s extrapolated as {steps} x mean step time"
        ),
        "decoders": {
            "naive": row(baselines["naive"], baselines["naive"] * steps),
            "reference": row(baselines["reference"], baselines["reference"] * steps),
            "ours": row(ours_step, ours_image_s),
        },
        "speedup": {
            "ours_vs_naive": round(baselines["naive"] / ours_step, 2),
            "ours_vs_reference": round(baselines["reference"] / ours_step, 2),
        },
    }
    traffic = bytes_per_step(model, args.batch, torch.finfo(dtype).bits // 8)
    achieved = (traffic["weights"] + traffic["kv"]) / ours_step / 1e9
    bandwidth: dict[str, float | None] = {
        "weight_bytes_per_step": traffic["weights"],
        "kv_bytes_per_step": traffic["kv"],
        "achieved_gbps": round(achieved, 2),
        "peak_gbps": args.peak_gbps,
        "fraction_of_peak": round(achieved / args.peak_gbps, 3) if args.peak_gbps else None,
    }
    report["memory_bandwidth"] = bandwidth
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
