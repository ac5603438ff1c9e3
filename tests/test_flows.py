import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml
from prefect.states import Completed, Failed

from flows.dvc_cli import (
    DvcCommandError,
    DvcLockBusy,
    ScrapeNetworkError,
    base_stage,
    classify_failure,
    merge_lock_entries,
    overlaps,
    parse_dag_dot,
    run_dvc,
    stage_data_dependencies,
    stage_outcome,
    topological_order,
    upstream_outputs,
)
from flows.params import set_param
from flows.repository import is_transient, slot_name
from flows.summary import (
    CellRun,
    DvcReport,
    StageResult,
    fan_out_summary,
    pipeline_summary,
    sticker_rows,
    sweep_summary,
)
from flows.sweep import (
    cell_stages,
    derive_seeds,
    experiment_name,
    inside,
    night_of,
    queue_command,
    queue_state,
    wait_for_experiment,
)
from tests.orchestration import TOY_DVC_YAML, make_toy_repo
from tests.pipeline import ROOT

DAG_DOT = """\
strict digraph {
"prepare";
"generate@0";
"generate@1";
"scrape";
"lonely";
"scrape" -> "prepare";
"prepare" -> "generate@0";
"prepare" -> "generate@1";
}
"""


def test_dag_dot_parses_nodes_in_declared_order_and_edges():
    nodes, edges = parse_dag_dot(DAG_DOT)
    assert nodes == ["prepare", "generate@0", "generate@1", "scrape", "lonely"]
    assert ("scrape", "prepare") in edges and len(edges) == 3


def test_topological_order_runs_upstream_first_and_breaks_ties_by_declaration():
    assert topological_order(*parse_dag_dot(DAG_DOT)) == [
        "scrape",
        "prepare",
        "generate@0",
        "generate@1",
        "lonely",
    ]


def test_topological_order_rejects_cycles():
    with pytest.raises(ValueError, match="cycle"):
        topological_order(["a", "b"], [("a", "b"), ("b", "a")])


def test_stage_order_comes_from_dvc_with_matrix_stages_expanded(tmp_path):
    (tmp_path / ".dvc").mkdir()  # enough for DVC to treat the folder as a repository without git
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = true\n    analytics = false\n")
    (tmp_path / "dvc.yaml").write_text(TOY_DVC_YAML)
    (tmp_path / "params.yaml").write_text("scrape: {}\ngenerate:\n  seeds: [7, 3]\n")
    nodes, edges = parse_dag_dot(run_dvc(["dag", "--dot"], tmp_path).output)
    assert topological_order(nodes, edges) == ["scrape", "generate@7", "generate@3"]


def test_project_stage_order_starts_with_scrape():
    nodes, edges = parse_dag_dot(run_dvc(["dag", "--dot"], ROOT).output)
    assert topological_order(nodes, edges)[0] == "scrape"


def test_base_stage_strips_matrix_keys_and_dvcfile_paths():
    assert base_stage("generate@3-a") == "generate"
    assert base_stage("sub/dvc.yaml:train@1") == "train"
    assert base_stage("scrape") == "scrape"


RAN = "Running stage 'generate@1':\n> python -m stages.generate\nUpdating lock file 'dvc.lock'\n"
SKIPPED = "Stage 'generate@1' didn't change, skipping\nData and pipelines are up to date.\n"
RESTORED = (
    "Stage 'generate@1' is cached - skipping run, checking out outputs\nUpdating lock file 'dvc.lock'\n"
)


@pytest.mark.parametrize(("output", "expected"), [(RAN, "ran"), (SKIPPED, "skipped"), (RESTORED, "restored")])
def test_stage_outcome_reads_dvc_log_lines(output, expected):
    assert stage_outcome(output, "generate@1", lock_changed=False) == expected


def test_stage_outcome_does_not_confuse_stages_and_falls_back_to_the_lock():
    assert stage_outcome(RAN, "generate@10", lock_changed=False) == "skipped"
    assert stage_outcome("something new\n", "x", lock_changed=True) == "ran"


