"""The whole pipeline under real DVC, on smoke-size parameters."""

import json

import pytest

from tests.pipeline import dvc, make_pipeline_repo

SMOKE = {
    "scrape": {"offline": {"styles": ["twemoji", "openmoji"], "max_emoji": 16, "render_size": 64}},
    "prepare": {"val_fraction": 0.25, "workers": 0},
    "upscale": {"train_steps": 3, "train_batch": 2, "train_patch": 8, "train_images": 8, "eval_images": 4},
    "tokenize": {"image": {"preset": "tiny", "train_steps": 4, "batch_size": 4}, "text": {"vocab_size": 64}},
    "finetune": {
        "model": {"preset": "tiny"},
        "train": {"max_steps": 4, "batch_size": 4, "checkpoint_every": 2},
        "eval": {
            "every": 2,
            "prompts": ["кошка", "Эйнштейн улыбается"],
            "images_per_prompt": 2,
            "top_k": 8,
            "max_val_pairs": 8,
            "caption_pairs": 4,
        },
    },
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = make_pipeline_repo(tmp_path_factory.mktemp("pipeline"), SMOKE)
    result = dvc("repro", cwd=path)
    return path, result.stdout


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
