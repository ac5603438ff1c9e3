"""Fine-tuning cost: bitsandbytes 8-bit Adam vs 32-bit AdamW on the same model, side by side.

Prints JSON: optimizer state bytes, peak memory, median step time and tokens/s for each optimizer,
and their ratios. Each optimizer runs in its own child process so that one's peak memory cannot
hide the other's (on CPU, peak memory is the child's max RSS; on CUDA, the allocator's peak).

    python benchmarks/finetune.py                          # CPU, demo-sized model
    python benchmarks/finetune.py --device cuda --preset malevich --freeze attention-and-mlp --batch 2 \
        --precision fp16 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import time

import torch

from emojich.models.dalle import Dalle, DalleConfig
from emojich.train.finetune import freeze_for_finetune
from emojich.train.loop import TrainConfig, Trainer


def run_one(args: argparse.Namespace, optimizer: str, queue: multiprocessing.Queue) -> None:
    """Measure in this child; a failure (out of memory at a large batch) is reported, not hung on."""
    try:
        measure(args, optimizer, queue)
    except Exception as error:
        queue.put({"error": f"{type(error).__name__}: {error}"})


def measure(args: argparse.Namespace, optimizer: str, queue: multiprocessing.Queue) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = DalleConfig.preset(args.preset)
    model = Dalle(cfg).to(device)
    freeze_for_finetune(model, args.freeze)
    steps = args.warmup + args.steps
    text = torch.randint(
        4, cfg.vocab_size - cfg.text_seq_length, (args.batch, cfg.text_seq_length), device=device
    )
    codes = torch.randint(0, cfg.image_vocab_size, (args.batch, cfg.image_seq_length), device=device)

    def loss_fn(model, _indices):
        return model(text, codes, return_loss=True)

    config = TrainConfig(
        epochs=1,
        batch_size=1,
        max_steps=steps,
        optimizer=optimizer,
        precision=args.precision,
        lr_start=1e-5,
        lr_max=1e-4,
        lr_final=1e-6,
    )
    trainer = Trainer(model, loss_fn, steps, config, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for step in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train_step(torch.tensor([step]))
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    state_bytes = sum(
        value.numel() * value.element_size()
        for state in trainer.optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    step_s = statistics.median(times)
    tokens = args.batch * cfg.seq_length
    result = {
        "optimizer": optimizer,
        "trainable_parameters": trainable,
        "optimizer_state_bytes": state_bytes,
        "state_bytes_per_trainable_parameter": round(state_bytes / trainable, 3),
        "median_step_s": round(step_s, 4),
        "tokens_per_s": round(tokens / step_s, 1),
    }
    if device.type == "cuda":
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        if args.peak_tflops:
            # 6 FLOPs per parameter per token for forward + backward (the usual estimate); frozen
            # weights still cost their forward and input-gradient passes, so all parameters count.
            flops = 6 * model.num_parameters() * tokens
            result["model_flops_utilisation"] = round(flops / step_s / (args.peak_tflops * 1e12), 4)
    else:
        result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result["rss_growth_during_training_bytes"] = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        ) * 1024
    queue.put(result)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--freeze", default="none", choices=("none", "attention-and-mlp"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--optimizer", choices=("both", "adam8bit", "adamw"), default="both", help="both: side by side"
    )
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak, for MFU")
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    results = {}
    for optimizer in ("adam8bit", "adamw") if args.optimizer == "both" else (args.optimizer,):
        queue = context.Queue()
        child = context.Process(target=run_one, args=(args, optimizer, queue))
        child.start()
        results[optimizer] = queue.get()
        child.join()
    failed = {name: result["error"] for name, result in results.items() if "error" in result}
    if failed:
        print(json.dumps({"config": vars(args), "errors": failed}, indent=2))
        raise SystemExit(1)
    if args.optimizer != "both":
        print(json.dumps({"config": vars(args), "results": results}, indent=2))
        return
    eight, full = results["adam8bit"], results["adamw"]
    peak_key = "peak_memory_bytes" if "peak_memory_bytes" in eight else "peak_rss_bytes"
    report = {
        "config": vars(args),
        "results": results,
        "ratios_8bit_over_32bit": {
            "optimizer_state_bytes": round(eight["optimizer_state_bytes"] / full["optimizer_state_bytes"], 4),
            peak_key: round(eight[peak_key] / full[peak_key], 4),
            "median_step_s": round(eight["median_step_s"] / full["median_step_s"], 4),
        },
        "target": "8-bit optimizer states <= 0.3x of 32-bit",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
