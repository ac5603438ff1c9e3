import csv
import io
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from emojich.foundation.layout import IMAGES_DIR, MASK_KIND, RGB_KIND, UPSCALED_PREFIX
from emojich.foundation.shards import write_shards
from emojich.models.checkpoints import CheckpointError
from emojich.segment.pseudolabel import (
    PseudoLabelConfig,
    RoundRecord,
    SegmentationSet,
    evaluate,
    label_round,
    run_pseudolabel,
    should_stop,
    train_unet,
)
from emojich.segment.unet import (
    build_unet,
    foreground_and_confidence,
    load_published,
    load_unet,
    predict,
    preset,
    save_unet,
)


class PresetLogits(nn.Module):
    """Stand-in U-Net: image i (filled with grey level i) gets the logit margin `margins[i]` everywhere."""

    def __init__(self, margins):
        super().__init__()
        self.margins = torch.tensor(margins, dtype=torch.float32)
        self.anchor = nn.Parameter(torch.zeros(()))  # so the model has a device

    def forward(self, x):
        index = torch.round(x[:, 0, 0, 0] * 255).long()
        margin = self.margins[index][:, None, None].expand(-1, *x.shape[-2:])
        return torch.stack([torch.zeros_like(margin), margin], dim=1) + self.anchor


def _margin(confidence):
    """The logit margin whose softmax gives `confidence` to the larger class."""
    return float(np.log(confidence / (1 - confidence)))


def test_confidence_is_mean_of_per_pixel_max_probability():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[0.0, 2.0], [-2.0, 10.0]])
    foreground, confidence = foreground_and_confidence(logits)
    p = torch.sigmoid(torch.tensor([0.0, 2.0, -2.0, 10.0]))
    np.testing.assert_allclose(foreground.flatten(), p, rtol=1e-6)
    assert confidence.item() == pytest.approx(torch.maximum(p, 1 - p).mean().item(), rel=1e-6)
    one_class, conf_one = foreground_and_confidence(logits[:, 1:])  # the sigmoid variant agrees
    np.testing.assert_allclose(one_class.flatten(), p, rtol=1e-6)
    assert conf_one.item() == pytest.approx(confidence.item(), rel=1e-6)


def test_predict_batches_resizes_back_and_accepts_pil():
    confidences = [0.6, 0.9, 0.999]
    model = PresetLogits([_margin(c) for c in confidences])
    images = np.stack([np.full((20, 30, 3), i, np.uint8) for i in range(3)])
    probs, conf = predict(model, images, batch_size=2, size=16)
    assert probs.shape == (3, 20, 30) and conf.shape == (3,)
    np.testing.assert_allclose(conf, confidences, rtol=1e-5)
    np.testing.assert_allclose(probs[:, 5, 5], confidences, rtol=1e-5)
    _, conf_pil = predict(model, [Image.fromarray(i) for i in images], batch_size=3, size=16)
    np.testing.assert_array_equal(conf_pil, conf)


def test_auto_falls_back_to_a_contour_cut_without_a_seam_inside_an_outline():
    """Below the U-Net's confidence threshold, `auto` (stickers, the bot) cuts with the contour
    method: a white field inside a dark outline stays opaque up to the outline."""
    from emojich.segment.masking import segment_images
    from tests.test_contour import outlined_field

    unsure = PresetLogits([0.0] * 256)  # every pixel at P = 0.5: confidence 0.5
    (result,) = segment_images([outlined_field()], "auto", unsure, size=64, threshold=0.99)
    assert result.method == "contour" and result.confidence == pytest.approx(0.5)
    assert (result.alpha[96:416, 96:416] == 255).all() and result.alpha[:96].max() == 0


def test_label_round_accepts_exactly_the_images_at_or_above_threshold():
    confidences = [0.9, 0.985, 0.9899, 0.9901, 0.995, 0.9999]
    model = PresetLogits([_margin(c) for c in confidences])
    images = [np.full((24, 24, 3), i, np.uint8) for i in range(len(confidences))]
    labels = label_round(model, images, threshold=0.99, size=16, batch_size=4)
    assert labels.accepted.tolist() == [False, False, False, True, True, True]
    np.testing.assert_allclose(labels.confidence, confidences, rtol=1e-5)
    assert all(alpha.shape == (24, 24) and alpha.dtype == np.uint8 for alpha in labels.alphas)


def _records(scores):
    return [RoundRecord(i, 0, 0, s, s, 0) for i, s in enumerate(scores)]


