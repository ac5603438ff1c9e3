"""The whole pipeline under real DVC, on smoke-size parameters."""

import csv
import json

import pytest

from emojich.layout import IMAGES_DIR, MASK_KIND, RAW_KIND, RGB_KIND, RGBA_KIND
from emojich.shards import ShardReader
from tests.pipeline import dvc


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
    upscaled = json.loads((path / "data/upscaled/metrics.json").read_text())
    assert upscaled["upscaler"]
    tokens = json.loads((path / "data/tokens/metrics.json").read_text())
    assert tokens["image_tokenizer"] == "gumbel-vq-selftrained:tiny"
    finetune = json.loads((path / "data/finetune/metrics.json").read_text())
    assert finetune["steps"] == 4 and len(finetune["checkpoint_sha256"]) == 64
    assert (path / "data/finetune/samples/step_000004.png").is_file()
    assert set(tokens) >= {"val_psnr_db", "val_delta_e", "codebook_used_fraction"}
    assert (path / "data/tokens/thumbnails.safetensors").is_file()
    prompts = (path / "prompts/demo.txt").read_text(encoding="utf-8").split("\n")
    prompts = [line for line in prompts if line.strip() and not line.startswith("#")]
    for cell in ("k8-p0.995-t1.0-s42", "k32-p0.995-t1.0-s42"):
        folder = path / "data/generated" / cell
        assert (folder / "sheet.png").is_file() and (folder / "metrics.json").is_file()
        assert len(list((folder / "kept").glob("*.png"))) == len(prompts)  # keep_best 1 per prompt
        fidelity = json.loads((folder / "metrics.json").read_text())["fidelity"]
        # The smoke catalogue holds the first 16 emoji only: the demo prompts are not in it.
        assert fidelity["prompts_zero_shot"] + fidelity["prompts_train"] + fidelity[
            "prompts_held_out"
        ] == len(prompts)
        assert fidelity["captions"] >= 10 and "real_val_top10" in fidelity
    stickers = json.loads((path / "data/stickers/metrics.json").read_text())
    assert stickers["count"] == 2 * len(prompts) and stickers["all_valid"], stickers
    assert (path / "data/stickers/pack/manifest.json").is_file()


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
