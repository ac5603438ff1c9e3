"""Tasks and guards shared by the flows: which clone to work in, one run per clone, transient-fault retries."""

from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from prefect import Task, get_client, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import TaskRun
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.states import State

from flows.dvc_cli import TRANSIENT_ERRORS

# Pauses between attempts after a transient fault: a busy DVC lock is usually a person's `dvc status`
# (seconds); a flaky network needs longer.
RETRY_DELAYS_S = [10, 30, 90, 180]


def is_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """`retry_condition_fn` for DVC tasks: retry a busy lock or a lost network, fail at once on anything else.

    Prefect calls this with the failed state; its result re-raises the task's exception.
    """
    try:
        state.result()
    except TRANSIENT_ERRORS:
        return True
    except Exception:
        return False
    return False


# Results of these tasks are facts about the workspace at one moment; Prefect must never replay them from a
# cache (DVC's own run-cache is the cache that matters), hence NO_CACHE everywhere.
dvc_task = task(
    retries=len(RETRY_DELAYS_S),
    retry_delay_seconds=RETRY_DELAYS_S,
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)


def resolve_repo(repo: str | None) -> Path:
    """The clone to work in: the `repo` parameter, else the working directory (set by the deployment)."""
    root = Path(repo).expanduser() if repo else Path.cwd()
    root = root.resolve()
    if not (root / "dvc.yaml").exists():
        raise FileNotFoundError(f"{root} has no dvc.yaml: point `repo` (or EMOJICH_REPO) at an emojich clone")
    return root


def slot_name(root: Path, host: str | None = None) -> str:
    """Name of the global concurrency limit guarding one clone.

    Host and resolved path together identify a clone: workers on other machines have their own clones and
    their own slots, so they run in parallel, while two runs in the same clone queue up.
    """
    host = host or socket.gethostname()
    digest = hashlib.sha256(f"{host}:{root}".encode()).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9]+", "-", f"{host}-{root.name}".lower()).strip("-")[:40]
    return f"emojich-repo-{readable}-{digest}"


def ensure_slot(name: str) -> None:
    """Create the one-slot limit if it is missing (Prefect no longer creates limits on first use)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # Another run may create it between our read and create: that is as good.
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextmanager
def repository_slot(root: Path, timeout_s: float | None = None) -> Iterator[str]:
    """Hold the clone's only slot for the body: a second run waits here until the first releases it."""
    name = slot_name(root)
    ensure_slot(name)
    # strict: never run unguarded if the limit vanished. A failed lease renewal (a blip of the API) does not
    # kill a long stage: DVC's own locks still stop a second writer, and the flow retries those.
    with concurrency(
        name, occupy=1, timeout_seconds=timeout_s, strict=True, raise_on_lease_renewal_failure=False
    ):
        yield name
