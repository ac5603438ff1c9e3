"""Run the paper profile on stand-in weights and report what each stage costs, as JSON.

    benchmarks/paper_dry_run.sh [WORK_DIR] [--size full|tiny]

Fabricates stand-ins (`emojich standin-weights`), builds a throw-away DVC repository with
profiles/paper.yaml and the small overrides of tests/paper_profile.py, then runs one stage at a
time (`dvc repro -s`). Per stage: wall time, peak RSS (of the stage's process tree) and exit code.
Besides: trainable against frozen parameters, fine-tune s/step with 8-bit Adam, decode ms/step
at batch 16, and whether the outputs have the published shapes (32 x 32 codes, 512 px images,
RGBA stickers). The report is rewritten after every step, so a run stopped by a time limit still
says how far it got and why.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emojich import standins  # noqa: E402
from emojich.foundation.storage import write_json_atomic  # noqa: E402
from tests.paper_profile import PROFILE, paper_overrides  # noqa: E402
from tests.pipeline import make_pipeline_repo, pipeline_env, run  # noqa: E402

PROMPTS = "prompts/paper-dry-run.txt"
PROMPT = "Эйнштейн улыбается"  # the report's running example
DECODE_BATCH = 16
DECODE_STEPS = 4


def timed(cmd: list[str], cwd: Path, log: Path) -> dict[str, Any]:
    """Run `cmd` with its output in `log`: wall seconds, peak RSS (MiB) of its process tree, exit code.

    `os.wait4` gives the rusage of the child including the children it waited for (the stage
    DVC starts), which `subprocess.run` does not expose.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(cmd, cwd=cwd, env=pipeline_env(), stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "exit_code": process.returncode,
        "log": str(log),
    }


def tail(log: Path, lines: int = 8) -> list[str]:
    text = log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    return [line for line in text.splitlines() if line.strip()][-lines:]


def seconds_per_step(log: Path) -> float | None:
    """The fine-tune progress bar's last rate (tqdm prints s/step or step/s)."""
    text = log.read_text(encoding="utf-8", errors="replace")
    found = re.findall(r"finetune:[^\n\r]*?\d+/\d+ \[[^\]]*?([\d.]+)(s/step|step/s)[,\]]", text)
    if not found:
        return None
    value, unit = found[-1]
    return round(float(value) if unit == "s/step" else 1.0 / float(value), 2)