BUSY = (
    "ERROR: '/repo/data/raw/captions.csv' is busy, it is being blocked by:\n"
    "  (PID 8413): dvc repro -s scrape\n\nIf there are no processes with such PIDs, you can manually remove..."
)
LOCKED = (
    "ERROR: Unable to acquire lock. Most likely another DVC process is running or was terminated abruptly."
)
OFFLINE = (
    "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='emojipedia.org'): Max retries exceeded"
)


def test_failure_classification():
    assert classify_failure(BUSY, stage="prepare") is DvcLockBusy
    assert classify_failure(LOCKED) is DvcLockBusy
    assert classify_failure(OFFLINE, stage="scrape", scrape_source="web") is ScrapeNetworkError
    # Offline by design everywhere else: a network error there is a bug, not a blip.
    assert classify_failure(OFFLINE, stage="scrape", scrape_source="offline") is DvcCommandError
    assert classify_failure(OFFLINE, stage="prepare", scrape_source="web") is DvcCommandError
    assert (
        classify_failure("Traceback ... ValueError: bad param", stage="scrape", scrape_source="web")
        is DvcCommandError
    )


def test_retry_condition_retries_only_transient_faults():
    def failed(error: Exception):
        return Failed(data=error)

    assert is_transient(None, None, failed(DvcLockBusy(["repro"], 255, BUSY)))
    assert is_transient(None, None, failed(ScrapeNetworkError(["repro"], 255, OFFLINE)))
    assert not is_transient(None, None, failed(DvcCommandError(["repro"], 255, "boom")))
    assert not is_transient(None, None, failed(ValueError("bug")))
    assert not is_transient(None, None, Completed())


def test_dvc_errors_keep_the_command_and_output_tail():
    error = DvcCommandError(
        ["repro", "--single-item", "scrape"], 255, "\n".join(f"line {i}" for i in range(100))
    )
    assert (
        "dvc repro --single-item scrape" in str(error)
        and "line 99" in str(error)
        and "line 5\n" not in str(error)
    )


def test_slot_name_is_stable_per_clone_and_api_safe():
    name = slot_name(Path("/srv/Emojich Clone"), host="Worker.Example")
    assert name == slot_name(Path("/srv/Emojich Clone"), host="Worker.Example")
    assert name != slot_name(Path("/srv/other"), host="Worker.Example")
    assert name != slot_name(Path("/srv/Emojich Clone"), host="other")
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


def test_seeds_derive_from_the_night_only():
    night = date(2026, 1, 5)
    seeds = derive_seeds(night, 8)
    assert seeds == derive_seeds(night, 8)
    assert len(set(seeds)) == 8 and all(0 <= s < 2**31 for s in seeds)
    assert derive_seeds(night, 3) == seeds[:3]
    assert set(derive_seeds(date(2026, 1, 6), 8)).isdisjoint(seeds)
    with pytest.raises(ValueError):
        derive_seeds(night, 0)


def test_the_night_is_the_moscow_date_of_the_schedule():
    # 02:00 in Moscow is 23:00 UTC the day before.
    assert night_of(datetime(2026, 1, 5, 23, 0, tzinfo=UTC)) == date(2026, 1, 6)
    assert night_of(datetime(2026, 1, 5, 20, 0)) == date(2026, 1, 5)


def test_sweep_command_and_experiment_name():
    name = experiment_name(date(2026, 1, 6), "0F3A9C1E-77aa-4bb1")
    assert name == "sweep-20260106-0f3a9c1e"
    assert experiment_name(date(2026, 1, 6), None) == "sweep-20260106-manual"
    assert queue_command("generate.grid.seed", [5, 17], name) == [
        "exp",
        "run",
        "--queue",
        "--name",
        name,
        "-S",
        "generate.grid.seed=[5,17]",
    ]


