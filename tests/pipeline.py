"""A throw-away copy of the project as its own git + DVC repository, for real `dvc repro` runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("dvc.yaml", "params.yaml", "stages", "emojich", "prompts", ".dvcignore")


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def pipeline_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=cwd, env=pipeline_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([str(Path(sys.executable).parent / "dvc"), *args], cwd=cwd, check=check)


def assert_repro_is_a_no_op(path: Path) -> None:
    """A second `dvc repro` runs no stage and leaves dvc.lock as it was."""
    lock = (path / "dvc.lock").read_text()
    again = dvc("repro", cwd=path)
    assert "Running stage" not in again.stdout, again.stdout
    assert (path / "dvc.lock").read_text() == lock


def make_pipeline_repo(dest: Path, overrides: dict[str, Any], base: str = "params.yaml") -> Path:
    """Copy the pipeline into `dest`, apply `overrides` to `base` (a params file, e.g. a profile)
    as its params.yaml, init git and DVC, commit."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, dest / name)
    params = yaml.safe_load((ROOT / base).read_text(encoding="utf-8"))
    (dest / "params.yaml").write_text(
        yaml.safe_dump(_merge(params, overrides), allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    (dest / ".gitignore").write_text("/data/\n__pycache__/\n", encoding="utf-8")
    run(["git", "init", "-q"], cwd=dest)
    run(["git", "config", "user.email", "test@example.org"], cwd=dest)
    run(["git", "config", "user.name", "test"], cwd=dest)
    dvc("init", "-q", cwd=dest)
    dvc("config", "core.analytics", "false", cwd=dest)
    run(["git", "add", "-A"], cwd=dest)
    run(["git", "commit", "-q", "-m", "pipeline under test"], cwd=dest)
    return dest
