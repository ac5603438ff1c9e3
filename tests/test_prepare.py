from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emojich.data.catalogue import write_catalogue
from emojich.data.images import (
    RejectedImage,
    alpha_mask,
    decode_png_array,
    decode_rgba,
    flatten_on_white,
    prepare_image,
    read_prepared_manifest,
)
from emojich.data.split import TRAIN, VALIDATION, caption_key, split_captions
from emojich.foundation.layout import IMAGES_DIR, MASK_KIND, RGB_KIND, RGBA_KIND
from emojich.foundation.shards import ShardReader, iter_shards, shard_paths
from emojich.foundation.storage import sha256_bytes
from stages.prepare import PrepareParams, prepare
from tests.synthetic_raw import make_raw, mode_samples, png_bytes


@pytest.mark.parametrize("name", list(mode_samples()))
def test_every_mode_normalised_to_rgba(name: str) -> None:
    data, expected = mode_samples()[name]
    rgba = decode_rgba(data)
    assert rgba.dtype == np.uint8 and rgba.shape == (*expected.shape[:2], 4)
    np.testing.assert_array_equal(rgba, expected)


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    wide = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    rgba = decode_rgba(png_bytes(Image.fromarray(wide)))
    assert rgba[0, :, 0].tolist() == [0, 128, 255]


def test_alpha_below_threshold_becomes_exactly_white() -> None:
    rgba = np.zeros((2, 4, 4), dtype=np.uint8)
    rgba[..., :3] = [[10, 20, 30]]
    rgba[..., 3] = [[0, 127, 128, 255], [1, 126, 200, 129]]
    rgb = flatten_on_white(rgba, 128)
    below = rgba[..., 3] < 128
    assert (rgb[below] == 255).all()
    # At or above the threshold the stored colour is kept as is (the report's rule, no blending).
    np.testing.assert_array_equal(rgb[~below], rgba[..., :3][~below])
    np.testing.assert_array_equal(alpha_mask(rgba, 128), np.where(below, 0, 255))


def test_corrupt_truncated_and_blank_are_rejected_with_reason() -> None:
    with pytest.raises(RejectedImage) as corrupt:
        decode_rgba(b"\x89PNG\r\n\x1a\nnot a png")
    assert corrupt.value.reason == "unreadable"
    whole = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 4), dtype=np.uint8)))
    with pytest.raises(RejectedImage) as truncated:
        decode_rgba(whole[: len(whole) // 2])
    assert truncated.value.reason == "truncated"
    with pytest.raises(RejectedImage) as blank:
        prepare_image(png_bytes(Image.new("RGBA", (8, 8), (255, 0, 0, 0))))
    assert blank.value.reason == "blank"
    with pytest.raises(RejectedImage) as large:
        decode_rgba(png_bytes(Image.new("RGB", (64, 64))), max_pixels=100)
    assert large.value.reason == "too-large"


def test_split_by_caption_is_disjoint_stable_and_seeded() -> None:
    captions = [f"подпись {i}" for i in range(400)]
    splits = split_captions([*captions, "ПОДПИСЬ 1"], 0.2, seed=42)
    assert len(splits) == 400  # case variants are one caption
    assert 40 < sum(s == VALIDATION for s in splits.values()) < 120
    assert splits == split_captions(list(reversed(captions)), 0.2, seed=42)
    # Adding a caption moves no other caption.
    grown = split_captions([*captions, "новая подпись"], 0.2, seed=42)
    assert all(grown[key] == value for key, value in splits.items())
    assert split_captions(captions, 0.2, seed=7) != splits
    # Tiny sets still get both sides.
    assert set(split_captions(["а", "б"], 0.05, seed=42).values()) == {TRAIN, VALIDATION}


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in shard_paths(folder)}


def test_prepare_stage_end_to_end(tmp_path) -> None:
    rows = make_raw(tmp_path / "raw")
    out = tmp_path / "prepared"
    metrics = prepare(tmp_path / "raw", out, PrepareParams(val_fraction=0.3, workers=0), progress=False)

    assert metrics["rejected"] == {"truncated": 1, "unreadable": 1}
    assert metrics["images"] == len(rows) - 2
    assert metrics["images"] == sum(s["images"] for s in metrics["splits"].values())
    assert json.loads((out / "provenance.json").read_text()) == metrics
    compact = json.loads((out / "metrics.json").read_text())
    assert compact["images"] == metrics["images"] and compact["rejected_total"] == 2
    assert compact["train_images"] + compact["val_images"] == metrics["images"]
    assert all(isinstance(value, int) for value in compact.values())  # numbers only, no nesting
    with open(out / "rejects.csv", encoding="utf-8") as handle:
        assert {r["id"]: r["reason"] for r in csv.DictReader(handle)} == {
            "broken-corrupt": "unreadable",
            "broken-truncated": "truncated",
        }

    # Only shards: one item per accepted image, in id order, with the three kinds.
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "images/prepared-00000.tar",
        "manifest.csv",
        "metrics.json",
        "provenance.json",
        "rejects.csv",
    ]
    manifest = read_prepared_manifest(out / "manifest.csv")
    assert [key for key, _ in iter_shards(out / IMAGES_DIR)] == [r.id for r in manifest]
    assert [r.id for r in manifest] == sorted(r.id for r in manifest)
    by_split: dict[str, set[str]] = {TRAIN: set(), VALIDATION: set()}
    with ShardReader(out / IMAGES_DIR) as shards:
        for row in manifest:
            by_split[row.split].add(caption_key(row.caption))
            assert shards.kinds(row.id) == sorted([RGB_KIND, RGBA_KIND, MASK_KIND])
            rgb_png, mask_png = shards.read(row.id, RGB_KIND), shards.read(row.id, MASK_KIND)
            assert sha256_bytes(rgb_png) == row.rgb_sha256
            assert sha256_bytes(shards.read(row.id, RGBA_KIND)) == row.rgba_sha256
            assert sha256_bytes(mask_png) == row.mask_sha256
            rgb, mask = decode_png_array(rgb_png, "RGB"), decode_png_array(mask_png, "L")
            assert rgb.shape == (row.height, row.width, 3) and set(np.unique(mask)) <= {0, 255}
            assert (rgb[mask == 0] == 255).all()
    assert by_split[TRAIN] and by_split[VALIDATION]
    assert not by_split[TRAIN] & by_split[VALIDATION]

    # A second run over its own output rewrites the same bytes.
    first = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    prepare(tmp_path / "raw", out, PrepareParams(val_fraction=0.3, workers=0), progress=False)
    second = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert first == second


