from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors import safe_open

from emojich.models.checkpoints import CheckpointError
from emojich.models.rrdbnet import PRESETS, RRDBNet, RRDBNetConfig, preset

TINY = RRDBNetConfig(num_feat=8, num_block=2, num_grow_ch=4)


def test_realesrgan_x4_preset_has_the_published_names_and_shapes() -> None:
    with torch.device("meta"):
        model = RRDBNet(preset("realesrgan-x4"))
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    # 23 RRDBs x 3 dense blocks x 5 convs x (weight, bias) + 6 outer convs x 2
    assert len(shapes) == 23 * 3 * 5 * 2 + 6 * 2
    assert shapes["conv_first.weight"] == (64, 3, 3, 3)
    assert shapes["body.0.rdb1.conv1.weight"] == (32, 64, 3, 3)
    assert shapes["body.0.rdb1.conv2.weight"] == (32, 96, 3, 3)
    assert shapes["body.22.rdb3.conv4.weight"] == (32, 160, 3, 3)
    assert shapes["body.22.rdb3.conv5.weight"] == (64, 192, 3, 3)
    assert shapes["body.22.rdb3.conv5.bias"] == (64,)
    assert "body.23.rdb1.conv1.weight" not in shapes
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        assert shapes[f"{name}.weight"] == (64, 64, 3, 3)
    assert shapes["conv_last.weight"] == (3, 64, 3, 3)
    assert sum(int(torch.tensor(s).prod()) for s in shapes.values()) == 16_697_987  # RealESRGAN_x4plus


def test_forward_is_x4_and_demo_starts_as_bicubic() -> None:
    x = torch.rand(2, 3, 12, 10)
    assert RRDBNet(TINY).eval()(x).shape == (2, 3, 48, 40)
    demo = RRDBNet(preset("demo")).eval()
    bicubic = torch.nn.functional.interpolate(x, scale_factor=4.0, mode="bicubic", align_corners=False)
    torch.testing.assert_close(demo(x), bicubic)
    assert set(PRESETS) >= {"realesrgan-x4", "demo"}


@pytest.mark.parametrize("wrapper", [None, "params", "params_ema"])
def test_load_published_accepts_raw_and_wrapped(tmp_path, wrapper: str | None) -> None:
    source = RRDBNet(TINY)
    state = source.state_dict()
    path = tmp_path / "weights.pth"
    torch.save(state if wrapper is None else {wrapper: state}, path)
    loaded = RRDBNet.load_published(path, TINY)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[name])


def test_load_published_prefers_ema(tmp_path) -> None:
    ema, plain = RRDBNet(TINY).state_dict(), RRDBNet(TINY).state_dict()
    torch.save({"params": plain, "params_ema": ema}, tmp_path / "both.pth")
    loaded = RRDBNet.load_published(tmp_path / "both.pth", TINY)
    assert torch.equal(loaded.conv_first.weight, ema["conv_first.weight"])


def test_load_published_names_the_bad_tensor(tmp_path) -> None:
    state = RRDBNet(TINY).state_dict()
    state["body.1.rdb2.conv3.weight"] = torch.zeros(1, 1, 3, 3)
    torch.save({"params_ema": state}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"body\.1\.rdb2\.conv3\.weight"):
        RRDBNet.load_published(tmp_path / "shape.pth", TINY)
    state = RRDBNet(TINY).state_dict()
    del state["conv_hr.bias"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"conv_hr\.bias"):
        RRDBNet.load_published(tmp_path / "missing.pth", TINY)


def test_save_and_load_keep_config_and_weights(tmp_path) -> None:
    model = RRDBNet(preset("demo"))
    torch.nn.init.normal_(model.conv_last.weight)
    model.save(tmp_path / "m.safetensors", {"variant": "test"})
    loaded = RRDBNet.load(tmp_path / "m.safetensors")
    assert loaded.config == model.config
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_saved_files_are_byte_identical_with_several_metadata_entries(tmp_path) -> None:
    # safetensors writes metadata from a hash map: without normalising, these hashes differ.
    model = RRDBNet(preset("demo"))
    digests = set()
    for index in range(8):
        model.save(tmp_path / f"m{index}.safetensors", {"variant": "v", "seed": "1", "extra": "x"})
        digests.add(hashlib.sha256((tmp_path / f"m{index}.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
    loaded = RRDBNet.load(tmp_path / "m0.safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    with safe_open(str(tmp_path / "m0.safetensors"), framework="pt") as handle:
        assert handle.metadata()["variant"] == "v" and handle.metadata()["extra"] == "x"


def test_scale_two_uses_pixel_unshuffle_like_the_published_x2() -> None:
    model = RRDBNet(RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4, scale=2)).eval()
    assert model.conv_first.weight.shape[1] == 12
    assert model(torch.rand(1, 3, 8, 6)).shape == (1, 3, 16, 12)
