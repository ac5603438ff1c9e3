"""The scaling benchmarks keep working: `benchmarks/gpu.sh` and `benchmarks/segment_memory.py` at tiny shapes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import segment_memory  # noqa: E402


def test_gpu_script_runs_every_step_on_cpu_at_tiny_shapes(tmp_path):
    env = {**os.environ, "EMOJICH_BENCH_TINY": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path)], check=True, env=env, timeout=300
    )
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["mode"] == "cpu-tiny"
    assert report["decode"]["batch_1"]["ms_per_step"] > 0 and report["decode"]["batch_1"]["images_per_s"] > 0
    assert report["decode"]["batch_1"]["h100_bound_images_per_s"] == 1.27
    assert report["finetune_largest_batch"] == 2  # the tiny run tries the report's batch only
    step = report["finetune"]["batch_2"]
    assert step["s_per_step"] > 0 and step["peak_memory_gb"] > 0
    # 2,749 images / batch 2 = 1,375 steps per epoch, 40 epochs.
    assert step["projected_hours_2749x40"] == pytest.approx(1375 * 40 * step["s_per_step"] / 3600, abs=0.01)
    assert set(report["unet"]["median_images_per_s"]) == {"batch_1", "batch_4"}


def test_segment_memory_measures_one_streamed_epoch_over_a_synthetic_shard_set(tmp_path):
    segment_memory.build_synthetic_set(tmp_path, count=120, side=16)
    manifest = (tmp_path / "manifest.csv").read_text(encoding="utf-8").splitlines()
    assert len(manifest) == 121 and sum(line.endswith(",val") for line in manifest) == 6
    args = argparse.Namespace(
        mode="stream",
        folder=tmp_path,
        limit=0,
        preset="tiny",
        network_side=16,
        batch_size=32,
        workers=1,
        shuffle_buffer=16,
    )
    result = segment_memory.child(args)
    assert result["train_images"] == 114 and result["steps"] == 4  # one epoch
    assert result["peak_pss_mb"] > 0 and result["main_maxrss_mb"] > 0