def decode_benchmark(weights: Path, preset: str, batch: int, steps: int) -> dict[str, Any]:
    """ms per incremental decode step at `batch`, bf16 weights and cache (fp32 would need twice the memory).

    The cache is zero-filled instead of prefilled: a step's cost does not depend on what it
    holds, and the prefill of 16 captions would cost minutes on a CPU.
    """
    import resource

    import torch

    from emojich.generate.sampling import IncrementalDecoder
    from emojich.models.dalle import Dalle, DalleConfig

    model = Dalle(DalleConfig.preset(preset)).load_published(weights).to(torch.bfloat16).eval()
    decoder = IncrementalDecoder(model, batch)
    decoder.keys.zero_()
    decoder.values.zero_()
    decoder.batch = batch
    codes = torch.zeros(batch, dtype=torch.long)
    decoder.step(codes)  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        decoder.step(codes)
    per_step = (time.perf_counter() - started) / steps
    cache = 2 * decoder.keys.numel() * decoder.keys.element_size()
    return {
        "batch": batch,
        "dtype": "bfloat16",
        "steps_timed": steps,
        "ms_per_step": round(per_step * 1000, 1),
        "image_s_estimate": round(per_step * model.config.image_seq_length, 1),
        "kv_cache_gib": round(cache / 2**30, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def shapes(repo: Path) -> dict[str, Any]:
    """Whether the outputs have the published shapes."""
    from PIL import Image
    from safetensors import safe_open

    from emojich.models.vqgan import read_config

    found: dict[str, Any] = {}
    codes_file = repo / "data/tokens/codes.safetensors"
    if codes_file.is_file():
        with safe_open(str(codes_file), framework="pt") as handle:
            count, length = handle.get_slice("codes").get_shape()
        side = int(length**0.5)
        found["codes"] = {"images": count, "grid": f"{side}x{side}", "published": side == 32}
        vq = read_config(repo / "data/tokens/vqgan.safetensors")
        found["decoder"] = {
            "dwt": vq.dwt,
            "output_px": vq.output_resolution,
            "published": vq.output_resolution == 512,
        }
    kept = sorted((repo / "data/generated").glob("*/kept/*.png"))
    if kept:
        sizes = {Image.open(path).size for path in kept}
        found["images"] = {
            "count": len(kept),
            "sizes": sorted(map(list, sizes)),
            "published": sizes == {(512, 512)},
        }
    stickers = sorted((repo / "data/stickers/images").glob("*.webp")) + sorted(
        (repo / "data/stickers/images").glob("*.png")
    )
    if stickers:
        modes = {Image.open(path).mode for path in stickers}
        sizes = {max(Image.open(path).size) for path in stickers}
        found["stickers"] = {
            "count": len(stickers),
            "modes": sorted(modes),
            "published": modes == {"RGBA"} and sizes == {512},
        }
    return found


def stage_metrics(repo: Path, stage: str) -> dict[str, Any]:
    """A stage's full record: its provenance output (metrics/ holds only a rounded summary)."""
    folders = {"upscale": "upscaled", "tokenize": "tokens"}
    if stage.startswith("generate"):
        paths = sorted((repo / "data/generated").glob("*/provenance.json"))
    else:
        paths = [repo / "data" / folders.get(stage, stage) / "provenance.json"]
    for path in paths:
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return {}


KEPT_METRICS = {
    "weights_origin", "upscaler", "image_tokenizer", "text_tokenizer", "model", "variant", "freeze",
    "trainable_parameters", "parameters", "steps", "encoder", "input_size", "count", "all_valid",
}  # fmt: skip


class DryRun:
    """One run's folders and its report, saved after every step."""

    def __init__(self, work: Path, size: str, seed: int) -> None:
        self.work, self.size, self.seed = work, size, seed
        self.weights, self.repo, self.logs = work / "weights", work / "repo", work / "logs"
        self.report: dict[str, Any] = {
            "size": size,
            "work": str(work),
            "running": None,
            "stopped": None,
            "stages": {},
        }
        self.python = sys.executable

    def save(self) -> None:
        write_json_atomic(self.work / "report.json", self.report)

    def step(self, name: str, cmd: list[str], cwd: Path) -> bool:
        print(f"paper_dry_run: {name} ...", flush=True)
        self.report["running"] = name
        self.save()
        result = timed(cmd, cwd, self.logs / f"{name}.log")
        self.report["stages"][name] = result
        self.report["running"] = None
        if result["exit_code"] != 0:
            self.report["stopped"] = {"at": name, "why": tail(self.logs / f"{name}.log")}
        self.save()
        print(f"paper_dry_run: {name}: {json.dumps(result)}", flush=True)
        return result["exit_code"] == 0

    def run(self) -> bool:
        write = ["-m", "emojich.cli", "standin-weights", str(self.weights), "--size", self.size]
        if not self.step("standin-weights", [self.python, *write, "--seed", str(self.seed)], ROOT):
            return False
        # Measured before the pipeline, on the stand-in itself: decoding speed does not depend on
        # the fine-tuned values, and the number then exists even if a later stage stops the run.
        dalle = [str(self.weights / standins.DALLE_FILE), standins.PRESETS[self.size]["dalle"]]
        if not self.step("decode-benchmark", [self.python, __file__, "--decode", *dalle], ROOT):
            return False
        self.report["decode"] = json.loads(tail(self.logs / "decode-benchmark.log", 1)[0])
        self.save()
        return self.pipeline()

    def pipeline(self) -> bool:
        make_pipeline_repo(self.repo, paper_overrides(self.weights, self.size, prompts=PROMPTS), PROFILE)
        (self.repo / PROMPTS).write_text(PROMPT + "\n", encoding="utf-8")
        run(["git", "add", "-A"], cwd=self.repo)
        run(["git", "commit", "-q", "-m", "dry-run prompt"], cwd=self.repo)
        dvc = str(Path(self.python).parent / "dvc")
        for stage in run([dvc, "stage", "list", "--name-only"], cwd=self.repo).stdout.split():
            ok = self.step(stage, [dvc, "repro", "-s", stage], self.repo)
            metrics = stage_metrics(self.repo, stage)
            self.report["stages"][stage]["metrics"] = {k: v for k, v in metrics.items() if k in KEPT_METRICS}
            if stage == "finetune" and ok:
                self.report["finetune"] = self.finetune_numbers(metrics)
            self.report["shapes"] = shapes(self.repo)
            self.save()
            if not ok:
                return False
        return True

    def finetune_numbers(self, metrics: dict[str, Any]) -> dict[str, Any]:
        trainable, total = metrics["trainable_parameters"], metrics["parameters"]
        return {
            "parameters": total,
            "trainable": trainable,
            "frozen": total - trainable,
            "trainable_share": round(trainable / total, 4),
            "frozen_tensors": metrics["frozen_tensors"],
            "optimizer": "adam8bit",
            "s_per_step": seconds_per_step(self.logs / "finetune.log"),
            "peak_rss_mib": self.report["stages"]["finetune"]["peak_rss_mib"],
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", nargs="?", default="/tmp/emojich-paper-dry-run", type=Path)
    parser.add_argument("--size", choices=standins.SIZES, default="full")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    work: Path = args.work.resolve()
    if work.exists() and any(work.iterdir()):
        print(f"paper_dry_run: {work} is not empty; give a new folder", file=sys.stderr)
        return 2
    dry_run = DryRun(work, args.size, args.seed)

    def stop(signum: int, _frame: object) -> None:
        raise TimeoutError(
            f"stopped by signal {signum} (the time limit) while running {dry_run.report['running']}"
        )

    signal.signal(signal.SIGTERM, stop)
    try:
        return 0 if dry_run.run() else 1
    except TimeoutError as error:
        dry_run.report["stopped"] = {"at": dry_run.report["running"], "why": [str(error)]}
        dry_run.save()
        return 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--decode":
        print(json.dumps(decode_benchmark(Path(sys.argv[2]), sys.argv[3], DECODE_BATCH, DECODE_STEPS)))
        sys.exit(0)
    sys.exit(main())