def test_should_stop_at_plateau_and_at_max_rounds():
    kwargs = {"min_delta": 0.01, "patience": 2, "max_rounds": 10}
    assert not should_stop(_records([0.5]), **kwargs)
    assert not should_stop(_records([0.5, 0.6, 0.7]), **kwargs)
    assert not should_stop(_records([0.5, 0.6, 0.605]), **kwargs)  # one flat round < patience
    assert should_stop(_records([0.5, 0.6, 0.605, 0.608]), **kwargs)  # two rounds under +0.01
    assert not should_stop(_records([0.5, 0.6, 0.605, 0.611]), **kwargs)
    assert should_stop([0.5, 0.7, 0.65, 0.69], **kwargs)  # plain floats work too; a dip counts as flat
    assert should_stop(_records([0.1, 0.2, 0.3]), min_delta=0.01, patience=2, max_rounds=2)
    assert not should_stop(_records([float("nan")] * 3), **kwargs)  # no validation: only max_rounds


def _synthetic_set(count, side=32, seed=0):
    rng = np.random.default_rng(seed)
    images = np.full((count, side, side, 3), 255, np.uint8)
    ys, xs = np.indices((side, side))
    masks = np.zeros((count, side, side), bool)
    for i in range(count):
        radius = rng.integers(side // 6, side // 3)
        masks[i] = (ys - side / 2) ** 2 + (xs - side / 2) ** 2 <= radius**2
        images[i][masks[i]] = rng.integers(0, 200, 3)
    return SegmentationSet(images, masks)


def test_train_unet_is_deterministic_under_a_seed():
    data = _synthetic_set(6)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_unet(preset("tiny"))
        losses = train_unet(model, data, steps=3, batch_size=4, lr=1e-3, seed=7, progress=False)
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


def test_rounds_stop_when_validation_plateaus():
    model = PresetLogits([_margin(0.995)] * 2 + [_margin(0.9)] * 254)
    train = SegmentationSet(np.zeros((2, 16, 16, 3), np.uint8), np.zeros((2, 16, 16), bool))
    generated = [np.full((16, 16, 3), 0, np.uint8), np.full((16, 16, 3), 3, np.uint8)]
    config = PseudoLabelConfig(max_rounds=5, patience=1, min_delta=0.01, steps_initial=1, steps_per_round=1)
    result = run_pseudolabel(model, train, train, generated, config, size=16, progress=False)
    # The stand-in's output never changes, so validation IoU is flat and round 1 stops the loop.
    assert [r.round for r in result.history] == [0, 1]
    assert result.history[0].accepted_new == 1 and result.history[0].fallback == 1
    assert result.accepted_round.tolist() == [0, -1]
    assert set(result.alphas) == {0}
    # Validation holds two images of grey level 0 (confidence 0.995): both reach the threshold.
    assert result.history[0].val_confident == 1.0


def test_evaluate_reports_the_share_of_validation_images_reaching_the_threshold():
    confidences = [0.98, 0.9899, 0.9901, 0.999]
    model = PresetLogits([_margin(c) for c in confidences])
    images = np.stack([np.full((16, 16, 3), i, np.uint8) for i in range(4)])
    val = SegmentationSet(images, np.ones((4, 16, 16), bool))
    assert evaluate(model, val, size=16, threshold=0.99)["confident"] == 0.5
    assert evaluate(model, val, size=16, threshold=0.95)["confident"] == 1.0
    assert evaluate(model, val, size=16, threshold=0.9995)["confident"] == 0.0


def test_published_b5_loader_is_strict(tmp_path):
    reference = build_unet(preset("published-b5"))
    state = reference.state_dict()
    good = tmp_path / "pytorch_model_v2.bin"
    torch.save(state, good)
    loaded = load_published(good)
    name = "segmentation_head.0.weight"
    assert torch.equal(loaded.state_dict()[name], state[name])

    state[name] = torch.zeros(3, *state[name].shape[1:])  # a 3-class head cannot load
    bad = tmp_path / "bad.bin"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=name):
        load_published(bad)


def test_saved_weights_carry_their_config(tmp_path):
    config = preset("tiny")
    model = build_unet(config)
    save_unet(model, config, tmp_path / "unet.safetensors")
    loaded, loaded_config = load_unet(tmp_path / "unet.safetensors", "demo")  # file's config wins
    assert loaded_config == config
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# -- the stage, end to end on tiny folders --------------------------------------------------------


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_upscaled(root, count=8, side=48):
    data = _synthetic_set(count, side)
    items, rows = [], []
    for i in range(count):
        mask = data.masks[i].astype(np.uint8) * 255
        items.append((f"e{i}", {RGB_KIND: _png_bytes(data.images[i]), MASK_KIND: _png_bytes(mask)}))
        rows.append({"id": f"e{i}", "caption": f"эмодзи {i}", "split": "val" if i < 2 else "train"})
    write_shards(root / IMAGES_DIR, UPSCALED_PREFIX, items)
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "caption", "split"])
        writer.writeheader()
        writer.writerows(rows)


