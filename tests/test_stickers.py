import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from emojich.cli import main
from emojich.foundation.storage import sha256_file
from emojich.segment.stickers import (
    MAX_STICKER_BYTES,
    PackEntry,
    check_telegram_sticker,
    encode_sticker,
    make_sticker,
    sticker_sidecar,
    unblend_white,
    write_pack,
    write_sticker,
)


def _face(side=256):
    image = np.full((side, side, 3), 255, np.uint8)
    centre = side // 2
    cv2.circle(image, (centre, centre), side * 2 // 5, (255, 200, 0), -1, lineType=cv2.LINE_AA)
    cv2.circle(image, (centre - side // 6, centre - side // 8), side // 16, (255, 255, 255), -1)
    return image


def test_sticker_fits_the_longer_side_and_pads_transparent():
    rgb = np.full((300, 150, 3), 40, np.uint8)
    sticker = make_sticker(rgb, np.full((300, 150), 255, np.uint8))
    assert sticker.size == (512, 512) and sticker.mode == "RGBA"
    alpha = np.asarray(sticker)[..., 3]
    columns = np.flatnonzero(alpha.max(axis=0) > 0)
    assert (alpha[:, 256] == 255).all()  # the longer side spans all 512 rows
    assert columns[0] == 128 and columns[-1] == 383  # 150 * 512 / 300 = 256 columns, centred
    assert alpha[:, :100].max() == 0


def test_unblend_white_recovers_the_edge_colour():
    rgb = np.array([[[128, 128, 255]]], np.uint8)  # half-covered blue-ish pixel over white
    alpha = np.array([[128]], np.uint8)
    np.testing.assert_allclose(unblend_white(rgb, alpha)[0, 0], [1, 1, 255], atol=1)


@pytest.mark.parametrize("fmt", ["webp", "png"])
def test_stickers_pass_the_checker(tmp_path, fmt):
    rgb = _face()
    alpha = (rgb < 240).any(axis=-1).astype(np.uint8) * 255
    path = tmp_path / f"face.{fmt}"
    encoded = write_sticker(path, rgb, alpha)
    assert check_telegram_sticker(path) == []
    assert encoded.encoding in ("webp-lossless", "png")  # flat colours fit without loss


@pytest.mark.parametrize("fmt", ["webp", "png"])
def test_oversized_noise_is_reencoded_until_it_fits(tmp_path, fmt):
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    opaque = np.full((512, 512), 255, np.uint8)
    lossless = io.BytesIO()
    make_sticker(noise, opaque).save(
        lossless, format=fmt.upper(), **({"lossless": True} if fmt == "webp" else {})
    )
    assert len(lossless.getvalue()) > MAX_STICKER_BYTES  # the premise: lossless cannot fit
    path = tmp_path / f"noise.{fmt}"
    encoded = write_sticker(path, noise, opaque)
    assert encoded.encoding not in ("webp-lossless", "png")
    assert path.stat().st_size <= MAX_STICKER_BYTES
    assert check_telegram_sticker(path) == []  # an all-opaque sticker still keeps its alpha channel


def test_checker_names_each_problem(tmp_path):
    jpeg = tmp_path / "x.jpg"
    Image.new("RGB", (500, 300), "red").save(jpeg)
    problems = check_telegram_sticker(jpeg)
    assert any("JPEG" in p for p in problems)
    assert any("no side is exactly 512" in p for p in problems)
    assert any("no alpha" in p for p in problems)
    huge = tmp_path / "huge.png"
    noise = np.random.default_rng(1).integers(0, 256, (512, 512, 4), dtype=np.uint8)
    Image.fromarray(noise, "RGBA").save(huge, compress_level=0)
    assert [p for p in check_telegram_sticker(huge) if "bytes" in p]
    too_wide = tmp_path / "wide.png"
    Image.new("RGBA", (600, 512)).save(too_wide)
    assert check_telegram_sticker(too_wide) == ["size 600x512: a side exceeds 512"]


def test_encoding_refuses_what_cannot_fit():
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="no webp encoding fits"):
        encode_sticker(make_sticker(noise, np.full((64, 64), 255, np.uint8)), "webp", max_bytes=100)


def test_pack_manifest_and_preview(tmp_path):
    entries = []
    for i in range(3):
        rgb = _face(128)
        encoded = write_sticker(tmp_path / "images" / f"s{i}.webp", rgb, np.full((128, 128), 255, np.uint8))
        sidecar = sticker_sidecar({"prompt": f"p{i}", "score": i}, "contour", None, encoded)
        assert sidecar["sticker_sha256"] == sha256_file(tmp_path / "images" / f"s{i}.webp")
        entries.append(PackEntry(f"s{i}.webp", f"p{i}", i, "contour", None, sidecar["sticker_sha256"]))
    manifest = write_pack(entries[::-1], tmp_path / "images", tmp_path / "pack", cell=64, columns=2)
    assert [s["file"] for s in manifest["stickers"]] == ["s0.webp", "s1.webp", "s2.webp"]
    assert json.loads((tmp_path / "pack/manifest.json").read_text())["stickers_dir"] == "../images"
    with Image.open(tmp_path / "pack/preview.png") as preview:
        assert preview.size == (128, 128)


def test_cli_sticker_with_contour(tmp_path, capsys):
    source = tmp_path / "face.png"
    Image.fromarray(_face()).save(source)
    (tmp_path / "face.json").write_text(json.dumps({"prompt": "улыбка", "seed": 42}), encoding="utf-8")
    dest = tmp_path / "face.webp"
    assert main(["sticker", str(source), str(dest), "--method", "contour"]) == 0
    assert "method: contour" in capsys.readouterr().out
    assert check_telegram_sticker(dest) == []
    with Image.open(dest) as sticker:
        alpha = np.asarray(sticker.convert("RGBA"))[..., 3]
    assert alpha[5, 5] == 0 and alpha[256, 256] == 255
    assert alpha[256 - 85, 256 - 64] == 255  # the white eye stays opaque
    sidecar = json.loads((tmp_path / "face.json").read_text(encoding="utf-8"))
    assert sidecar["prompt"] == "улыбка"
    written = json.loads(dest.with_suffix(".json").read_text(encoding="utf-8"))
    assert written["mask_method"] == "contour" and written["sticker_sha256"] == sha256_file(dest)


def test_cli_contour_sticker_keeps_the_white_field_inside_an_outline(tmp_path):
    """`emojich sticker --method contour` on a white field in an 8 px dark outline: the sticker's
    field is opaque right up to the outline, with no see-through seam on a dark chat theme."""
    from tests.test_contour import outlined_field

    source, dest = tmp_path / "flag.png", tmp_path / "flag.webp"
    Image.fromarray(outlined_field()).save(source)
    assert main(["sticker", str(source), str(dest), "--method", "contour"]) == 0
    with Image.open(dest) as sticker:
        alpha = np.asarray(sticker.convert("RGBA"))[..., 3]
    assert (alpha[96:416, 96:416] == 255).all() and alpha[:96].max() == 0


def test_cli_auto_without_weights_says_contour(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no pipeline U-Net at data/segment/unet.safetensors to fall back on
    source = tmp_path / "face.png"
    Image.fromarray(_face(64)).save(source)
    assert main(["sticker", str(source), str(tmp_path / "out.png")]) == 0
    out = capsys.readouterr().out
    assert "no U-Net weights" in out and "method: contour" in out


def test_cli_auto_with_weights_uses_the_unet(tmp_path, capsys):
    from emojich.segment.unet import build_unet, preset, save_unet

    weights = tmp_path / "unet.safetensors"
    save_unet(build_unet(preset("tiny")), preset("tiny"), weights)
    source = tmp_path / "face.png"
    Image.fromarray(_face(64)).save(source)
    args = ["sticker", str(source), str(tmp_path / "out.webp"), "--weights", str(weights)]
    assert main([*args, "--threshold", "0"]) == 0
    assert "method: unet" in capsys.readouterr().out
    assert main([*args, "--threshold", "1"]) == 0
    out = capsys.readouterr().out
    assert "below 1.0" in out and "method: contour" in out


def test_a_contour_sticker_has_no_white_ring_around_its_outline():
    """Anti-aliased red disc on white, as generated images are drawn: shown on a dark chat theme,
    nothing around the disc is lighter than the disc itself (a white ring would light up its
    green and blue channels)."""
    from emojich.segment.contour import contour_alpha

    image = np.full((128, 128, 3), 255, np.uint8)
    cv2.circle(image, (64, 64), 40, (220, 30, 40), -1, lineType=cv2.LINE_AA)
    sticker = np.asarray(make_sticker(image, contour_alpha(image))).astype(np.float32)
    alpha = sticker[..., 3:] / 255
    on_black = sticker[..., :3] * alpha
    assert alpha.max() == 1.0 and (alpha == 0).any()  # cut out, not all or nothing
    assert on_black[..., 1].max() <= 45 and on_black[..., 2].max() <= 55, on_black[..., 1:].max()
