"""A real Prefect server, workers and a deployable copy of the project, for the orchestration tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

from tests.pipeline import ROOT, make_pipeline_repo, run

BIN = Path(sys.executable).parent
# The temporary server needs ~15 s on 2 cores; allow plenty for a loaded CI machine.
SERVER_START_TIMEOUT_S = 90


def add_flows(repo: Path) -> Path:
    """Copy the flows and prefect.yaml into `repo` and commit them: a worker imports the flow from there."""
    shutil.copytree(ROOT / "flows", repo / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "prefect.yaml", repo / "prefect.yaml")
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "commit", "-q", "-m", "flows"], cwd=repo)
    return repo


def make_flow_repo(dest: Path, overrides: dict[str, Any]) -> Path:
    return add_flows(make_pipeline_repo(dest, overrides))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prefect_env(home: Path, api_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_CLI_PROMPT="false",
        DVC_NO_ANALYTICS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def spawn(args: list[str], *, cwd: Path, env: dict[str, str], log: IO[str]) -> subprocess.Popen[str]:
    # A session of its own, so `stop` can end the process and everything it started (flow-run children).
    return subprocess.Popen(
        args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def stop(process: subprocess.Popen[str], grace_s: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it (flow-run children outlive workers)."""
    gone = (ProcessLookupError, PermissionError)
    if process.poll() is None:
        with contextlib.suppress(*gone):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
    with contextlib.suppress(*gone):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)


def wait_healthy(
    api_url: str, process: subprocess.Popen[str], timeout_s: float = SERVER_START_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server at {api_url} not healthy after {timeout_s} s")


def prefect(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN / "prefect"), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


TOY_DVC_YAML = """\
stages:
  scrape:
    cmd: python -c "import yaml; print(yaml.safe_load(open('params.yaml'))['scrape'])" > raw.txt
    params:
      - scrape
    outs:
      - raw.txt
  generate:
    matrix:
      seed: ${generate.seeds}
    cmd: cat raw.txt > gen_${item.seed}.txt && echo ${item.seed} >> gen_${item.seed}.txt
    deps:
      - raw.txt
    outs:
      - gen_${item.seed}.txt
"""


def make_toy_repo(dest: Path) -> Path:
    """A two-stage git + DVC repository with a matrix stage over `generate.seeds`: DVC mechanics in seconds."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "dvc.yaml").write_text(TOY_DVC_YAML, encoding="utf-8")
    (dest / "params.yaml").write_text(
        "scrape:\n  source: offline\n  user_agent: emojich-test\n  offline:\n    max_emoji: 8\ngenerate:\n  seeds: [1, 2]\n",
        encoding="utf-8",
    )
    run(["git", "init", "-q"], cwd=dest)
    run(["git", "config", "user.email", "test@example.org"], cwd=dest)
    run(["git", "config", "user.name", "test"], cwd=dest)
    run([str(BIN / "dvc"), "init", "-q"], cwd=dest)
    run(["git", "add", "-A"], cwd=dest)
    run(["git", "commit", "-q", "-m", "toy pipeline"], cwd=dest)
    return dest
