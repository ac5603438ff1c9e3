"""What `emojich generate` says about a surprising prompt: each warning once, where a person reads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_generate import TEXT_LENGTH, make_tiny_assets

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_assets(tmp_path_factory.mktemp("assets"))


def _generate(assets: dict[str, Path], out: Path, *prompts: str) -> str:
    """Run the command as a person does, in its own process; stdout and stderr together."""
    command = [
        sys.executable,
        "-m",
        "emojich.cli",
        "generate",
        *prompts,
        "-n",
        "2",
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--tokens",
        str(assets["tokens"]),
        "--checkpoint",
        str(assets["checkpoint"]),
        "--upscaler",
        "",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_each_prompt_warning_is_said_once(assets, tmp_path):
    long_prompt = " ".join(["ежик в голубой шапке"] * TEXT_LENGTH)
    output = _generate(assets, tmp_path / "out", "hello world", long_prompt)
    assert output.count("Latin-only text") == 1, output
    assert output.count("do not fit the text length") == 1, output
    # The clamped top_k (2048 above the tiny model's codebook) is a warning of the run, also once.
    assert output.count("clamped to") == 1, output
