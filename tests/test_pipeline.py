"""The whole pipeline under real DVC, on smoke-size parameters."""

import csv
import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emojich.foundation.layout import IMAGES_DIR, MASK_KIND, RAW_KIND, RGB_KIND, RGBA_KIND
from emojich.foundation.shards import ShardReader
from tests.pipeline import ROOT, assert_repro_is_a_no_op, dvc, pipeline_env, run


@pytest.fixture
def repo(smoke_pipeline):
    return smoke_pipeline


@pytest.mark.slow
def test_repro_runs_every_stage(repo):
    path, log = repo
    stages = dvc("stage", "list", "--name-only", cwd=path).stdout.split()
    assert len(stages) == 9  # five training stages, two generate cells, segment, stickers
    for stage in stages:
        assert f"Running stage '{stage}'" in log, f"stage {stage} did not run:\n{log}"
    stats = json.loads((path / "data/raw/stats.json").read_text())
    assert stats["images"] > 16 and stats["captions"] >= 10
    upscaled = json.loads((path / "data/upscaled/provenance.json").read_text())
    assert upscaled["upscaler"]
    tokens = json.loads((path / "data/tokens/provenance.json").read_text())
    assert tokens["image_tokenizer"] == "gumbel-vq-selftrained:tiny"
    finetune = json.loads((path / "data/finetune/provenance.json").read_text())
    assert finetune["steps"] == 4 and len(finetune["checkpoint_sha256"]) == 64
    assert (path / "data/finetune/samples/step_000004.png").is_file()
    tokens_metrics = json.loads((path / "metrics/tokenize.json").read_text())
    assert set(tokens_metrics) >= {"val_psnr_db", "val_delta_e", "codebook_used_fraction"}
    assert (path / "data/tokens/thumbnails.safetensors").is_file()
    prompts = (path / "prompts/demo.txt").read_text(encoding="utf-8").split("\n")
    prompts = [line for line in prompts if line.strip() and not line.startswith("#")]
    for cell in ("k8-p0.995-t1.0-s42", "k32-p0.995-t1.0-s42"):
        folder = path / "data/generated" / cell
        assert (folder / "sheet.png").is_file() and (folder / "provenance.json").is_file()
        assert sorted(p.name for p in folder.iterdir()) == ["all", "kept", "provenance.json", "sheet.png"]
        assert (path / "metrics/generate" / f"{cell}.json").is_file()
        assert len(list((folder / "kept").glob("*.png"))) == len(prompts)  # keep_best 1 per prompt
        fidelity = json.loads((folder / "provenance.json").read_text())["fidelity"]
        # The smoke catalogue holds the first 16 emoji only: the demo prompts are not in it.
        assert fidelity["prompts_zero_shot"] + fidelity["prompts_train"] + fidelity[
            "prompts_held_out"
        ] == len(prompts)
        assert fidelity["captions"] >= 10 and "real_val_top10" in fidelity
    stickers = json.loads((path / "data/stickers/provenance.json").read_text())
    assert stickers["count"] == 2 * len(prompts) and stickers["all_valid"], stickers
    assert (path / "data/stickers/pack/manifest.json").is_file()


@pytest.mark.slow
def test_second_repro_is_a_no_op_and_status_is_clean(repo):
    path, _ = repo
    assert_repro_is_a_no_op(path)
    status = dvc("status", cwd=path)
    assert "up to date" in status.stdout.lower() or not status.stdout.strip(), status.stdout


@pytest.mark.slow
def test_dvc_dag_shows_the_chain(repo):
    path, _ = repo
    dag = dvc("dag", "--dot", cwd=path).stdout
    for edge in (
        '"scrape" -> "prepare"',
        '"prepare" -> "upscale"',
        '"upscale" -> "tokenize"',
        '"tokenize" -> "finetune"',
    ):
        assert edge in dag, dag