QUEUE_STATUS = """\
Task     Name                     Created    Status
9d5ce84  sweep-20260106-0f3a9c1e  05:10 AM   Running
1a2b3c4  sweep-20260105-manual    Jan 05, 2026 02:00 AM   Failed

Worker status: 1 active, 0 idle
"""


def test_queue_state_reads_the_status_table():
    assert queue_state(QUEUE_STATUS, "sweep-20260106-0f3a9c1e") == "Running"
    assert queue_state(QUEUE_STATUS, "sweep-20260105-manual") == "Failed"
    assert queue_state(QUEUE_STATUS, "sweep-20260107-manual") is None


EMPTY_METRICS = "| Path   | Metric   | HEAD   | workspace   | Change   |\n|--------|----------|--------|-------------|----------|\n"
PARAMS = "| Path | Param | HEAD | workspace |\n|---|---|---|---|\n| params.yaml | scrape.offline.max_emoji | 8 | 6 |\n"


def test_pipeline_summary_lists_each_stage_and_dvc_reports():
    results = [
        StageResult("scrape", "ran", 3.0),
        StageResult("generate@0", "skipped", 0.8),
        StageResult("generate@1", "failed", 0.1),
        StageResult("stickers", "not run", 0.0),
    ]
    markdown = pipeline_summary(
        repo="/srv/emojich",
        results=results,
        report=DvcReport(dag="```mermaid\nflowchart TD\n```", metrics_diff=EMPTY_METRICS, params_diff=PARAMS),
        refresh_scrape=True,
        used_remote=False,
    )
    for result in results:
        assert f"| `{result.stage}` | {result.outcome} |" in markdown
    assert "1 ran, 1 skipped, 1 failed, 1 not run" in markdown
    assert "scrape.offline.max_emoji | 8 | 6" in markdown
    metrics_section = markdown.split("## Metrics")[1].split("##")[0]
    assert "No changes." in metrics_section and "| Path" not in metrics_section
    assert "```mermaid" in markdown


def test_sticker_rows_accept_list_or_mapping_and_field_spellings():
    entries = [
        {"prompt": "кот улыбается", "score": 0.93, "path": "001.png", "seed": 1},
        {"caption": "пёс", "file": "002.png"},
    ]
    assert sticker_rows(entries) == [
        {"prompt": "кот улыбается", "score": 0.93, "path": "001.png"},
        {"prompt": "пёс", "score": None, "path": "002.png"},
    ]
    assert sticker_rows({"stickers": entries[:1]}) == sticker_rows(entries[:1])
    assert sticker_rows({"unrelated": 1}) == [] and sticker_rows("nonsense") == []


def test_sweep_summary_names_the_experiment_and_seeds():
    markdown = sweep_summary(
        repo="/srv/emojich",
        night=date(2026, 1, 6),
        param="generate.grid.seed",
        seeds=[5, 17],
        experiment="sweep-20260106-manual",
        status="Success",
        experiments_table="| Experiment |\n|---|\n| sweep |\n",
    )
    assert "`generate.grid.seed` = [5, 17]" in markdown and "dvc exp apply sweep-20260106-manual" in markdown


def test_prefect_yaml_declares_the_scheduled_deployments():
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert deployments["weekly-refresh"]["schedules"] == [{"cron": "0 3 * * 1", "timezone": "Europe/Moscow"}]
    assert deployments["weekly-refresh"]["parameters"] == {"refresh_scrape": True}
    assert deployments["nightly"]["schedules"] == [{"cron": "0 2 * * *", "timezone": "Europe/Moscow"}]
    assert deployments["repro"]["schedules"] == []
    assert {d["work_pool"]["name"] for d in deployments.values()} == {"emojich"}
    for deployment in deployments.values():
        path, function = deployment["entrypoint"].split(":")
        assert f"def {function}(" in (ROOT / path).read_text()


