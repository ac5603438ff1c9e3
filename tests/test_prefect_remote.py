"""Several machines end to end: a real Prefect server on 127.0.0.1, two process workers in two clones that
share one local-directory DVC remote, and a two-cell nightly sweep fanned out over them.

The upstream stages run once in the origin clone and are pushed; the workers only pull them. A third clone
then gets every output from the remote alone.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun

from tests.orchestration import (
    BIN,
    free_port,
    make_flow_repo,
    prefect,
    prefect_env,
    spawn,
    stop,
    wait_healthy,
)
from tests.pipeline import _merge, dvc, run
from tests.smoke import SMOKE

pytestmark = pytest.mark.slow

POOL = "emojich"  # as in prefect.yaml
# Smoke size cut further (8 emoji in one style, no super-resolution, two prompts, one attempt, one thread
# per stage so the two cells do not fight over the cores), with one top_k: a two-seed night is two cells.
PARAMS = _merge(
    SMOKE,
    {
        "scrape": {"offline": {"max_emoji": 8, "styles": ["twemoji"]}},
        "upscale": {"sr_max_side": 16, "threads": 1},
        "finetune": {"train": {"max_steps": 2}, "eval": {"prompts": ["кошка"], "images_per_prompt": 1}},
        "generate": {
            "prompts": "prompts/sweep-test.txt",
            "attempts": 1,
            "threads": 1,
            "grid": {"top_k": [8]},
        },
    },
)
PROMPTS = "кошка улыбается\nЭйнштейн в очках\n"
NIGHT = date(2026, 1, 6)
SWEEP_TIMEOUT_S = 300


def commit_uncached_outputs(repo: Path, message: str) -> None:
    """Commit params, dvc.lock and the `cache: false` outputs (metrics, plots): DVC expects git to carry
    those, while everything cached travels through the remote."""
    with Repo(str(repo)) as dvc_repo:
        uncached = [
            str(Path(out.fs_path).relative_to(repo))
            for stage in dvc_repo.index.stages
            for out in stage.outs
            if not out.use_cache and Path(out.fs_path).exists()
        ]
    run(["git", "add", "params.yaml", "dvc.lock"], cwd=repo)
    if uncached:
        run(["git", "add", "-f", *uncached], cwd=repo)
    run(["git", "commit", "-q", "-m", message], cwd=repo)


def clone(source: Path, dest: Path) -> Path:
    run(["git", "clone", "-q", str(source), str(dest)], cwd=source.parent)
    return dest


@dataclass
class Sweep:
    origin: Path
    workers: list[Path]
    coordinator: Path
    client: SyncPrefectClient
    logs: list[Path]
    result: subprocess.CompletedProcess[str]
    wall_s: float

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(
            f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            for path in self.logs
        )

    def flow_runs(self, flow_name: str) -> list[FlowRun]:
        return self.client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))


def start_sweep_command() -> list[str]:
    # The sweep itself runs where a user (or cron) starts it, here the coordinator clone: the workers,
    # each limited to one run, are left free for the cells.
    code = (
        "import datetime; from flows.sweep import emojich_sweep; "
        f"emojich_sweep(seed_count=2, night=datetime.date.fromisoformat('{NIGHT.isoformat()}'), "
        "fan_out_cells=True, poll_s=1)"
    )
    return [sys.executable, "-c", code]


@contextmanager
def swept(base: Path, worker_count: int = 2) -> Iterator[Sweep]:
    """Server, origin with upstream pushed, `worker_count` workers in their own clones, then the sweep."""
    home = base / "prefect-home"
    home.mkdir()
    api_url = f"http://127.0.0.1:{free_port()}/api"
    env = prefect_env(home, api_url, PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false")
    processes: list[subprocess.Popen[str]] = []
    logs: list[Path] = []

    def start(name: str, args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> None:
        logs.append(base / f"{name}.log")
        with logs[-1].open("w") as log:
            processes.append(spawn(args, cwd=cwd, env={**env, **(extra_env or {})}, log=log))

    try:
        port = api_url.rsplit(":", 1)[1].split("/")[0]
        start(
            "server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port], base
        )
        # While the server boots: the upstream stages run once, in the origin, and go to the remote.
        origin = make_flow_repo(base / "origin", PARAMS)
        (origin / PARAMS["generate"]["prompts"]).write_text(PROMPTS, encoding="utf-8")
        dvc("remote", "add", "-d", "shared", str(base / "remote"), cwd=origin)
        run(["git", "add", "-A"], cwd=origin)
        run(["git", "commit", "-q", "-m", "shared DVC remote, test prompts"], cwd=origin)
        dvc("repro", "finetune", cwd=origin)
        dvc("push", cwd=origin)
        commit_uncached_outputs(origin, "upstream stages")
        workers = [clone(origin, base / f"worker-{index}") for index in range(worker_count)]
        coordinator = clone(origin, base / "coordinator")
        wait_healthy(api_url, processes[0])
        prefect("work-pool", "create", POOL, "--type", "process", cwd=origin, env=env)
        prefect("deploy", "--all", cwd=origin, env=env)
        for index, worker in enumerate(workers):
            worker_args = ["worker", "start", "--pool", POOL, "--limit", "1", "--name", f"w{index}"]
            start(
                f"worker-{index}",
                [str(BIN / "prefect"), *worker_args],
                base,
                {"EMOJICH_REPO": str(worker), "PREFECT_WORKER_QUERY_SECONDS": "1"},
            )
        logs.append(base / "sweep.log")
        started = time.monotonic()
        with logs[-1].open("w") as log:
            result = subprocess.run(
                start_sweep_command(),
                cwd=coordinator,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=SWEEP_TIMEOUT_S,
                check=False,
            )
        wall_s = time.monotonic() - started
        with SyncPrefectClient(api_url) as client:
            yield Sweep(origin, workers, coordinator, client, logs, result, wall_s)
    finally:
        for process in reversed(processes):
            stop(process, grace_s=10)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sweep]:
    with swept(tmp_path_factory.mktemp("prefect-remote")) as stack:
        yield stack


def cells_in_lock(repo: Path) -> list[str]:
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return sorted(name for name in stages if name.startswith("generate@"))


def outcomes(markdown: str) -> dict[str, str]:
    return dict(re.findall(r"^\| `([^`]+)` \| ([a-z ]+) \|", markdown, flags=re.MULTILINE))


def test_the_sweep_completes(sweep: Sweep):
    print(f"two-worker sweep: {sweep.wall_s:.1f} s")
    assert sweep.result.returncode == 0, sweep.log_tail()


def test_each_worker_runs_one_cell_at_the_same_time(sweep: Sweep):
    cells = sweep.flow_runs("emojich-sweep-cell")
    assert len(cells) == 2 and all(run.state and run.state.is_completed() for run in cells), sweep.log_tail()
    # Each worker's clone records exactly the cell it ran, and between them they ran both.
    per_worker = [cells_in_lock(worker) for worker in sweep.workers]
    assert [len(names) for names in per_worker] == [1, 1], per_worker
    assert sorted(per_worker[0] + per_worker[1]) == sorted(run.name for run in cells)
    first, second = sorted(cells, key=lambda run: run.start_time)
    assert first.end_time and second.start_time and second.start_time < first.end_time, (
        f"cells ran one after the other: {first.start_time}-{first.end_time}, {second.start_time}-{second.end_time}"
    )


def test_workers_pull_upstream_instead_of_recomputing_it(sweep: Sweep):
    for worker in sweep.workers:
        # Only the cell's own inputs came down: no scraped or prepared images, no training codes.
        data = worker / "data"
        assert not any(
            (data / path).exists() for path in ("raw/images", "prepared/images", "tokens/codes.safetensors")
        )
        assert (data / "finetune" / "model.safetensors").exists() and (data / "tokens" / "bpe.json").exists()
    (pipeline,) = sweep.flow_runs("emojich-pipeline")
    artifacts = sweep.client.read_artifacts(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[pipeline.id]))
    )
    (report,) = [artifact for artifact in artifacts if artifact.key == "emojich-pipeline-summary"]
    seen = outcomes(str(report.data))
    upstream = ["scrape", "prepare", "upscale", "tokenize", "finetune"]
    # The coordinator restores everything the origin and the workers ran and runs only what needs all cells.
    assert {stage: seen[stage] for stage in upstream} == {stage: "restored" for stage in upstream}
    assert [seen[cell] for cell in cells_in_lock(sweep.coordinator)] == ["restored", "restored"]
    assert seen["segment"] == "ran" and seen["stickers"] == "ran"


def test_a_third_clone_pulls_every_output_and_is_up_to_date(sweep: Sweep, tmp_path: Path):
    coordinator = sweep.coordinator
    night_seeds = yaml.safe_load((coordinator / "params.yaml").read_text())["generate"]["grid"]["seed"]
    assert len(night_seeds) == 2 and len(cells_in_lock(coordinator)) == 2
    commit_uncached_outputs(coordinator, "the night's sweep")
    third = clone(coordinator, tmp_path / "third")
    dvc("pull", cwd=third)
    lock = yaml.safe_load((third / "dvc.lock").read_text())["stages"]
    outputs = [out["path"] for entry in lock.values() for out in entry["outs"]]
    missing = [path for path in outputs if not (third / path).exists()]
    assert not missing and (third / "data" / "stickers" / "pack" / "manifest.json").exists(), missing
    assert any(path.startswith("data/generated/") for path in outputs)
    status = json.loads(dvc("status", "--json", cwd=third).stdout)
    # No output is `persist`ent, so nothing is any clone's own: the pulled clone is wholly up to date.
    assert status == {}, status