@pytest.mark.slow
def test_dataset_images_live_in_shards_that_match_the_manifests(repo):
    path, _ = repo
    expected_kinds = {
        "raw": [RAW_KIND],
        "prepared": sorted([RGB_KIND, RGBA_KIND, MASK_KIND]),
        "upscaled": sorted([RGB_KIND, MASK_KIND]),
    }
    tables = {"raw": "captions.csv", "prepared": "manifest.csv", "upscaled": "manifest.csv"}
    for stage, kinds in expected_kinds.items():
        folder = path / "data" / stage / IMAGES_DIR
        files = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        assert files == [f"{stage}-00000.tar"], files  # the smoke set fits one shard
        with open(path / "data" / stage / tables[stage], encoding="utf-8", newline="") as handle:
            ids = sorted(row["id"] for row in csv.DictReader(handle))
        with ShardReader(folder) as shards:
            assert shards.keys() == ids
            assert all(shards.kinds(key) == kinds for key in ids)


def _stage_outcomes(log: str) -> tuple[list[str], set[str]]:
    """(stages DVC ran, stages it restored from the run-cache or found unchanged) in a DVC log."""
    ran = re.findall(r"Running stage '([^']+)'", log)
    reused = set(re.findall(r"Stage '([^']+)' (?:is cached - skipping run|didn't change, skipping)", log))
    return ran, reused


@pytest.mark.slow
def test_an_experiment_on_stickers_params_restores_every_upstream_stage(repo):
    """A fresh temporary workspace, as `dvc queue start` and the nightly sweep use: nothing upstream
    of the changed param may run, finetune and the generate cells included (no `persist` outputs)."""
    path, _ = repo
    stages = set(dvc("stage", "list", "--name-only", cwd=path).stdout.split())
    result = dvc("exp", "run", "--temp", "-S", "stickers.preview_columns=4", cwd=path)
    ran, reused = _stage_outcomes(result.stdout + result.stderr)
    assert ran == ["stickers"], result.stdout
    assert reused == stages - {"stickers"}, result.stdout


@pytest.mark.slow
def test_metrics_are_committed_and_compare_across_commits(pipeline_copy):
    path = pipeline_copy
    tracked = run(["git", "ls-files", "metrics"], cwd=path).stdout.split()
    assert "metrics/finetune.json" in tracked and "metrics/generate/k8-p0.995-t1.0-s42.json" in tracked
    shown = json.loads(dvc("metrics", "show", "--json", cwd=path).stdout)
    files = next(iter(shown.values()))["data"]
    columns = {key for entry in files.values() for key in _flat(entry["data"])}
    assert len(files) == 9 and len(columns) <= 36, sorted(columns)
    assert not any("sha256" in key or key in ("model", "upscaler", "variant") for key in columns)

    params = yaml.safe_load((path / "params.yaml").read_text(encoding="utf-8"))
    params["segment"]["pseudolabel"]["threshold"] = 0.0  # every generated image goes to the U-Net
    (path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))
    dvc("repro", cwd=path)
    diff = dvc("metrics", "diff", "--json", cwd=path)
    assert "failed to load" not in diff.stdout + diff.stderr
    changed = json.loads(diff.stdout)
    segment = changed["metrics/segment.json"]
    assert segment["unet"]["new"] > segment["unet"]["old"], changed
    assert "metrics/finetune.json" not in changed

    table = list(csv.DictReader(io.StringIO(dvc("exp", "show", "--csv", cwd=path).stdout)))
    baseline = next(row for row in table if row["typ"] == "baseline" and row["rev"] != "workspace")
    assert baseline["val_loss"] not in ("", "!") and baseline["count"] not in ("", "!"), baseline
    assert "!" not in baseline.values()

    # The README's commands for comparing runs read in a 120-column terminal: no line wider, no
    # column folded into "…", and each shows numbers. Compared: this run against the last commit, as
    # two seeds' runs would be (the other tests' experiments, on other params, are not part of it).
    dvc("exp", "remove", "--all-commits", cwd=path)
    env = {**pipeline_env(), "COLUMNS": "120"}
    for command in readme_commands("comparing-runs"):
        shown = subprocess.run(command, cwd=path, env=env, capture_output=True, text=True, check=True).stdout
        lines = shown.splitlines()
        assert lines and max(len(line) for line in lines) <= 120, f"{command}:\n{shown}"
        assert "…" not in shown and re.search(r"\d\.\d", shown), f"{command}:\n{shown}"


def readme_commands(block: str) -> list[list[str]]:
    """The commands of the README's code block after `<!-- block -->`, comments dropped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"<!-- {block} -->", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line, comments=True) for line in body.splitlines()]
    return [[str(Path(sys.executable).parent / "dvc"), *words[1:]] for words in commands if words]


def _flat(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        keys += _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys
