"""CPU decode at the machine's limits: its memory bandwidth and bf16 GEMM throughput, and the cached
sampler's step time for the Malevich shape with bf16 and int8 weights, side by side in one run.

A decode step (`IncrementalDecoder.step`) pushes one token per image through the transformer: it
reads every weight once and the keys and values the layers' sparse masks allow, and does
2 x parameters x batch FLOPs. At batch 1 it should run at the bandwidth; at larger batches the same
bytes carry more FLOPs, until the GEMM throughput bounds it. So the run measures both limits first,
on this machine and in this run:

- bandwidth: the better of two readers of a 1 GiB fp32 tensor, `sum` and a matrix-vector product
  (on 2 cores `sum` is partly bound by its adds), median of repeats (GB/s);
- GEMM: a large square bf16 matmul, median of repeats (GFLOP/s);

then, per weights mode as generation uses it (`emojich.models.precision`: bf16, the linear layers
packed for oneDNN; int8, the transformer's linear layers int8, `emojich.models.int8`) and batch
(1, 16, 64), each batch one caption's images: ms/step (median of repeats), s/image (steps per image x ms/step / batch),
bytes read per step (weights + keys/values) and their share of the bandwidth, FLOPs per step and
their share of the GEMM throughput; and int8/bf16 ratios. `kernels` times one MLP-sized linear
layer alone per mode and batch (copies of it, 1 GiB of bf16 weights, run in turn: from memory, not
from the cache), to tell the matrix products from the rest of the step.

Only the step is timed, on random weights built directly in bf16. Prefilling 128 text tokens at
batch 64 would take minutes, so there is no prefill: the key/value cache is filled with random
values up to a mid-image position (`image_position`, the decoder's `batch` set directly) and each
timed step runs at that same position (the position is reset between steps, so every repeat reads
the same keys). The cache is allocated only up to that position, and only the keys and values a
step reads there are written (`decoder_at`): at batch 64 the full cache would be 14.5 GB.

`experiments` holds what the sampler's CPU choices are worth, at batches 1 and 16: the bf16 step
with plain `nn.Linear` weights instead of oneDNN-packed ones (`emojich.models.packed`), with the
bf16 batched-matmul attention instead of the flash-attention kernel, and with both (the sampler
as it was), and with every row keeping its own text keys. `--try-compile` adds `compile`: every
layer's MLP half at the largest of those batches compiled by inductor with frozen weights, beside
eager plain and packed. Each case's `cpu_share` says how much of its timed steps' wall time the
process's threads ran: well under 1 means another process took the cores, and the timings are not
the machine's.

`--checkpoint PATH --tokens DIR` adds `quality`: a trained model's sampling with bf16 and int8
weights (and as stored, for scale), for the prompts of `--prompts`: the mean and max per-step
KL(bf16 || int8) of the next-code distributions, teacher-forced along the bf16 samples (and
KL(stored || bf16) beside it), whether the same seed samples the same codes, and caption retrieval
(`emojich.fidelity`) of each mode's images at two seeds (the seed-to-seed difference is the noise).

`--quick`: a tiny shape that runs in seconds, for tests.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emojich.generate.sampling import (
    IncrementalDecoder,
    _attend_segments,
    attention_segments,
    reference_draws,
)
from emojich.models.dalle import Dalle, DalleConfig
from emojich.models.int8 import Int8Linear
from emojich.models.packed import PackedLinear, pack_linears
from emojich.models.precision import set_weights_dtype

MODES = ("bf16", "int8")
GIB = 1 << 30


# ----- the machine's limits -----


def note(message: str) -> None:
    """Progress on stderr: stdout carries only the JSON."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def read_bandwidth(nbytes: int, repeats: int) -> dict[str, float]:
    """GB/s two readers get from an fp32 tensor far larger than the caches: `sum`, and a
    matrix-vector product over it (BLAS gemv; on 2 cores `sum` is partly bound by its adds)."""
    data = torch.ones(nbytes // 4)
    matrix, vector = data.view(-1, 4096), torch.ones(4096)
    readers = {"sum": lambda: data.sum(), "gemv": lambda: torch.mv(matrix, vector)}
    return {name: nbytes / median_seconds(fn, repeats, warmup=2)[0] / 1e9 for name, fn in readers.items()}


def gemm_throughput(size: int, repeats: int) -> float:
    """GFLOP/s of a square bf16 matmul."""
    a = torch.randn(size, size).to(torch.bfloat16)
    b = torch.randn(size, size).to(torch.bfloat16)
    seconds, _ = median_seconds(lambda: a @ b, repeats, warmup=2)
    return 2 * size**3 / seconds / 1e9


# ----- the model -----


def build_model(cfg: DalleConfig, seed: int) -> Dalle:
    """Random weights, made in bf16 (an fp32 Malevich would take 5.3 GB and a cast)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Dalle(cfg)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    """(in, out) of every linear layer, whatever its kind."""
    shapes = []
    for child in module.modules():
        if isinstance(child, nn.Linear | Int8Linear | PackedLinear):
            shapes.append((child.in_features, child.out_features))
    return shapes


def weight_bytes(model: Dalle) -> int:
    """Bytes of the weights one step reads: the transformer (not its masks) and the image rows of
    the logits head with its layer norm."""
    cfg = model.config
    tensors = [*model.transformer.parameters(), *model.transformer.buffers()]
    masks = {id(model.transformer.mask_for(kind)) for kind in ("row", "column", "conv")}
    total = sum(t.numel() * t.element_size() for t in tensors if id(t) not in masks)
    for module in model.transformer.modules():  # a packed weight is no parameter
        if isinstance(module, PackedLinear):
            total += module.in_features * module.out_features * 2
    element = model.to_logits[1].weight.element_size()
    total += (cfg.image_vocab_size * (cfg.hidden_size + 1) + 2 * cfg.hidden_size) * element
    return total


# ----- one decode step -----


def decoder_at(
    model: Dalle, batch: int, position: int, seed: int, matmul: bool = False, share_text: bool = True
) -> IncrementalDecoder:
    """A decoder about to feed image code `position` of `batch` images of one caption, with random
    keys and values where a step there reads them.

    As after a prefill of one caption, the text's keys are in row 0 only and every row reads them
    there (`IncrementalDecoder.shared`; `share_text=False`: each row its own); `matmul=True` sets up the bf16 batched-matmul attention
    instead, with its own segments and every row's own text, as the sampler had it.

    Only the positions a step reads are written: the rest of the cache is allocated but never
    touched, so the system never backs it with memory (at batch 64 the cache up to mid-image
    would take 8 GB)."""
    cfg = model.config
    decoder = IncrementalDecoder(model, 1)  # its one-image cache is replaced just below
    if matmul:
        decoder.attend = _attend_segments
        decoder.segments = attention_segments(cfg, flash=False)
    elif share_text and batch > 1:
        decoder.shared = decoder.first_query
    length = decoder.first_query + position + 1  # the step writes position `length - 1`
    shape = (cfg.num_layers, batch, cfg.num_attention_heads, length, cfg.head_dim)
    generator = torch.Generator().manual_seed(seed)
    for name in ("keys", "values"):
        block = torch.randn(cfg.num_attention_heads, length, cfg.head_dim, generator=generator)
        block = block.to(decoder.dtype)  # the same random block for every image and layer: quick
        cache = torch.empty(shape, dtype=decoder.dtype)
        for index, kind in enumerate(model.transformer.layer_masks):
            for segment in decoder.segments[kind][position]:
                shared = isinstance(segment, slice) and segment.stop <= decoder.shared
                rows = cache[index, :1] if shared else cache[index]
                if isinstance(segment, slice):
                    part = rows[:, :, segment]
                    part.copy_(block[:, : part.shape[2]].expand_as(part))
                else:
                    rows[:, :, segment] = block[:, : len(segment)].expand(len(rows), -1, -1, -1)
        setattr(decoder, name, cache)
    decoder.batch, decoder.image_position = batch, position
    return decoder


def keys_read(decoder: IncrementalDecoder, position: int) -> tuple[int, int]:
    """Keys (= values) all layers read at image `position`: (shared by the batch, per image)."""
    shared = own = 0
    for kind in decoder.model.transformer.layer_masks:
        for segment in decoder.segments[kind][position]:
            count = len(range(*segment.indices(10**9))) if isinstance(segment, slice) else len(segment)
            if isinstance(segment, slice) and segment.stop <= decoder.shared:
                shared += count
            else:
                own += count
    return shared, own


def time_steps(decoder: IncrementalDecoder, position: int, repeats: int, warmup: int) -> list[float]:
    codes = torch.randint(0, decoder.model.config.image_vocab_size, (decoder.batch,))

    def step() -> None:
        decoder.image_position = position
        decoder.step(codes)

    _, times = median_seconds(step, repeats, warmup)
    return times


def case(
    model: Dalle,
    mode: str,
    batch: int,
    position: int,
    limits: dict[str, float],
    repeats: int,
    warmup: int,
    seed: int,
    matmul: bool = False,
    share_text: bool = True,
) -> dict[str, Any]:
    cfg = model.config
    decoder = decoder_at(model, batch, position, seed, matmul, share_text)
    cpu_before, wall_before = os.times(), time.perf_counter()
    times = time_steps(decoder, position, repeats, warmup)
    cpu_after, wall = os.times(), time.perf_counter() - wall_before
    cpu = cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system
    step_s = statistics.median(times)
    shared, own = keys_read(decoder, position)
    del decoder
    gc.collect()
    weights = weight_bytes(model)
    kv = 2 * (shared + own * batch) * cfg.hidden_size * 2  # keys and values, bf16
    macs = sum(i * o for i, o in linear_shapes(model.transformer)) + cfg.image_vocab_size * cfg.hidden_size
    flops = 2 * batch * (macs + 2 * (shared + own) * cfg.hidden_size)  # + q.k and p.v over the keys
    moved = weights + kv
    return {
        "mode": mode,
        "batch": batch,
        "ms_per_step": round(step_s * 1e3, 2),
        "ms_per_step_repeats": [round(t * 1e3, 2) for t in times],
        "s_per_image": round(cfg.image_seq_length * step_s / batch, 3),
        "weight_bytes": weights,
        "kv_bytes": kv,
        "text_keys_shared": bool(shared),
        "bytes_per_step": moved,
        "gbps": round(moved / step_s / 1e9, 2),
        "bandwidth_share": round(moved / step_s / 1e9 / limits["bandwidth_gbps"], 3),
        "flops_per_step": flops,
        "gflops": round(flops / step_s / 1e9, 1),
        "gemm_share": round(flops / step_s / 1e9 / limits["gemm_gflops"], 4),
        # The share of the timed steps' wall time the process's threads ran: well under 1 means
        # another process took the cores.
        "cpu_share": round(cpu / wall / torch.get_num_threads(), 3),
    }


def kernel_times(
    hidden: int, batches: list[int], repeats: int, seed: int, nbytes: int
) -> list[dict[str, Any]]:
    """An MLP-sized linear layer (hidden -> 4 hidden) alone, per mode and batch: ms per layer and GB/s
    of its weight. Copies of the layer with `nbytes` of bf16 weights in all are run in turn, so the
    weights come from memory, not from the last-level cache, as in a decode step."""
    torch.manual_seed(seed)
    source = nn.Linear(hidden, 4 * hidden).to(torch.bfloat16)
    copies = max(1, -(-nbytes // (source.weight.numel() * 2)))
    makers: dict[str, Callable[[nn.Linear], nn.Module]] = {
        "bf16": lambda linear: linear,
        "int8": Int8Linear.from_linear,
        "bf16-packed": PackedLinear,
    }
    rows = []
    for mode, make in makers.items():
        layers = [make(copy.deepcopy(source)) for _ in range(copies)]
        weight = 4 * hidden * hidden * (1 if mode == "int8" else 2)
        for batch in batches:
            x = torch.randn(batch, hidden).to(torch.bfloat16)

            def run_all(x: torch.Tensor = x, layers: list[nn.Module] = layers) -> None:
                for layer in layers:
                    layer(x)

            with torch.inference_mode():
                seconds = median_seconds(run_all, repeats, warmup=1)[0] / copies
            rows.append(
                {
                    "mode": mode,
                    "batch": batch,
                    "shape": [batch, hidden, 4 * hidden],
                    "ms": round(seconds * 1e3, 3),
                    "weight_gbps": round(weight / seconds / 1e9, 1),
                    "gflops": round(2 * batch * 4 * hidden * hidden / seconds / 1e9, 1),
                }
            )
        del layers
    return rows


def compiled_mlps(cfg: DalleConfig, batch: int, repeats: int, seed: int) -> dict[str, Any]:
    """The second half of every layer (layer norm, MLP, layer norm, residual) at `batch`: eager with
    plain and with packed linear layers, and compiled by inductor with frozen weights (which packs
    them for oneDNN too and fuses the pointwise operations around them)."""
    import torch._inductor.config as inductor_config

    from emojich.models.dalle import TransformerLayer

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers)).eval()
    finally:
        torch.set_default_dtype(previous)

    class Halves(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = layers

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = layer.feed_forward(x)
            return x

    halves = Halves().eval()
    x = torch.randn(batch, 1, cfg.hidden_size).to(torch.bfloat16)
    row: dict[str, Any] = {"batch": batch, "layers": cfg.num_layers}
    with torch.inference_mode():
        row["eager_plain_ms"] = round(median_seconds(lambda: halves(x), repeats, 2)[0] * 1e3, 2)
        inductor_config.freezing = True
        compiled = torch.compile(halves)
        started = time.perf_counter()
        compiled(x)
        row["compile_s"] = round(time.perf_counter() - started, 1)
        row["compiled_ms"] = round(median_seconds(lambda: compiled(x), repeats, 2)[0] * 1e3, 2)
        pack_linears(halves)
        row["eager_packed_ms"] = round(median_seconds(lambda: halves(x), repeats, 2)[0] * 1e3, 2)
    return row


# ----- quality on a trained model -----


def teacher_forced(
    model: Dalle, text: torch.Tensor, condition: torch.Tensor | None, codes: torch.Tensor, draws=None
) -> torch.Tensor:
    """[b, steps, image_vocab] fp32 log-probabilities of each next code, fed `codes`."""
    decoder = IncrementalDecoder(model, len(text))
    logits = [decoder.prefill(text, condition, draws)]
    for j in range(codes.shape[1] - 1):
        logits.append(decoder.step(codes[:, j]))
    return torch.log_softmax(torch.stack(logits, dim=1), dim=-1)


def kl(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """KL(reference || other) per row of log-probabilities, in nats."""
    return (reference.exp() * (reference - other)).sum(-1)


def quality(args: argparse.Namespace) -> dict[str, Any]:
    from emojich.fidelity.retrieval import load_reference
    from emojich.generate.cell import sample_cell
    from emojich.generate.evaluation import measure_fidelity
    from emojich.generate.grid import SamplingCell
    from emojich.generate.loading import load_models
    from emojich.generate.prompts import check_prompt, read_prompts
    from emojich.models.precision import set_weights_dtype

    tokens = Path(args.tokens)
    base = load_models(args.checkpoint, tokens / "bpe.json", tokens / "vqgan.safetensors", None, "cpu")
    modes = {"checkpoint": base.dalle}
    for mode in MODES:
        modes[mode] = set_weights_dtype(Dalle.load(args.checkpoint), mode).eval()
    cfg = base.dalle.config
    prompts = read_prompts(args.prompts).prompts
    checks = [check_prompt(base.tokenizer, p, cfg.text_seq_length, cfg.conditioned) for p in prompts]
    vectors = base.caption_vectors(prompts)
    reference = load_reference(tokens)
    seeds = (args.seed, args.seed + 1)

    runs = {}
    retrieval: dict[str, dict[str, Any]] = {}
    for mode, dalle in modes.items():
        models = dataclasses.replace(base, dalle=dalle)
        for seed in seeds:
            cell = SamplingCell(args.top_k, args.top_p, 1.0, seed, 1.0)
            run = sample_cell(models, prompts, cell, args.attempts, args.attempts, progress=False)
            runs[mode, seed] = run
            if reference is not None:
                fidelity = measure_fidelity(reference, run, models, min(4, args.attempts), args.attempts)
                keys = ("train_top1", "train_top10", "train_top10_kept", "held_out_top10", "chance_top10")
                retrieval.setdefault(mode, {})[f"seed{seed}"] = {
                    k: fidelity.metrics[k] for k in keys if k in fidelity.metrics
                }

    kl_int8, kl_bf16 = [], []
    for index, check in enumerate(checks):
        codes = runs["bf16", args.seed].prompts[index].codes
        text = torch.as_tensor(check.ids).expand(len(codes), -1)
        condition = None if vectors is None else vectors[index : index + 1].expand(len(codes), -1, -1)
        # A by-reference model reads the drawings the sampled images read.
        draws = (
            reference_draws(args.seed, range(len(codes)))
            if base.dalle.reference_embeddings is not None
            else None
        )
        logp = {mode: teacher_forced(dalle, text, condition, codes, draws) for mode, dalle in modes.items()}
        kl_int8.append(kl(logp["bf16"], logp["int8"]))
        kl_bf16.append(kl(logp["checkpoint"], logp["bf16"]))
    per_step_int8, per_step_bf16 = torch.cat(kl_int8).flatten(), torch.cat(kl_bf16).flatten()

    def same(a: str, b: str) -> dict[str, Any]:
        left = torch.cat([r.codes for r in runs[a, args.seed].prompts])
        right = torch.cat([r.codes for r in runs[b, args.seed].prompts])
        equal_images = (left == right).all(dim=1)
        return {
            "codes_identical": bool(equal_images.all()),
            "images_identical": f"{int(equal_images.sum())}/{len(equal_images)}",
            "codes_equal_share": round(float((left == right).float().mean()), 4),
        }

    return {
        "checkpoint": str(args.checkpoint),
        "stored_dtype": str(next(base.dalle.parameters()).dtype).removeprefix("torch."),
        "prompts": len(prompts),
        "attempts": args.attempts,
        "sampling": {"top_k": args.top_k, "top_p": args.top_p, "temperature": 1.0, "seeds": list(seeds)},
        "kl_bf16_int8": {
            "mean": float(per_step_int8.mean()),
            "max": float(per_step_int8.max()),
            "p99": float(per_step_int8.quantile(0.99)),
        },
        "kl_checkpoint_bf16": {
            "mean": float(per_step_bf16.mean()),
            "max": float(per_step_bf16.max()),
            "p99": float(per_step_bf16.quantile(0.99)),
        },
        "same_seed_int8_vs_bf16": same("bf16", "int8"),
        "same_seed_bf16_vs_checkpoint": same("checkpoint", "bf16"),
        "retrieval": retrieval,
        "method": (
            f"KL per step along the bf16 samples of seed {args.seed} (teacher-forced, prefill included), "
            "over all images and steps, raw temperature-1 distributions over the image vocabulary"
        ),
    }


# ----- the run -----


def quick_config() -> DalleConfig:
    return DalleConfig(
        num_layers=3,
        hidden_size=64,
        num_attention_heads=4,
        text_seq_length=8,
        image_tokens_per_dim=8,
        vocab_size=64 + 8,
        image_vocab_size=64,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a tiny shape, for tests (seconds)")
    parser.add_argument("--preset", default="malevich", help="DalleConfig preset timed (default: malevich)")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--experiment-batches", default="1,16")
    parser.add_argument(
        "--try-compile",
        action="store_true",
        help="also time every layer's MLP half compiled by inductor at the largest experiment batch",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per case (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bandwidth-gib", type=float, default=1.0)
    parser.add_argument("--gemm-size", type=int, default=4096)
    parser.add_argument(
        "--position", type=int, default=None, help="image position timed (default: mid-image)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--checkpoint", type=Path, help="a trained model: adds `quality`")
    parser.add_argument("--tokens", type=Path, help="its tokens folder (bpe.json, vqgan, thumbnails)")
    parser.add_argument("--prompts", type=Path, default=Path("prompts/demo.txt"))
    parser.add_argument("--attempts", type=int, default=8, help="images per prompt for `quality`")
    parser.add_argument("--top-k", type=int, default=1024)
    parser.add_argument("--top-p", type=float, default=0.995)
    args = parser.parse_args(argv)
    if args.checkpoint and not args.tokens:
        parser.error("--checkpoint needs --tokens")
    if args.quick:
        args.bandwidth_gib, args.gemm_size, args.repeats, args.warmup = 1 / 64, 256, 3, 1
        args.batches, args.experiment_batches = "1,4", "4"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cfg = quick_config() if args.quick else DalleConfig.preset(args.preset)
    batches = [int(b) for b in args.batches.split(",")]
    position = cfg.image_seq_length // 2 if args.position is None else args.position
    readers = read_bandwidth(int(args.bandwidth_gib * GIB), max(args.repeats, 5))
    limits = {
        "bandwidth_gbps": round(max(readers.values()), 2),  # the best reader: shares are of this
        "gemm_gflops": round(gemm_throughput(args.gemm_size, args.repeats), 1),
    }
    experiment_batches = [int(b) for b in args.experiment_batches.split(",") if b]
    cases: list[dict[str, Any]] = []
    experiments: list[dict[str, Any]] = []

    def run(rows: list, name: str, model: Dalle, run_batches: list[int], **setup: bool) -> None:
        for batch in run_batches:
            note(f"{name}, batch {batch}")
            rows.append(
                case(model, name, batch, position, limits, args.repeats, args.warmup, args.seed, **setup)
            )

    # One model at a time (the batch-64 cache alone takes 8 GB); the same seed, the same weights.
    note("machine limits measured; building the model")
    model = build_model(cfg, args.seed)
    # What each of the sampler's CPU choices is worth (`experiments`): the sampler as it was
    # (plain linear layers, bf16 matmul attention, each image its own text keys), then one choice
    # taken back at a time.
    run(experiments, "bf16-as-before", model, experiment_batches, matmul=True)
    run(experiments, "bf16-plain-linears", model, experiment_batches)
    set_weights_dtype(model, "bf16")  # what generation samples with
    run(cases, "bf16", model, batches)
    run(experiments, "bf16-matmul-attention", model, experiment_batches, matmul=True)
    run(experiments, "bf16-text-per-image", model, [b for b in experiment_batches if b > 1], share_text=False)
    del model
    gc.collect()
    model = set_weights_dtype(build_model(cfg, args.seed), "int8")
    run(cases, "int8", model, batches)
    del model
    gc.collect()
    by_case = {(row["mode"], row["batch"]): row["ms_per_step"] for row in cases + experiments}
    ratios = {
        f"{mode}/bf16": {
            str(b): round(by_case[mode, b] / by_case["bf16", b], 3)
            for b in batches
            if (mode, b) in by_case and ("bf16", b) in by_case
        }
        for mode in {row["mode"] for row in cases + experiments} - {"bf16"}
    }
    report: dict[str, Any] = {
        "machine": {
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **limits,
            "bandwidth_readers_gbps": {name: round(value, 2) for name, value in readers.items()},
            "bandwidth_method": f"best of sum and gemv over {args.bandwidth_gib:g} GiB of fp32, "
            f"median of {max(args.repeats, 5)} each",
            "gemm_method": f"bf16 {args.gemm_size}^3 matmul, median of {args.repeats}",
        },
        "config": {
            "preset": "quick" if args.quick else args.preset,
            "layers": cfg.num_layers,
            "hidden": cfg.hidden_size,
            "heads": cfg.num_attention_heads,
            "text_positions": cfg.text_positions,
            "grid": cfg.image_tokens_per_dim,
            "image_vocab": cfg.image_vocab_size,
        },
        "image_position": position,
        "steps_per_image": cfg.image_seq_length,
        "method": (
            f"median of {args.repeats} IncrementalDecoder.step calls after {args.warmup} untimed, all at image "
            f"position {position} (cache random up to it, no prefill); bytes: weights read per step + "
            "bf16 keys and values the masks allow; FLOPs: 2 x batch x (linear MACs + q.k and p.v)"
        ),
        "cases": cases,
        "ratios": ratios,
        "experiments": experiments,
        "kernels": kernel_times(
            cfg.hidden_size, batches, args.repeats, args.seed, int(args.bandwidth_gib * GIB)
        ),
    }
    if args.try_compile:
        note("compiled MLP halves")
        report["compile"] = compiled_mlps(cfg, max(experiment_batches), args.repeats, args.seed)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    if args.checkpoint:
        note("quality on the trained model")
        report["quality"] = quality(args)
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
