from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from emojich.data.images import decode_png_array, flatten_on_white
from emojich.foundation.layout import IMAGES_DIR, MASK_KIND, RGB_KIND
from emojich.foundation.shards import ShardReader, iter_shards, shard_paths
from emojich.foundation.storage import sha256_bytes
from emojich.models.rrdbnet import RRDBNet, RRDBNetConfig, preset
from emojich.upscale.selftrain import TrainConfig, evaluate_sr, train_rrdbnet
from emojich.upscale.superres import receptive_radius, sr_batch, super_resolve, upscale_to
from stages.prepare import PrepareParams, prepare
from stages.upscale import FALLBACK, SELF_TRAINED, UpscaleParams, upscale_dataset
from tests.synthetic_raw import emoji_rgba, make_raw

SMALL = RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4)


def _random_model(config: RRDBNetConfig) -> RRDBNet:
    torch.manual_seed(0)
    model = RRDBNet(config).eval()
    with torch.no_grad():  # make every layer matter, including the last
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _emoji_rgb(seed: int, size: int) -> np.ndarray:
    return flatten_on_white(np.asarray(emoji_rgba(seed, size)))


@pytest.mark.parametrize("config", [SMALL, RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4, scale=2)])
def test_tiled_equals_whole_image(config: RRDBNetConfig) -> None:
    model = _random_model(config)
    batch = torch.rand(2, 3, 46, 38)
    with torch.inference_mode():
        whole = sr_batch(model, batch)
        tiled = sr_batch(model, batch, tile=16, tile_overlap=receptive_radius(config))
    assert tiled.shape == whole.shape == (2, 3, 46 * config.scale, 38 * config.scale)
    assert (tiled - whole).abs().max().item() < 1e-4


def test_super_resolve_groups_sizes_and_keeps_order() -> None:
    model = _random_model(SMALL)
    images = [_emoji_rgb(i, size) for i, size in enumerate((8, 12, 8, 10, 12))]
    out = super_resolve(model, images, batch_size=2)
    assert [o.shape for o in out] == [(s * 4, s * 4, 3) for s in (8, 12, 8, 10, 12)]
    alone = super_resolve(model, images[3:4])
    np.testing.assert_array_equal(out[3], alone[0])


def test_bf16_super_resolution_stays_within_a_level_or_two_of_fp32() -> None:
    # The demo's preset adds its residual to a bicubic base. Its last conv starts at zero, so the
    # weights are nudged to make the residual real (tens of levels here; a trained one is smaller).
    torch.manual_seed(0)
    model = RRDBNet(preset("demo")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    images = [_emoji_rgb(i, 24) for i in range(4)]
    exact = np.stack(super_resolve(model, images, precision="fp32")).astype(int)
    fast = np.stack(super_resolve(model, images, precision="bf16")).astype(int)
    bicubic = np.stack(super_resolve(RRDBNet(preset("demo")).eval(), images)).astype(int)
    assert np.abs(exact - bicubic).mean() > 10
    difference = np.abs(exact - fast)
    assert difference.max() <= 2
    assert difference.mean() < 0.25
    assert evaluate_sr(model, images, precision="bf16")["model_db"] == pytest.approx(
        evaluate_sr(model, images)["model_db"], abs=0.05
    )


def test_unknown_precision_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match=r"upscale\.precision must be one of fp32, bf16, got .fp16."):
        UpscaleParams(precision="fp16")


def test_upscale_to_gives_exact_target() -> None:
    model = _random_model(SMALL)
    images = [_emoji_rgb(1, 24), _emoji_rgb(2, 72), _emoji_rgb(3, 300), _emoji_rgb(4, 256)[:50, :30]]
    for result in (upscale_to(images, model, target=256), upscale_to(images, None, target=256)):
        assert [r.shape for r in result] == [(256, 256, 3)] * 4
        assert all(r.dtype == np.uint8 for r in result)
    # Non-square input is centred on white, not stretched.
    assert (upscale_to(images[3:], None, target=256)[0][:, :20] == 255).all()


def test_self_training_beats_bicubic_and_is_deterministic() -> None:
    train_images = [_emoji_rgb(i, 128) for i in range(12)]
    held_out = [_emoji_rgb(100 + i, 128) for i in range(4)]
    config = preset("demo")
    train = TrainConfig(steps=400, batch=8, patch=16, lr=2e-3, seed=0)
    model, info = train_rrdbnet(train_images, config, train)
    score = evaluate_sr(model, held_out)
    assert score["pairs"] == 4 and score["gain_db"] > 0.3, score
    again, _ = train_rrdbnet(train_images, config, TrainConfig(steps=3, batch=2, patch=12, seed=1))
    once_more, _ = train_rrdbnet(train_images, config, TrainConfig(steps=3, batch=2, patch=12, seed=1))
    for name, tensor in again.state_dict().items():
        assert torch.equal(tensor, once_more.state_dict()[name]), name
    assert info["steps"] == 400


