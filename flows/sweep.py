"""Flow `emojich-sweep`: the nightly generation sweep with new seeds, on one machine or fanned out.

On one machine, `dvc exp run --queue -S generate.grid.seed=[...]` records the sweep as an experiment
(params, metrics and outputs under one name) without touching the workspace; `dvc queue start` runs it in
its own temporary workspace, and DVC's run-cache restores every stage upstream of `generate`.

With `fan_out_cells`, each grid cell (`generate@...`) becomes its own flow run of the `emojich-sweep-cell/cell`
deployment, so every worker of the pool, each in its own clone, takes cells in parallel: a cell pulls its
inputs from the shared DVC remote, runs, and pushes its outputs. The sweep's own clone then runs the rest
of the pipeline against the remote, restoring the cells instead of recomputing them.

Seeds come from the night's date, so each night samples differently and any night can be re-run exactly.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from flows.dvc_cli import (
    base_stage,
    has_remote,
    merge_lock_entries,
    read_lock,
    read_param,
    run_dvc,
    stage_uncached_files,
)
from flows.params import set_param
from flows.pipeline import emojich_pipeline, list_stages, repro_stage
from flows.repository import dvc_task, repository_slot, resolve_repo
from flows.summary import CellRun, StageResult, fan_out_summary, sweep_summary

# The deployments' schedules are in Moscow time: a run at 02:00 belongs to that Moscow date, which in UTC
# is still the day before.
SCHEDULE_TIMEZONE = ZoneInfo("Europe/Moscow")
SEED_SPACE = 2**31  # fits every RNG the stages seed (torch, numpy, random)
QUEUE_FINAL = ("Success", "Failed")
QUEUE_STATES = ("Queued", "Running", *QUEUE_FINAL)
CELL_DEPLOYMENT = "emojich-sweep-cell/cell"  # as in prefect.yaml


def night_of(moment: datetime, tz: ZoneInfo = SCHEDULE_TIMEZONE) -> date:
    """The calendar date of `moment` in the schedule's time zone (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo("UTC"))
    return moment.astimezone(tz).date()


def derive_seeds(night: date, count: int, salt: str = "emojich-sweep") -> list[int]:
    """`count` distinct seeds that depend only on the date: stable for re-runs, new every night."""
    if count < 1:
        raise ValueError(f"seed count must be positive, got {count}")
    seeds: list[int] = []
    index = 0
    while len(seeds) < count:
        digest = hashlib.sha256(f"{salt}:{night.isoformat()}:{index}".encode()).digest()
        seed = int.from_bytes(digest[:8], "big") % SEED_SPACE
        if seed not in seeds:
            seeds.append(seed)
        index += 1
    return seeds


def experiment_name(night: date, run_id: str | None) -> str:
    # DVC refuses a second experiment with the same name; the run id keeps a same-night re-run distinct
    # while the date keeps names sortable.
    suffix = re.sub(r"[^a-z0-9]", "", (run_id or "manual").lower())[:8] or "manual"
    return f"sweep-{night:%Y%m%d}-{suffix}"


def queue_command(param: str, seeds: Sequence[int], name: str) -> list[str]:
    """`dvc exp run --queue` arguments; the value is a YAML flow list, as `-S` parses it."""
    return ["exp", "run", "--queue", "--name", name, "-S", f"{param}=[{','.join(str(s) for s in seeds)}]"]


def queue_state(status_output: str, name: str) -> str | None:
    """State of experiment `name` in `dvc queue status` output (a table: Task, Name, Created, Status)."""
    for line in status_output.splitlines():
        fields = re.split(r"\s{2,}", line.strip())
        if len(fields) >= 2 and fields[1] == name:
            return next((f for f in reversed(fields) if f in QUEUE_STATES), None)
    return None


@dvc_task
def queue_experiment(root: Path, param: str, seeds: list[int], name: str) -> None:
    run_dvc(queue_command(param, seeds, name), root)


def wait_for_experiment(root: Path, name: str, poll_s: float) -> str:
    """Block until experiment `name` leaves the queue; returns `Success` or `Failed`.

    DVC's queue workers run in the background and stop once the queue is empty, so the status table is
    the thing to watch.
    """
    while (state := queue_state(run_dvc(["queue", "status"], root).output, name)) not in QUEUE_FINAL:
        if state is None:
            raise RuntimeError(f"experiment {name} is not in `dvc queue status`")
        time.sleep(poll_s)
    return state


