"""The whole pipeline under real DVC, on smoke-size parameters."""

import json

import pytest

from tests.pipeline import dvc


@pytest.fixture
def repo(smoke_pipeline):
    return smoke_pipeline


@pytest.mark.slow
def test_repro_runs_every_stage(repo):
    path, log = repo
    stages = [name for name in __import__("yaml").safe_load((path / "dvc.yaml").read_text())["stages"]]
    for stage in stages:
        assert f"Running stage '{stage}'" in log, f"stage {stage} did not run:\n{log}"
    stats = json.loads((path / "data/raw/stats.json").read_text())
    assert stats["images"] > 16 and stats["captions"] >= 10
    upscaled = json.loads((path / "data/upscaled/metrics.json").read_text())
    assert upscaled["upscaler"]
    tokens = json.loads((path / "data/tokens/metrics.json").read_text())
    assert tokens["image_tokenizer"] == "gumbel-vq-selftrained:tiny"
    finetune = json.loads((path / "data/finetune/metrics.json").read_text())
    assert finetune["steps"] == 4 and len(finetune["checkpoint_sha256"]) == 64
    assert (path / "data/finetune/samples/step_000004.png").is_file()


@pytest.mark.slow
def test_second_repro_is_a_no_op_and_status_is_clean(repo):
    path, _ = repo
    lock_before = (path / "dvc.lock").read_text()
    again = dvc("repro", cwd=path)
    assert "Running stage" not in again.stdout, again.stdout
    assert (path / "dvc.lock").read_text() == lock_before
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
