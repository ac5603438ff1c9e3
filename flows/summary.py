"""Pure builders of the run reports the flows publish as Prefect artifacts (markdown and tables)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from flows.dvc_cli import Outcome

STICKER_COLUMNS = ("prompt", "score", "path")
# Field names the sticker manifest may use for each column, in order of preference.
_STICKER_FIELDS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "caption", "text"),
    "score": ("score", "confidence", "mask_confidence"),
    "path": ("path", "file", "image", "sticker"),
}


@dataclass(frozen=True)
class StageResult:
    stage: str
    outcome: Outcome
    seconds: float


@dataclass(frozen=True)
class CellRun:
    """One grid cell of a fanned-out sweep as its flow run ended."""

    stage: str
    state: str
    seconds: float


@dataclass(frozen=True)
class DvcReport:
    """What DVC itself says about the workspace after a run, each piece already markdown."""

    dag: str
    metrics_diff: str
    params_diff: str


def stage_table(results: Sequence[StageResult]) -> str:
    lines = ["| stage | outcome | seconds |", "|---|---|---:|"]
    lines += [f"| `{r.stage}` | {r.outcome} | {r.seconds:.1f} |" for r in results]
    return "\n".join(lines)


def outcome_counts(results: Sequence[StageResult]) -> str:
    """`2 ran, 5 skipped` in a fixed order, so summaries of different runs read alike."""
    counts = Counter(r.outcome for r in results)
    order: tuple[Outcome, ...] = ("ran", "restored", "skipped", "failed", "not run")
    return ", ".join(f"{counts[o]} {o}" for o in order if counts[o]) or "no stages"


def has_rows(markdown_table: str) -> bool:
    """False for DVC's header-only tables (`dvc metrics diff --md` with nothing changed)."""
    return sum(1 for line in markdown_table.splitlines() if line.lstrip().startswith("|")) > 2


def _section(title: str, body: str, empty: str) -> str:
    body = body.strip()
    if body.startswith("|") and not has_rows(body):
        body = ""
    return f"## {title}\n\n{body or empty}\n"


def pipeline_summary(
    *,
    repo: str,
    results: Sequence[StageResult],
    report: DvcReport,
    refresh_scrape: bool,
    used_remote: bool,
) -> str:
    header = [
        "# emojich pipeline run",
        "",
        f"- repository: `{repo}`",
        f"- stages: {outcome_counts(results)}",
        f"- scrape forced: {'yes' if refresh_scrape else 'no'}",
        f"- DVC remote (each stage pulls its inputs, pushes its outputs): {'yes' if used_remote else 'no'}",
        "",
        "`dvc.lock` is the record of this run: commit it to keep the result.",
        "",
    ]
    parts = [
        "\n".join(header),
        _section("Stages", stage_table(results), "No stages in dvc.yaml."),
        _section("Metrics changed since HEAD (`dvc metrics diff HEAD`)", report.metrics_diff, "No changes."),
        _section("Params changed since HEAD (`dvc params diff HEAD`)", report.params_diff, "No changes."),
        _section("Pipeline (`dvc dag --md`)", report.dag, "No stages."),
    ]
    return "\n".join(parts)


def _pick(entry: Mapping[str, Any], column: str) -> Any:
    for field in _STICKER_FIELDS[column]:
        if field in entry:
            return entry[field]
    return None


def sticker_rows(manifest: Any) -> list[dict[str, Any]]:
    """Rows of (prompt, score, path) from the sticker pack manifest.

    Accepts a list of entries or a mapping holding one under `stickers`/`items`, and a few field spellings,
    so the report does not break on a cosmetic change of the manifest.
    """
    entries: Any = manifest
    if isinstance(manifest, Mapping):
        entries = next((manifest[k] for k in ("stickers", "items", "entries") if k in manifest), [])
    if not isinstance(entries, list):
        return []
    rows = []
    for entry in entries:
        if isinstance(entry, Mapping):
            rows.append({column: _pick(entry, column) for column in STICKER_COLUMNS})
    return rows


def empty_sticker_table() -> dict[str, list[Any]]:
    # Column-oriented with no rows: the UI still shows the header, so an empty pack reads as "none yet".
    return {column: [] for column in STICKER_COLUMNS}


def sweep_summary(
    *,
    repo: str,
    night: date,
    param: str,
    seeds: Sequence[int],
    experiment: str,
    status: str,
    experiments_table: str,
) -> str:
    lines = [
        "# emojich generation sweep",
        "",
        f"- repository: `{repo}`",
        f"- night: {night.isoformat()}",
        f"- experiment: `{experiment}` ({status})",
        f"- `{param}` = {list(seeds)}",
        "",
        f"Keep it with `dvc exp apply {experiment}` (or `dvc exp branch {experiment} BRANCH`), "
        f"share it with `dvc exp push origin {experiment}`.",
        "",
    ]
    return "\n".join(lines) + "\n" + _section("Experiments (`dvc exp show --md`)", experiments_table, "None.")


def fan_out_summary(*, repo: str, param: str, seeds: Sequence[int], cells: Sequence[CellRun]) -> str:
    lines = [
        "# emojich generation sweep, one flow run per cell",
        "",
        f"- repository: `{repo}`",
        f"- `{param}` = {list(seeds)}",
        "",
        "| cell | state | seconds |",
        "|---|---|---:|",
        *(f"| `{cell.stage}` | {cell.state} | {cell.seconds:.1f} |" for cell in cells),
        "",
        "The cells' outputs are in the DVC remote; the rest of the pipeline runs in this clone next.",
    ]
    return "\n".join(lines) + "\n"
