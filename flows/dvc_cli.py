"""The DVC command line as the flows use it: one subprocess per command, plus pure parsers of its output.

Flows drive the pipeline only through these commands, so `dvc.lock` stays the one record of what ran.
Everything here is plain Python without Prefect, which keeps the parsers unit-testable on text samples.
(Not `flows/dvc.py`: Prefect puts an entrypoint's folder on `sys.path`, where that name would hide the
`dvc` package itself from the flow-run process.)
"""

from __future__ import annotations

import heapq
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

Outcome = Literal["ran", "restored", "skipped", "failed", "not run"]

# A second DVC process in the same clone fails fast with one of these instead of waiting.
LOCK_BUSY_MARKERS = ("Unable to acquire lock", "is busy, it is being blocked by")
# What `requests`/`urllib3`/the OS print when a host is unreachable or slow; only meaningful for a web scrape.
NETWORK_MARKERS = (
    "ConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Connection refused",
    "Connection reset by peer",
    "Connection aborted",
    "RemoteDisconnected",
    "timed out",
    "503 Server Error",
    "502 Server Error",
    "429 Client Error",
)


class DvcCommandError(RuntimeError):
    """A DVC command exited non-zero; `output` holds its stdout and stderr for the run log."""

    def __init__(self, command: Sequence[str], returncode: int, output: str) -> None:
        self.command = list(command)
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-30:])
        super().__init__(f"`dvc {' '.join(command)}` exited with {returncode}:\n{tail}")

    def __reduce__(self) -> tuple[type[DvcCommandError], tuple[list[str], int, str]]:
        # Failed states may be pickled (result persistence, process boundaries): rebuild from our fields.
        return type(self), (self.command, self.returncode, self.output)


class DvcLockBusy(DvcCommandError):
    """Another DVC process holds the repository or an output: worth retrying after a pause."""


class ScrapeNetworkError(DvcCommandError):
    """A web scrape lost the network: worth retrying after a pause (its HTTP cache keeps progress)."""


TRANSIENT_ERRORS: tuple[type[DvcCommandError], ...] = (DvcLockBusy, ScrapeNetworkError)


def classify_failure(
    output: str, *, stage: str | None = None, scrape_source: str = "offline"
) -> type[DvcCommandError]:
    """Pick the exception type for a failed DVC command from its output.

    Network errors count as transient only for a web scrape: anywhere else the pipeline is offline by design,
    so a network error there is a bug to see at once, not to retry.
    """
    if any(marker in output for marker in LOCK_BUSY_MARKERS):
        return DvcLockBusy
    if (
        stage is not None
        and base_stage(stage) == "scrape"
        and scrape_source == "web"
        and any(marker in output for marker in NETWORK_MARKERS)
    ):
        return ScrapeNetworkError
    return DvcCommandError


def base_stage(name: str) -> str:
    """`generate@3` -> `generate`; `sub/dvc.yaml:train` -> `train`."""
    return name.rsplit(":", 1)[-1].split("@", 1)[0]


def stage_outcome(output: str, stage: str, *, lock_changed: bool) -> Outcome:
    """Read what `dvc repro --single-item STAGE` did from its log.

    DVC prints one of three lines per stage; the `dvc.lock` comparison decides only if a future DVC rewords them.
    """
    quoted = re.escape(f"'{stage}'")
    if re.search(rf"Running stage {quoted}", output):
        return "ran"
    if re.search(rf"Stage {quoted} is cached - skipping run", output) or re.search(
        rf"Pulling data for .*{quoted}", output
    ):
        return "restored"
    if re.search(rf"Stage {quoted} didn't change, skipping", output):
        return "skipped"
    return "ran" if lock_changed else "skipped"


_DOT_NODE = re.compile(r'^\s*"(?P<name>[^"]+)";\s*$')
_DOT_EDGE = re.compile(r'^\s*"(?P<dep>[^"]+)"\s*->\s*"(?P<stage>[^"]+)";\s*$')


