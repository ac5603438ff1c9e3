"""The deployments end to end: a real Prefect server on 127.0.0.1, `prefect deploy --all`, two process
workers on one pool, and the pipeline flow run on smoke-size params in a throw-away clone.

The tests share one server and clone and run in file order: first run, re-run, concurrent runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, TaskRun

from flows.repository import slot_name
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
from tests.pipeline import _merge, dvc
from tests.smoke import SMOKE as PIPELINE_SMOKE

pytestmark = pytest.mark.slow

POOL = "emojich"  # as in prefect.yaml
# The project's smoke-size parameters for every stage, with the catalogue cut to 8 emoji.
SMOKE = _merge(PIPELINE_SMOKE, {"scrape": {"offline": {"max_emoji": 8}}})
RUN_TIMEOUT_S = 240


@dataclass
class Stack:
    repo: Path
    client: SyncPrefectClient
    logs: list[Path]

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(
            f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            for path in self.logs
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("prefect-e2e")
    repo = make_flow_repo(base / "repo", SMOKE)
    home = base / "prefect-home"
    home.mkdir()
    api_url = f"http://127.0.0.1:{free_port()}/api"
    # No scheduler service: the weekly and nightly schedules are checked as stored, and must not add runs
    # that would compete with the ones under test.
    env = prefect_env(home, api_url, PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false")
    processes: list[subprocess.Popen[str]] = []
    logs: list[Path] = []

    def start(name: str, args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        logs.append(base / f"{name}.log")
        with logs[-1].open("w") as log:
            process = spawn(args, cwd=base, env={**env, **(extra_env or {})}, log=log)
        processes.append(process)
        return process

    try:
        port = api_url.rsplit(":", 1)[1].split("/")[0]
        server = start(
            "server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port]
        )
        wait_healthy(api_url, server)
        prefect("work-pool", "create", POOL, "--type", "process", cwd=repo, env=env)
        prefect("deploy", "--all", cwd=repo, env=env)
        # Two workers on one pool and one clone: concurrent runs land on different workers and must queue on
        # the clone's concurrency slot.
        for index in range(2):
            start(
                f"worker-{index}",
                [
                    str(BIN / "prefect"),
                    "worker",
                    "start",
                    "--pool",
                    POOL,
                    "--limit",
                    "1",
                    "--name",
                    f"w{index}",
                ],
                {"EMOJICH_REPO": str(repo), "PREFECT_WORKER_QUERY_SECONDS": "1"},
            )
        with SyncPrefectClient(api_url) as client:
            yield Stack(repo, client, logs)
    finally:
        # Workers first: they own the flow-run processes; the server last, so workers can report back.
        for process in reversed(processes):
            stop(process, grace_s=10)


def trigger(stack: Stack, deployment: str = "emojich-pipeline/repro") -> UUID:
    return stack.client.create_flow_run_from_deployment(
        stack.client.read_deployment_by_name(deployment).id
    ).id


def wait_for(stack: Stack, run_id: UUID) -> FlowRun:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = stack.client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            assert run.state.is_completed(), f"{run.name}: {run.state}\n{stack.log_tail()}"
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} not finished after {RUN_TIMEOUT_S} s\n{stack.log_tail()}")


def task_runs(stack: Stack, run_id: UUID) -> list[TaskRun]:
    return stack.client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))


def summary(stack: Stack, run_id: UUID) -> str:
    artifacts = stack.client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    by_key = {artifact.key: artifact for artifact in artifacts}
    assert set(by_key) == {"emojich-pipeline-summary", "emojich-stickers"}
    assert by_key["emojich-stickers"].type == "table"
    return str(by_key["emojich-pipeline-summary"].data)


def outcomes(markdown: str) -> dict[str, str]:
    return dict(re.findall(r"^\| `([^`]+)` \| ([a-z ]+) \|", markdown, flags=re.MULTILINE))


def stage_names(repo: Path) -> list[str]:
    return dvc("stage", "list", "--name-only", cwd=repo).stdout.split()


def test_deployments_are_registered_with_their_schedules(stack: Stack):
    weekly = stack.client.read_deployment_by_name("emojich-pipeline/weekly-refresh")
    nightly = stack.client.read_deployment_by_name("emojich-sweep/nightly")
    repro = stack.client.read_deployment_by_name("emojich-pipeline/repro")
    assert [(s.schedule.cron, s.schedule.timezone) for s in weekly.schedules] == [
        ("0 3 * * 1", "Europe/Moscow")
    ]
    assert [(s.schedule.cron, s.schedule.timezone) for s in nightly.schedules] == [
        ("0 2 * * *", "Europe/Moscow")
    ]
    assert repro.schedules == [] and weekly.parameters == {"refresh_scrape": True}
    assert {d.work_pool_name for d in (weekly, nightly, repro)} == {POOL}
    # The clone is chosen by each worker at run time, not fixed at deploy time.
    assert repro.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $EMOJICH_REPO }}"}}
    ]


def test_first_run_reproduces_every_stage_through_dvc(stack: Stack):
    run = wait_for(stack, trigger(stack))
    stages = stage_names(stack.repo)
    assert outcomes(summary(stack, run.id)) == {stage: "ran" for stage in stages}
    lock = yaml.safe_load((stack.repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(stages)
    assert lock["stages"]["scrape"]["params"]["params.yaml"]["scrape"]["offline"]["max_emoji"] == 8


def test_rerun_skips_everything_and_retries_a_busy_dvc_lock(stack: Stack):
    lock_before = (stack.repo / "dvc.lock").read_bytes()
    first = stage_names(stack.repo)[0]
    out = yaml.safe_load(lock_before)["stages"][first]["outs"][0]["path"]
    # Another DVC process (alive until we end it) holds `first`'s output: the stage must fail as busy, wait,
    # and pass on retry once the holder is gone, which DVC then notices by itself.
    holder = subprocess.Popen(["sleep", "600"])
    threading.Thread(target=holder.wait, daemon=True).start()  # reap it, or DVC sees a live zombie
    rwlock = stack.repo / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(parents=True, exist_ok=True)
    real_out = os.path.realpath(stack.repo / out)
    rwlock.write_text(
        json.dumps({"read": {}, "write": {real_out: {"pid": holder.pid, "cmd": "dvc repro (held)"}}})
    )
    try:
        run_id = trigger(stack)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not any(
            t.name == f"repro-{first}" and t.state and t.state.name == "AwaitingRetry"
            for t in task_runs(stack, run_id)
        ):
            assert time.monotonic() < deadline, f"no retry of repro-{first}\n{stack.log_tail()}"
            time.sleep(1)
    finally:
        holder.kill()
    run = wait_for(stack, run_id)
    assert outcomes(summary(stack, run.id)) == {stage: "skipped" for stage in stage_names(stack.repo)}
    assert (stack.repo / "dvc.lock").read_bytes() == lock_before
    retried = [t for t in task_runs(stack, run.id) if t.name == f"repro-{first}"]
    assert retried and retried[0].run_count == 2


def test_concurrent_runs_take_turns_on_the_clone(stack: Stack):
    params_path = stack.repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    # A real change for `scrape` that leaves its outputs as they were: the first run in re-runs scrape and
    # DVC skips everything downstream, so the test stays short whatever stages the pipeline has.
    params["scrape"]["user_agent"] = "emojich-test/2"
    params_path.write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))

    runs = [trigger(stack), trigger(stack)]
    finished = [wait_for(stack, run_id) for run_id in runs]

    # Both ran, one after the other: the tasks run while holding the slot never overlap across runs.
    turns = []
    for run in finished:
        inside = [t for t in task_runs(stack, run.id) if not t.name.startswith("publish_report")]
        assert inside and all(t.start_time and t.end_time for t in inside)
        span = (min(t.start_time for t in inside), max(t.end_time for t in inside))
        turns.append((span, outcomes(summary(stack, run.id))))
    (first_span, first_in), (second_span, second_in) = sorted(turns, key=lambda turn: turn[0])
    assert first_span[1] <= second_span[0], f"runs overlapped: {first_span} {second_span}"
    assert first_in["scrape"] == "ran" and set(second_in.values()) == {"skipped"}

    lock = yaml.safe_load((stack.repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(stage_names(stack.repo))
    assert lock["stages"]["scrape"]["params"]["params.yaml"]["scrape"]["user_agent"] == "emojich-test/2"
    assert "up to date" in dvc("status", cwd=stack.repo).stdout
    limit = stack.client.read_global_concurrency_limit_by_name(slot_name(stack.repo.resolve()))
    assert limit.limit == 1 and limit.active_slots == 0