def _run_stages(tmp_path, **upscale):
    make_raw(tmp_path / "raw", small=20, large=64, per_style=6)
    prepare(
        tmp_path / "raw", tmp_path / "prepared", PrepareParams(val_fraction=0.3, workers=0), progress=False
    )
    params = UpscaleParams(target_size=64, train_batch=4, threads=1, **upscale)
    return upscale_dataset(tmp_path / "prepared", tmp_path / "upscaled", params, progress=False)


def test_upscale_stage_end_to_end(tmp_path) -> None:
    options = {"train_steps": 5, "train_patch": 8, "eval_images": 4}
    metrics = _run_stages(tmp_path, **options)
    out = tmp_path / "upscaled"
    assert metrics["upscaler"] == SELF_TRAINED
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance == {key: value for key, value in metrics.items() if key != "timing_s"}
    compact = json.loads((out / "metrics.json").read_text())
    assert compact["super_resolved"] == 13 and compact["psnr_model_db"] == round(
        metrics["psnr_heldout"]["model_db"], 2
    )
    assert metrics["psnr_heldout"]["pairs"] > 0
    # 20 px twemoji-like and 32 px mode samples are enlarged; 64 px ones are already the target.
    assert metrics["images"] == {"total": 19, "super_resolved": 13, "resized_only": 6}
    with open(out / "manifest.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 19 and [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "images/upscaled-00000.tar",
        "manifest.csv",
        "metrics.json",
        "provenance.json",
        "rrdbnet.safetensors",
    ]
    items = list(iter_shards(out / IMAGES_DIR))
    assert [key for key, _ in items] == [r["id"] for r in rows]
    with ShardReader(tmp_path / "prepared" / IMAGES_DIR) as prepared:
        for row, (_, members) in zip(rows, items, strict=True):
            assert sorted(members) == [MASK_KIND, RGB_KIND]
            image = decode_png_array(members[RGB_KIND], "RGB")
            mask = decode_png_array(members[MASK_KIND], "L")
            assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
            assert set(np.unique(mask)) <= {0, 255}
            assert sha256_bytes(members[RGB_KIND]) == row["sha256"]
            assert sha256_bytes(members[MASK_KIND]) == row["mask_sha256"]
            assert sha256_bytes(prepared.read(row["id"], RGB_KIND)) == row["source_sha256"]
            if row["method"] == "copy":  # already the target size: the prepared bytes, untouched
                assert members[RGB_KIND] == prepared.read(row["id"], RGB_KIND)
                assert members[MASK_KIND] == prepared.read(row["id"], MASK_KIND)
    assert RRDBNet.load(out / "rrdbnet.safetensors").config == preset("demo")

    # Running both stages again rewrites byte-identical shards.
    first = [path.read_bytes() for path in shard_paths(out / IMAGES_DIR)]
    assert _run_stages(tmp_path, **options)["images"] == metrics["images"]
    assert [path.read_bytes() for path in shard_paths(out / IMAGES_DIR)] == first


def test_upscale_stage_falls_back_to_lanczos_without_large_images(tmp_path) -> None:
    metrics = _run_stages(tmp_path, train_steps=5, train_patch=32)  # needs 128 px renders: none
    assert metrics["upscaler"] == FALLBACK
    assert metrics["images"]["super_resolved"] == 0
    assert metrics["psnr_heldout"]["model_db"] is None


def test_sr_max_side_resizes_larger_inputs_without_the_network():
    from emojich.models.rrdbnet import RRDBNet, preset
    from emojich.upscale.superres import needs_super_resolution, resize_square, upscale_to

    assert needs_super_resolution(72, 72, 256, 128) and not needs_super_resolution(136, 136, 256, 128)
    assert needs_super_resolution(136, 136, 256) and not needs_super_resolution(256, 256, 256)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)
    large = rng.integers(0, 256, (136, 136, 3), dtype=np.uint8)
    torch.manual_seed(0)
    model = RRDBNet(preset("demo"))
    for parameter in model.parameters():  # make the network visibly change what it touches
        torch.nn.init.normal_(parameter, std=0.05)
    out = upscale_to([small, large], model, target=256, sr_max_side=128)
    assert np.array_equal(out[1], resize_square(large, 256))
    assert not np.array_equal(out[0], resize_square(small, 256))