def _write_generated(root, count=3, side=64):
    data = _synthetic_set(count, side, seed=1)
    for i in range(count):
        folder = root / f"cell{i % 2}" / "kept"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.images[i]).save(folder / f"img{i}.png")
        sidecar = {"prompt": f"улыбка {i}", "seed": 42, "top_k": 2048, "top_p": 0.995, "score": 0.5 + i}
        (folder / f"img{i}.json").write_text(json.dumps(sidecar, ensure_ascii=False), encoding="utf-8")


@pytest.mark.parametrize(("threshold", "method"), [(1.01, "contour"), (0.0, "unet")])
def test_segment_and_stickers_stages_end_to_end(tmp_path, monkeypatch, caplog, threshold, method):
    from stages.segment import SegmentParams, segment
    from stages.stickers import StickersParams, make_stickers

    monkeypatch.chdir(tmp_path)
    _write_upscaled(tmp_path / "data/upscaled")
    _write_generated(tmp_path / "data/generated")
    # A cell an older grid left behind: not in `cells`, so never read.
    (tmp_path / "data/generated/cell9/kept").mkdir(parents=True)
    shutil.copy(
        tmp_path / "data/generated/cell0/kept/img0.png", tmp_path / "data/generated/cell9/kept/old.png"
    )
    params = SegmentParams(
        preset="tiny",
        pseudolabel=PseudoLabelConfig(
            threshold=threshold, max_rounds=1, steps_initial=3, steps_per_round=2, batch_size=4
        ),
    )
    cells = ["cell0", "cell1"]
    with caplog.at_level(logging.WARNING):
        metrics = segment(params, tmp_path / "data/upscaled", tmp_path / "data/segment", False, cells)
    assert "data/generated/cell9" in caplog.text
    out = tmp_path / "data/segment"
    assert metrics["cells"] == cells and metrics["generated_images"] == 3
    compact = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert compact[method] == 3 and compact["unet"] + compact["contour"] == 3 and "variant" not in compact
    assert json.loads((out / "provenance.json").read_text(encoding="utf-8")) == metrics
    assert metrics["methods"] == {
        "unet": 3 if method == "unet" else 0,
        "contour": 3 if method == "contour" else 0,
    }
    assert metrics["variant"] == "unet-tiny-selftrained" and 0 <= metrics["val_iou"] <= 1
    assert (out / "unet.safetensors").is_file()
    rounds = list(csv.DictReader((out / "rounds.csv").read_text(encoding="utf-8").splitlines()))
    assert [r["round"] for r in rounds] == (["0", "1"] if method == "contour" else ["0"])
    assert all(0 <= float(r["val_confident"]) <= 1 for r in rounds)
    assert metrics["val_confident"] == pytest.approx(float(rounds[-1]["val_confident"]), abs=1e-6)
    assert "val_confident" in compact
    labels = list(csv.DictReader((out / "labels.csv").read_text(encoding="utf-8").splitlines()))
    assert [row["mask"] for row in labels] == [
        "cell0/kept/img0.png",
        "cell0/kept/img2.png",
        "cell1/kept/img1.png",
    ]
    assert {row["method"] for row in labels} == {method}
    assert all((out / "masks" / row["mask"]).is_file() for row in labels)
    if method == "unet":  # deterministic outputs: a second run writes the same bytes
        again = tmp_path / "again"
        segment(params, tmp_path / "data/upscaled", again, False, cells)
        for name in (
            "unet.safetensors",
            "labels.csv",
            "rounds.csv",
            "metrics.json",
            "provenance.json",
            "masks/cell1/kept/img1.png",
        ):
            assert (again / name).read_bytes() == (out / name).read_bytes(), name

    stickers = make_stickers(StickersParams(), out, tmp_path / "data/stickers")
    assert stickers["count"] == 3 and stickers["all_valid"], stickers["problems"]
    assert json.loads((tmp_path / "data/stickers/metrics.json").read_text()) == {"count": 3, "valid": 3}
    provenance = json.loads((tmp_path / "data/stickers/provenance.json").read_text())
    assert provenance["methods"] == {method: 3}  # how each was cut: in provenance, beside segment's
    sidecar = json.loads(
        (tmp_path / "data/stickers/images/cell0__kept__img0.json").read_text(encoding="utf-8")
    )
    assert sidecar["prompt"] == "улыбка 0" and sidecar["mask_method"] == method
    manifest = json.loads((tmp_path / "data/stickers/pack/manifest.json").read_text(encoding="utf-8"))
    assert [s["file"] for s in manifest["stickers"]] == [
        "cell0__kept__img0.webp",
        "cell0__kept__img2.webp",
        "cell1__kept__img1.webp",
    ]
    assert (tmp_path / "data/stickers/pack/preview.png").is_file()