@dvc_task
def run_queue(root: Path, name: str, jobs: int, poll_s: float) -> tuple[str, str]:
    """Start DVC's queue workers and wait for experiment `name`; returns its final state and log."""
    run_dvc(["queue", "start", "--jobs", str(jobs)], root)
    state = wait_for_experiment(root, name, poll_s)
    logs = run_dvc(["queue", "logs", name], root, check=False).output.strip()
    get_run_logger().info("experiment %s: %s\n%s", name, state, logs)
    return state, logs


@task(cache_policy=NO_CACHE)
def show_experiments(root: Path) -> str:
    result = run_dvc(["exp", "show", "--md", "--only-changed", "--no-pager"], root, check=False)
    return result.output if result.returncode == 0 else f"```\n{result.output.strip()}\n```"


def cell_stages(stages: Sequence[str], stage: str) -> list[str]:
    """The grid cells among `stages`: the matrix entries of `stage` (`generate@8-0.995-1.0-42`, ...)."""
    return [name for name in stages if base_stage(name) == stage and "@" in name]


@task(cache_policy=NO_CACHE)
def set_sweep_param(root: Path, param: str, values: list[Any]) -> bool:
    return set_param(root, param, values)


@task(cache_policy=NO_CACHE)
def start_cells(stages: list[str], param: str, values: list[Any], deployment: str) -> list[UUID]:
    """One flow run of the cell deployment per grid cell; returns at once, the pool's workers pick them up."""
    ids = []
    for stage in stages:
        run = run_deployment(
            deployment,
            parameters={"stage": stage, "param": param, "values": values},
            flow_run_name=stage,
            timeout=0,
            # A retried sweep finds the cells it already started instead of starting them twice.
            idempotency_key=f"{flow_run.id}:{stage}",
        )
        ids.append(run.id)
    return ids


def wait_for_runs(ids: Sequence[UUID], poll_s: float) -> list[FlowRun]:
    """Block until every flow run is in a final state (completed, failed, crashed or cancelled)."""
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(run_id) for run_id in ids]
            if all(run.state is not None and run.state.is_final() for run in runs):
                return runs
            time.sleep(poll_s)


def cell_record(root: Path, stage: str) -> dict[str, Any]:
    """What a cell hands back to the sweep: its `dvc.lock` entry and its `cache: false` files.

    Its cached outputs are already in the DVC remote; these two are not, since DVC leaves them to git
    (and they keep DVC's run-cache from restoring the cell elsewhere), so they travel as the cell's result.
    """
    files = {
        path: base64.b64encode((root / path).read_bytes()).decode("ascii")
        for path in stage_uncached_files(root, stage)
    }
    return {"stage": stage, "lock": read_lock(root)[stage], "files": files}


def inside(root: Path, relative: str) -> Path:
    """`root / relative`, refusing paths that would leave the clone (a record is data from elsewhere)."""
    path = (root / relative).resolve()
    if root.resolve() not in path.parents:
        raise ValueError(f"cell record names a path outside {root}: {relative}")
    return path


@task(cache_policy=NO_CACHE)
def adopt_cells(root: Path, records: list[dict[str, Any]]) -> None:
    """Write the cells' uncached files and `dvc.lock` entries here; their cached outputs stay in the remote."""
    for record in records:
        for relative, encoded in record["files"].items():
            path = inside(root, relative)
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.with_name(f".{path.name}.tmp")
            temp.write_bytes(base64.b64decode(encoded))
            os.replace(temp, path)
    merge_lock_entries(root, {record["stage"]: record["lock"] for record in records})


def cell_run(run: FlowRun) -> CellRun:
    seconds = (run.end_time - run.start_time).total_seconds() if run.start_time and run.end_time else 0.0
    state = run.state.name if run.state is not None else "Unknown"
    return CellRun(stage=run.name, state=state, seconds=round(seconds, 1))


def fan_out(
    root: Path, param: str, seeds: list[int], stage: str, deployment: str, poll_s: float
) -> list[StageResult]:
    """Run the grid cells on the pool's workers, then the rest of the pipeline here; see the module doc."""
    logger = get_run_logger()
    if not has_remote(root):
        raise ValueError(f"fan_out_cells needs a DVC remote shared by the workers, and {root} has none")
    # The clone's slot covers the params edit only: cells may land on a worker in this very clone, and
    # would wait forever for a slot the sweep held while waiting for them.
    with repository_slot(root):
        set_sweep_param(root, param, seeds)
        cells = cell_stages(list_stages(root), stage)
    if not cells:
        raise ValueError(f"dvc.yaml has no matrix stage `{stage}`: nothing to fan out in {root}")
    logger.info("%d cells to %s: %s", len(cells), deployment, ", ".join(cells))
    finished = wait_for_runs(start_cells(cells, param, seeds, deployment), poll_s)
    runs = [cell_run(run) for run in finished]
    create_markdown_artifact(
        fan_out_summary(repo=str(root), param=param, seeds=seeds, cells=runs),
        key="emojich-sweep-cells",
        description=f"{len(cells)} cells of {param} = {seeds}",
    )
    failed = [run for run in runs if run.state != "Completed"]
    if failed:
        raise RuntimeError("cells did not complete: " + ", ".join(f"{r.stage} ({r.state})" for r in failed))
    with repository_slot(root):
        adopt_cells(root, [run.state.result() for run in finished if run.state is not None])
    # Everything upstream and every cell is restored from the remote; what depends on all cells runs here.
    return emojich_pipeline(repo=str(root), use_remote=True)


