"""Flow `emojich-pipeline`: `dvc repro`, one task per stage of dvc.yaml, with a run report.

Each task runs `dvc repro --single-item STAGE` in upstream-first order, so DVC decides what to run and
`dvc.lock` stays the record; the flow adds retries on transient faults, one-run-per-clone, and artifacts.

    python -m flows.pipeline                    # one run here, against PREFECT_API_URL or a temporary server
    prefect deployment run emojich-pipeline/repro
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.dvc_cli import (
    DvcCommandError,
    base_stage,
    has_remote,
    parse_dag_dot,
    pull_dependencies,
    push_outputs,
    read_lock,
    read_param,
    run_dvc,
    stage_outcome,
    topological_order,
)
from flows.repository import RETRY_DELAYS_S, dvc_task, is_transient, repository_slot, resolve_repo
from flows.summary import (
    DvcReport,
    StageResult,
    empty_sticker_table,
    outcome_counts,
    pipeline_summary,
    sticker_rows,
)

STICKER_MANIFEST = Path("data/stickers/pack/manifest.json")


@dvc_task
def list_stages(root: Path) -> list[str]:
    """Stages of dvc.yaml (matrix entries expanded, e.g. `generate@0`), upstream first."""
    nodes, edges = parse_dag_dot(run_dvc(["dag", "--dot"], root).output)
    return topological_order(nodes, edges)


@task(
    task_run_name="repro-{stage}",
    retries=len(RETRY_DELAYS_S),
    retry_delay_seconds=RETRY_DELAYS_S,
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
def repro_stage(root: Path, stage: str, force: bool = False, remote: bool = False) -> StageResult:
    """`dvc repro --single-item STAGE`: upstream stages already ran (here or elsewhere), so DVC checks just this one.

    With `remote`, the stage is one self-contained step of a distributed run: pull the outputs it reads,
    run it, push what it wrote. A clone on another machine then starts from the remote, not from scratch.
    """
    scrape_source = str(read_param(root, "scrape.source", "offline"))
    if remote:
        pull_dependencies(root, stage)
    args = ["repro", "--single-item", stage]
    if force:
        args.append("--force")
    if remote:
        # DVC restores the stage from the remote's run-cache when another clone already ran it with the
        # same inputs, instead of running it again.
        args.append("--pull")
    before = read_lock(root).get(stage)
    started = time.monotonic()
    result = run_dvc(args, root, stage=stage, scrape_source=scrape_source)
    outcome = stage_outcome(result.output, stage, lock_changed=read_lock(root).get(stage) != before)
    if remote and outcome != "restored":
        # A restored stage came from the remote; a skipped one may have run before the remote was set up.
        push_outputs(root, stage)
    get_run_logger().info("%s: %s\n%s", stage, outcome, result.output.strip())
    return StageResult(stage, outcome, round(time.monotonic() - started, 1))


def _markdown_of(args: list[str], root: Path) -> str:
    # A report is no reason to fail a finished run: without a git commit to diff against, show DVC's words.
    result = run_dvc(args, root, check=False)
    return result.output if result.returncode == 0 else f"```\n{result.output.strip()}\n```"


@dvc_task
def describe_workspace(root: Path) -> DvcReport:
    """What changed against git HEAD, in DVC's own markdown (mermaid for the DAG).

    The three commands only read (none takes DVC's repository lock), so they run side by side: each one's
    start-up costs more than its work.
    """
    commands = {
        "dag": ["dag", "--md"],
        "metrics_diff": ["metrics", "diff", "HEAD", "--md"],
        "params_diff": ["params", "diff", "HEAD", "--md"],
    }
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        futures = {field: pool.submit(_markdown_of, args, root) for field, args in commands.items()}
        return DvcReport(**{field: future.result() for field, future in futures.items()})


@task(cache_policy=NO_CACHE)
def publish_report(
    root: Path, results: list[StageResult], report: DvcReport, refresh_scrape: bool, used_remote: bool
) -> None:
    create_markdown_artifact(
        pipeline_summary(
            repo=str(root),
            results=results,
            report=report,
            refresh_scrape=refresh_scrape,
            used_remote=used_remote,
        ),
        key="emojich-pipeline-summary",
        description=f"emojich pipeline: {outcome_counts(results)}",
    )
    manifest = root / STICKER_MANIFEST
    rows = sticker_rows(json.loads(manifest.read_text(encoding="utf-8"))) if manifest.exists() else []
    if rows:
        create_table_artifact(
            rows, key="emojich-stickers", description=f"{len(rows)} stickers in {STICKER_MANIFEST}"
        )
    else:
        create_table_artifact(
            empty_sticker_table(),
            key="emojich-stickers",
            description=f"No stickers yet: {STICKER_MANIFEST} is missing or empty (the `stickers` stage writes it).",
        )


@flow(name="emojich-pipeline")
def emojich_pipeline(
    repo: str | None = None, refresh_scrape: bool = False, use_remote: bool = False
) -> list[StageResult]:
    """Reproduce the DVC pipeline stage by stage and report what ran.

    Args:
        repo: the clone to run in; default the working directory (a deployment's pull step sets it).
        refresh_scrape: re-run `scrape` even if DVC sees no change (new catalogue entries upstream),
            then let DVC decide about the rest.
        use_remote: for each stage, pull its inputs from the DVC remote, run it (or restore it from the
            remote's run-cache) and push its outputs, so several clones share work. Needs a DVC remote;
            without one it only warns. Off by default: a remote that is configured but unreachable (this
            repository's local default) must not fail a one-machine run.
    """
    root = resolve_repo(repo)
    logger = get_run_logger()
    with repository_slot(root) as slot:
        logger.info("holding concurrency slot %s", slot)
        remote = use_remote and has_remote(root)
        if use_remote and not remote:
            logger.warning("use_remote is set but %s has no DVC remote: running locally only", root)
        stages = list_stages(root)
        results: list[StageResult] = []
        failure: DvcCommandError | None = None
        for stage in stages:
            if failure is not None:
                results.append(StageResult(stage, "not run", 0.0))
                continue
            try:
                force = refresh_scrape and base_stage(stage) == "scrape"
                results.append(repro_stage(root, stage, force=force, remote=remote))
            except DvcCommandError as error:
                # Stop here as `dvc repro` would; the remaining stages are still listed in the report.
                failure = error
                results.append(StageResult(stage, "failed", 0.0))
        report = describe_workspace(root)
    publish_report(root, results, report, refresh_scrape, remote)
    if failure is not None:
        raise failure
    return results


if __name__ == "__main__":
    emojich_pipeline()
