"""Flow `emojich-sweep`: the nightly generation sweep as a queued DVC experiment with new seeds.

`dvc exp run --queue -S generate.grid.seed=[...]` records the sweep as an experiment (params, metrics and
outputs under one name) without touching the workspace; `dvc queue start` runs it in its own temporary
workspace, and DVC's run-cache restores every stage upstream of `generate` instead of recomputing it.

Seeds come from the night's date, so each night samples differently and any night can be re-run exactly.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.dvc import read_param, run_dvc
from flows.repository import dvc_task, repository_slot, resolve_repo
from flows.summary import sweep_summary

# The deployments' schedules are in Moscow time: a run at 02:00 belongs to that Moscow date, which in UTC
# is still the day before.
SCHEDULE_TIMEZONE = ZoneInfo("Europe/Moscow")
SEED_SPACE = 2**31  # fits every RNG the stages seed (torch, numpy, random)
QUEUE_FINAL = ("Success", "Failed")
QUEUE_STATES = ("Queued", "Running", *QUEUE_FINAL)


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


@flow(name="emojich-sweep")
def emojich_sweep(
    repo: str | None = None,
    seed_count: int = 4,
    param: str = "generate.grid.seed",
    night: date | None = None,
    jobs: int = 1,
    poll_s: float = 30.0,
) -> str:
    """Queue one experiment with the night's seeds, run it, report it; returns the experiment's name.

    Args:
        repo: the clone to run in; default the working directory (a deployment's pull step sets it).
        seed_count: how many seeds the night samples.
        param: the params.yaml key that holds the seed list.
        night: the date the seeds derive from; default the scheduled date in Moscow time.
        jobs: DVC queue workers to start.
        poll_s: seconds between `dvc queue status` checks.
    """
    root = resolve_repo(repo)
    logger = get_run_logger()
    if read_param(root, param) is None:
        raise ValueError(f"params.yaml has no `{param}`: nothing to sweep in {root}")
    night = night or night_of(flow_run.scheduled_start_time or datetime.now(tz=SCHEDULE_TIMEZONE))
    seeds = derive_seeds(night, seed_count)
    name = experiment_name(night, flow_run.id)
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


if __name__ == "__main__":
    emojich_sweep()