@pytest.mark.slow
def test_sweep_commands_queue_and_run_a_dvc_experiment(tmp_path):
    repo = make_toy_repo(tmp_path / "repo")
    run_dvc(["repro"], repo)
    seeds = derive_seeds(date(2026, 1, 6), 2)
    name = experiment_name(date(2026, 1, 6), None)
    run_dvc(queue_command("generate.seeds", seeds, name), repo)
    run_dvc(["queue", "start", "--jobs", "1"], repo)
    assert wait_for_experiment(repo, name, poll_s=1) == "Success"
    shown = run_dvc(["exp", "show", "--md", "--only-changed", "--no-pager"], repo).output
    assert name in shown and f"[{seeds[0]}, {seeds[1]}]" in shown
    # The sweep leaves the workspace alone: it is recorded as an experiment, not applied.
    assert yaml.safe_load((repo / "params.yaml").read_text())["generate"]["seeds"] == [1, 2]


def test_a_stage_pulls_the_outputs_it_reads_and_no_others():
    outputs = ["data/tokens/bpe.json", "data/tokens/codes.safetensors", "data/generated/a/kept", "data/raw"]
    # A file dep equal to an output, a folder dep holding outputs, a file dep inside an output folder.
    dependencies = ["data/tokens/bpe.json", "data/generated", "data/raw/captions.csv", "stages/generate.py"]
    assert upstream_outputs(outputs, dependencies) == [
        "data/generated/a/kept",
        "data/raw",
        "data/tokens/bpe.json",
    ]
    assert not overlaps("data/raw", "data/raw_extra")


def test_project_generate_cell_reads_only_models_and_tokenizer_outputs():
    cell = next(
        name for name in run_dvc(["stage", "list", "--name-only"], ROOT).output.split() if "@" in name
    )
    targets = stage_data_dependencies(ROOT, cell)
    assert "data/finetune/model.safetensors" in targets and "data/tokens/bpe.json" in targets
    assert not any(path.endswith("images") or path.endswith("codes.safetensors") for path in targets)


def test_cells_are_the_matrix_entries_of_the_stage():
    stages = ["scrape", "generate@8-1.0-1.0-5", "generate@8-1.0-1.0-17", "segment"]
    assert cell_stages(stages, "generate") == ["generate@8-1.0-1.0-5", "generate@8-1.0-1.0-17"]
    assert cell_stages(stages, "segment") == []


def test_set_param_keeps_comments_and_flow_lists(tmp_path):
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_text()
    assert set_param(tmp_path, "generate.grid.seed", [5, 17])
    after = (tmp_path / "params.yaml").read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and changed[0][1].strip().startswith("seed: [5, 17]")
    assert not set_param(tmp_path, "generate.grid.seed", [5, 17])
    with pytest.raises(KeyError):
        set_param(tmp_path, "generate.grid.nothing", [1])


def test_cell_records_are_adopted_into_lock_and_workspace(tmp_path):
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  scrape:\n    cmd: python -m stages.scrape\n"
    )
    entry = {"cmd": "python -m stages.generate --seed 5", "outs": [{"path": "data/generated/x/kept"}]}
    merge_lock_entries(tmp_path, {"generate@5": entry})
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert list(lock["stages"]) == ["scrape", "generate@5"] and lock["stages"]["generate@5"] == entry
    assert (
        inside(tmp_path, "data/generated/x/metrics.json")
        == (tmp_path / "data/generated/x/metrics.json").resolve()
    )
    with pytest.raises(ValueError, match="outside"):
        inside(tmp_path, "../elsewhere.json")


def test_fan_out_summary_lists_each_cell():
    cells = [
        CellRun("generate@8-1.0-1.0-5", "Completed", 12.5),
        CellRun("generate@8-1.0-1.0-17", "Failed", 3.0),
    ]
    markdown = fan_out_summary(repo="/srv/emojich", param="generate.grid.seed", seeds=[5, 17], cells=cells)
    assert "| `generate@8-1.0-1.0-17` | Failed | 3.0 |" in markdown and "[5, 17]" in markdown