def test_prepare_is_byte_identical_in_process_and_with_workers(tmp_path) -> None:
    make_raw(tmp_path / "raw", per_style=20)  # more rows than one worker task holds
    for name, workers in (("a", 0), ("b", 2)):
        prepare(tmp_path / "raw", tmp_path / name, PrepareParams(workers=workers), progress=False)
    assert len(shard_paths(tmp_path / "a" / IMAGES_DIR)) == 1
    assert _shard_bytes(tmp_path / "a" / IMAGES_DIR) == _shard_bytes(tmp_path / "b" / IMAGES_DIR)
    for name in ("manifest.csv", "rejects.csv", "metrics.json", "provenance.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_missing_member_and_changed_image_are_rejected(tmp_path) -> None:
    raw = tmp_path / "raw"
    rows = make_raw(raw, per_style=2, broken=False)
    changed = dataclasses.replace(rows[0], sha256="0" * 64)
    missing = dataclasses.replace(rows[1], id="zz-missing", image_path="images/raw-00000.tar:zz-missing.png")
    write_catalogue([changed, missing, *rows[1:]], raw)

    out = tmp_path / "prepared"
    metrics = prepare(raw, out, PrepareParams(workers=0), progress=False)
    assert metrics["rejected"] == {"hash-mismatch": 1, "missing-file": 1}
    assert metrics["images"] == len(rows) - 1
    with open(out / "rejects.csv", encoding="utf-8") as handle:
        assert {r["id"]: r["reason"] for r in csv.DictReader(handle)} == {
            changed.id: "hash-mismatch",
            "zz-missing": "missing-file",
        }
    with ShardReader(out / IMAGES_DIR) as shards:
        assert changed.id not in shards and "zz-missing" not in shards and rows[1].id in shards


def test_a_smaller_run_leaves_no_stale_images(tmp_path) -> None:
    make_raw(tmp_path / "big", per_style=4)
    make_raw(tmp_path / "small", per_style=1, broken=False)
    out = tmp_path / "prepared"
    prepare(tmp_path / "big", out, PrepareParams(workers=0), progress=False)
    prepare(tmp_path / "small", out, PrepareParams(workers=0), progress=False)
    manifest = read_prepared_manifest(out / "manifest.csv")
    with ShardReader(out / IMAGES_DIR) as shards:
        assert shards.keys() == [row.id for row in manifest]