def parse_dag_dot(dot: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Nodes (in dvc.yaml order) and (upstream, downstream) edges from `dvc dag --dot`."""
    nodes: list[str] = []
    edges: list[tuple[str, str]] = []
    for line in dot.splitlines():
        if match := _DOT_EDGE.match(line):
            edges.append((match["dep"], match["stage"]))
        elif match := _DOT_NODE.match(line):
            nodes.append(match["name"])
    for dep, stage in edges:
        for name in (dep, stage):
            if name not in nodes:
                nodes.append(name)
    return nodes, edges


def topological_order(nodes: Sequence[str], edges: Iterable[tuple[str, str]]) -> list[str]:
    """Upstream first; whenever several stages are ready, the one declared first in dvc.yaml goes first.

    The tie-break keeps the run order (and so the run log) the same from one run to the next.
    """
    position = {name: index for index, name in enumerate(nodes)}
    downstream: dict[str, set[str]] = {name: set() for name in nodes}
    for dep, stage in set(edges):
        downstream[dep].add(stage)
    waiting = {name: 0 for name in nodes}
    for stages in downstream.values():
        for stage in stages:
            waiting[stage] += 1
    ready = [(position[name], name) for name in nodes if waiting[name] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for stage in downstream[name]:
            waiting[stage] -= 1
            if waiting[stage] == 0:
                heapq.heappush(ready, (position[stage], stage))
    if len(order) != len(nodes):
        raise ValueError(f"dependency cycle among {sorted(set(nodes) - set(order))}")
    return order


def dvc_executable() -> str:
    """The `dvc` installed beside this interpreter, so a worker uses its own environment's DVC."""
    candidate = Path(sys.executable).with_name("dvc")
    return str(candidate) if candidate.exists() else "dvc"


def dvc_env() -> dict[str, str]:
    # Stage commands in dvc.yaml call `python`: it must be this environment's interpreter, whatever the
    # worker's PATH says.
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass(frozen=True)
class DvcResult:
    args: list[str]
    returncode: int
    output: str


def run_dvc(
    args: Sequence[str],
    cwd: Path,
    *,
    check: bool = True,
    stage: str | None = None,
    scrape_source: str = "offline",
) -> DvcResult:
    """Run `dvc ARGS` in `cwd`; on failure raise the exception type `classify_failure` picks."""
    completed = subprocess.run(
        [dvc_executable(), *args],
        cwd=cwd,
        env=dvc_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    result = DvcResult(list(args), completed.returncode, completed.stdout)
    if check and completed.returncode != 0:
        error_type = classify_failure(completed.stdout, stage=stage, scrape_source=scrape_source)
        raise error_type(args, completed.returncode, completed.stdout)
    return result


def read_lock(root: Path) -> dict[str, Any]:
    """The `stages` mapping of dvc.lock (empty before the first run)."""
    path = root / "dvc.lock"
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return dict(data.get("stages") or {})


def read_param(root: Path, dotted: str, default: Any = None) -> Any:
    """One value of params.yaml by dotted path (`scrape.source`)."""
    path = root / "params.yaml"
    if not path.exists():
        return default
    value: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def has_remote(root: Path) -> bool:
    """Whether the clone has a DVC remote configured (`dvc remote list` prints one line per remote)."""
    return bool(run_dvc(["remote", "list"], root).output.strip())


def overlaps(a: str, b: str) -> bool:
    """Whether two repository paths are the same or one lies inside the other (`data/x` and `data/x/y`)."""
    first, second = PurePosixPath(a), PurePosixPath(b)
    return first == second or first in second.parents or second in first.parents


def upstream_outputs(outputs: Sequence[str], dependencies: Sequence[str]) -> list[str]:
    """The outputs a stage reads: each one equal to, inside or containing one of its dependencies.

    Outputs are what `dvc pull` takes as targets; a dependency may be a folder holding several outputs
    (`data/generated`) or a file inside one, so overlap, not equality, decides.
    """
    return sorted({out for out in outputs if any(overlaps(out, dep) for dep in dependencies)})


def stage_data_dependencies(root: Path, stage: str) -> list[str]:
    """Cached outputs of other stages that `stage` depends on: what must come from the remote before it runs.

    DVC's Python API only reads here (no lock taken, nothing written). `dvc repro --pull` would not do:
    it fetches a stage's own outputs and the run-cache, never the inputs of a stage that has to run.
    """
    from dvc.repo import Repo  # the CLI's own package; imported late, it is slow to load

    with Repo(str(root)) as repo:
        # An absolute dvc.yaml: DVC resolves a bare stage name against the working directory, not `root`.
        (target,) = repo.stage.collect(f"{root / 'dvc.yaml'}:{stage}")
        dependencies = [os.path.relpath(dep.fs_path, root) for dep in target.deps]
        outputs = [
            os.path.relpath(out.fs_path, root)
            for other in repo.index.stages
            if other.addressing != target.addressing
            for out in other.outs
            if out.use_cache
        ]
    return upstream_outputs(outputs, dependencies)


def pull_dependencies(root: Path, stage: str) -> list[str]:
    """`dvc pull` the outputs `stage` reads and the workspace lacks; returns what it pulled.

    Only those: a worker fetches what its task needs. Present ones are left alone (an upstream stage of
    this run just wrote them, and a pull would only cost a DVC start); should one differ from its record,
    `dvc repro` sees the change and runs the stage, as it would on one machine.
    """
    missing = [path for path in stage_data_dependencies(root, stage) if not (root / path).exists()]
    if missing:
        # Never without targets: a bare `dvc pull` fetches the whole workspace.
        run_dvc(["pull", *missing], root, stage=stage)
    return missing


def push_outputs(root: Path, stage: str) -> None:
    """`dvc push` the stage's cached outputs and the run-cache, so other clones restore instead of re-running."""
    run_dvc(["push", "--run-cache", stage], root, stage=stage)


def stage_uncached_files(root: Path, stage: str) -> list[str]:
    """The files of `stage`'s `cache: false` outputs (metrics, timings), as repository paths.

    No DVC remote carries them (DVC leaves them to git), so a distributed run hands them over itself.
    """
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        (target,) = repo.stage.collect(f"{root / 'dvc.yaml'}:{stage}")
        outputs = [Path(out.fs_path) for out in target.outs if not out.use_cache]
    files = []
    for output in outputs:
        found = sorted(p for p in output.rglob("*") if p.is_file()) if output.is_dir() else [output]
        files += [str(path.relative_to(root)) for path in found if path.exists()]
    return files


def merge_lock_entries(root: Path, entries: dict[str, Any]) -> None:
    """Add stages' `dvc.lock` entries recorded in other clones to this clone's `dvc.lock`.

    DVC has no command that imports another clone's record of a stage; the entries are DVC's own text,
    copied verbatim, so DVC then sees those stages as up to date and restores their outputs from the remote.
    ruamel keeps the rest of the file as DVC wrote it; the file is replaced atomically.
    """
    from ruamel.yaml import YAML

    yaml_rt = YAML()
    path = root / "dvc.lock"
    data = yaml_rt.load(path.read_text(encoding="utf-8")) if path.exists() else None
    if not data:
        data = {"schema": "2.0", "stages": {}}
    data.setdefault("stages", {})
    for name, entry in entries.items():
        data["stages"][name] = entry
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("w", encoding="utf-8") as stream:
        yaml_rt.dump(data, stream)
    os.replace(temp, path)
