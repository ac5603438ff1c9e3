from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

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
from emojich.storage import sha256_file
from stages.prepare import PrepareParams, prepare
from tests.synthetic_raw import make_raw, mode_samples, png_bytes


@pytest.mark.parametrize("name", list(mode_samples()))
def test_every_mode_normalised_to_rgba(name: str) -> None:
    data, _, expected = mode_samples()[name]
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


def test_prepare_stage_end_to_end(tmp_path) -> None:
    rows = make_raw(tmp_path / "raw")
    out = tmp_path / "prepared"
    metrics = prepare(tmp_path / "raw", out, PrepareParams(val_fraction=0.3, workers=0), progress=False)

    assert metrics["rejected"] == {"truncated": 1, "unreadable": 1}
    assert metrics["images"] == len(rows) - 2
    assert metrics["images"] == sum(s["images"] for s in metrics["splits"].values())
    assert json.loads((out / "metrics.json").read_text()) == metrics
    with open(out / "rejects.csv", encoding="utf-8") as handle:
        assert {r["id"]: r["reason"] for r in csv.DictReader(handle)} == {
            "broken-corrupt": "unreadable",
            "broken-truncated": "truncated",
        }

    manifest = read_prepared_manifest(out / "manifest.csv")
    assert [r.id for r in manifest] == sorted(r.id for r in manifest)
    by_split: dict[str, set[str]] = {TRAIN: set(), VALIDATION: set()}
    for row in manifest:
        by_split[row.split].add(caption_key(row.caption))
        assert sha256_file(out / "rgb" / f"{row.id}.png") == row.rgb_sha256
        assert sha256_file(out / "rgba" / f"{row.id}.png") == row.rgba_sha256
        assert sha256_file(out / "mask" / f"{row.id}.png") == row.mask_sha256
        rgb = decode_png_array((out / "rgb" / f"{row.id}.png").read_bytes(), "RGB")
        mask = decode_png_array((out / "mask" / f"{row.id}.png").read_bytes(), "L")
        assert rgb.shape == (row.height, row.width, 3) and set(np.unique(mask)) <= {0, 255}
        assert (rgb[mask == 0] == 255).all()
    assert by_split[TRAIN] and by_split[VALIDATION]
    assert not by_split[TRAIN] & by_split[VALIDATION]

    # Deterministic bytes, in-process or with worker processes.
    first = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    prepare(tmp_path / "raw", out, PrepareParams(val_fraction=0.3, workers=2), progress=False)
    second = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert first == second