@flow(name="emojich-sweep")
def emojich_sweep(
    repo: str | None = None,
    seed_count: int = 4,
    param: str = "generate.grid.seed",
    night: date | None = None,
    jobs: int = 1,
    poll_s: float = 30.0,
    fan_out_cells: bool = False,
    cell_stage: str = "generate",
    cell_deployment: str = CELL_DEPLOYMENT,
) -> str:
    """Sweep the night's seeds; returns the sweep's name (the experiment's, on one machine).

    Args:
        repo: the clone to run in; default the working directory (a deployment's pull step sets it).
        seed_count: how many seeds the night samples.
        param: the params.yaml key that holds the seed list.
        night: the date the seeds derive from; default the scheduled date in Moscow time.
        jobs: DVC queue workers to start.
        poll_s: seconds between checks of the queue (or of the cells' flow runs).
        fan_out_cells: run each cell of `cell_stage`'s grid as a flow run of `cell_deployment` on the pool's
            workers, sharing the clone's DVC remote, instead of a local experiment. The night's params and
            the resulting `dvc.lock` are then left in this clone's workspace: commit them to keep them.
        cell_stage: the matrix stage whose entries are the cells.
        cell_deployment: the deployment that runs one cell (`emojich_sweep_cell`).
    """
    root = resolve_repo(repo)
    logger = get_run_logger()
    if read_param(root, param) is None:
        raise ValueError(f"params.yaml has no `{param}`: nothing to sweep in {root}")
    night = night or night_of(flow_run.scheduled_start_time or datetime.now(tz=SCHEDULE_TIMEZONE))
    seeds = derive_seeds(night, seed_count)
    name = experiment_name(night, flow_run.id)
    if fan_out_cells:
        logger.info("night %s: %s = %s as %s, one flow run per cell", night, param, seeds, name)
        fan_out(root, param, seeds, cell_stage, cell_deployment, poll_s)
        return name
    logger.info("night %s: %s = %s as experiment %s", night, param, seeds, name)
    with repository_slot(root):
        queue_experiment(root, param, seeds, name)
        state, logs = run_queue(root, name, jobs, poll_s)
        table = show_experiments(root)
    create_markdown_artifact(
        sweep_summary(
            repo=str(root),
            night=night,
            param=param,
            seeds=seeds,
            experiment=name,
            status=state,
            experiments_table=table,
        ),
        key="emojich-sweep-summary",
        description=f"{name} ({state}): {param} = {seeds}",
    )
    if state != "Success":
        tail = "\n".join(logs.splitlines()[-30:])
        raise RuntimeError(f"experiment {name} {state.lower()}:\n{tail}")
    return name


# The result (see `cell_record`) is read by the sweep in another process, maybe on another machine: it is
# persisted as JSON to Prefect's result storage, which the machines must share (see the README).
@flow(name="emojich-sweep-cell", flow_run_name="{stage}", persist_result=True, result_serializer="json")
def emojich_sweep_cell(stage: str, param: str, values: list[Any], repo: str | None = None) -> dict[str, Any]:
    """One grid cell of a fanned-out sweep, in this worker's clone.

    Sets `param` to the sweep's `values` (so DVC expands the same cells here), pulls the cell's inputs from
    the DVC remote, runs the cell and pushes its outputs. Upstream stages are never run: their outputs come
    from the remote, as recorded in the clone's committed `dvc.lock`. Returns the cell's record.
    """
    root = resolve_repo(repo)
    if not has_remote(root):
        raise ValueError(f"{root} has no DVC remote: a cell's inputs and outputs travel through one")
    with repository_slot(root):
        set_sweep_param(root, param, values)
        repro_stage(root, stage, remote=True)
        return cell_record(root, stage)


if __name__ == "__main__":
    emojich_sweep()
