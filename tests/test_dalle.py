"""The transformer: published names and shapes, loss, checkpoints, embeddings."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from emojich.models.checkpoints import CheckpointError
from emojich.models.dalle import MASK_BUFFER_NAMES, Dalle, DalleConfig


def _published_xl_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the published Malevich / Emojich checkpoints, from the format reference."""
    h, vocab, image_vocab = 2048, 16512, 8192
    shapes: dict[str, tuple[int, ...]] = {
        "text_embeddings.weight": (vocab, h),
        "image_embeddings.weight": (image_vocab, h),
        "text_pos_embeddings.weight": (129, h),
        "image_row_embeddings.weight": (32, h),
        "image_col_embeddings.weight": (32, h),
        "transformer.final_layernorm.weight": (h,),
        "transformer.final_layernorm.bias": (h,),
        "to_logits.0.weight": (h,),
        "to_logits.0.bias": (h,),
        "to_logits.1.weight": (vocab + image_vocab, h),
        "to_logits.1.bias": (vocab + image_vocab,),
    }
    for i in range(24):
        layer = f"transformer.layers.{i}."
        for norm in (
            "input_layernorm",
            "before_first_addition_layernorm",
            "post_attention_layernorm",
            "before_second_addition_layernorm",
        ):
            shapes[layer + norm + ".weight"] = (h,)
            shapes[layer + norm + ".bias"] = (h,)
        for name, out_features, in_features in (
            ("attention.query_key_value", 3 * h, h),
            ("attention.dense", h, h),
            ("mlp.dense_h_to_4h", 4 * h, h),
            ("mlp.dense_4h_to_h", h, 4 * h),
        ):
            shapes[layer + name + ".weight"] = (out_features, in_features)
            shapes[layer + name + ".bias"] = (out_features,)
    return shapes


@pytest.mark.parametrize("preset", ["malevich", "emojich"])
def test_xl_on_meta_matches_published_format(preset: str) -> None:
    start = time.perf_counter()
    with torch.device("meta"):
        model = Dalle(DalleConfig.preset(preset))
    assert time.perf_counter() - start < 5.0
    assert model.num_parameters() == 1_310_410_880
    state = model.state_dict()
    assert len(state) == 395
    assert {name: tuple(t.shape) for name, t in state.items()} == _published_xl_shapes()


def test_presets() -> None:
    malevich, emojich = DalleConfig.preset("malevich"), DalleConfig.preset("emojich")
    assert (malevich.format, malevich.loss_img_weight) == ("v3", 7)
    assert (emojich.format, emojich.loss_img_weight) == ("v2", 1000)
    assert malevich.total_vocab_size == 24704 and malevich.seq_length == 1152
    demo = DalleConfig.preset("demo")
    assert demo.vocab_size == 1024 + 8 and demo.image_seq_length == 64
    assert demo.conditioned and demo.text_encoder == "use-m3"
    assert not DalleConfig.preset("demo-bpe").conditioned and not malevich.conditioned
    with pytest.raises(ValueError, match="unknown preset"):
        DalleConfig.preset("huge")
    with pytest.raises(ValueError, match="format"):
        dataclasses.replace(malevich, format="v1")
    with pytest.raises(ValueError, match="divisible"):
        dataclasses.replace(malevich, num_attention_heads=7)


def _tiny(fmt: str = "v3", seed: int = 0) -> Dalle:
    torch.manual_seed(seed)
    return Dalle(dataclasses.replace(DalleConfig.preset("tiny"), format=fmt)).eval()


def _batch(cfg: DalleConfig, b: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(4, cfg.vocab_size - cfg.text_seq_length, (b, cfg.text_seq_length), generator=g)
    text[:, -3:] = 0  # padding
    image = torch.randint(0, cfg.image_vocab_size, (b, cfg.image_seq_length), generator=g)
    return text, image


def test_text_tokens_per_position_pads_and_v2_leading_token() -> None:
    text = torch.tensor([[2, 9, 3, 0, 0, 0, 0, 0]])
    v3 = _tiny("v3").text_tokens(text)
    assert v3.tolist() == [[2, 9, 3, 35, 36, 37, 38, 39]]  # 40 - 8 + i
    v2 = _tiny("v2").text_tokens(text)
    assert v2.tolist() == [[2, 2, 9, 3, 35, 36, 37, 38, 39]]


@pytest.mark.parametrize("fmt", ["v2", "v3"])
def test_logits_shape_and_prefixes(fmt: str) -> None:
    model = _tiny(fmt)
    cfg = model.config
    text, image = _batch(cfg)
    with torch.no_grad():
        full = model(text, image)
        prefix = model(text, image[:, :5])
        text_only = model(text)
    assert full.shape == (2, cfg.seq_length, cfg.total_vocab_size)
    assert text_only.shape == (2, cfg.text_positions, cfg.total_vocab_size)
    # Causal: a prefix gives the same logits as the full sequence at its positions.
    torch.testing.assert_close(prefix, full[:, : prefix.shape[1]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["v2", "v3"])
def test_loss_matches_hand_computed_weighted_cross_entropy(fmt: str) -> None:
    model = _tiny(fmt)
    cfg = model.config
    text, image = _batch(cfg, b=2)
    with torch.no_grad():
        logits = model(text, image)
        loss, parts = model(text, image, return_loss=True)
    tokens = model.text_tokens(text)
    sequence = torch.cat((tokens, image), dim=1)  # label of position p is sequence[p + 1]
    t, vocab = cfg.text_seq_length, cfg.vocab_size
    text_terms, image_terms = [], []
    for b in range(2):
        for p in range(sequence.shape[1] - 1):
            if p >= logits.shape[1]:
                break
            label = int(sequence[b, p + 1])
            if p < t:  # text positions: text vocabulary (v3's last one holds the first image code)
                text_terms.append(-F.log_softmax(logits[b, p, :vocab], dim=-1)[label])
            else:
                image_terms.append(-F.log_softmax(logits[b, p, vocab:], dim=-1)[label])
    loss_text, loss_img = torch.stack(text_terms).mean(), torch.stack(image_terms).mean()
    w = cfg.loss_img_weight
    assert len(text_terms) == 2 * t
    assert len(image_terms) == 2 * (cfg.image_seq_length - (1 if fmt == "v3" else 0))
    torch.testing.assert_close(parts["text"], loss_text)
    torch.testing.assert_close(parts["image"], loss_img)
    torch.testing.assert_close(loss, (loss_text + w * loss_img) / (w + 1))


def test_loss_backward_reaches_every_parameter() -> None:
    model = _tiny("v2").train()
    text, image = _batch(model.config)
    loss, _ = model(text, image, return_loss=True)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_embedding_gradient_is_shrunk_tenfold(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny("v2")  # eval: no dropout, so both passes are the same function
    text, image = _batch(model.config)

    def grads() -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        loss, _ = model(text, image, return_loss=True)
        loss.backward()
        return loss.detach(), model.image_row_embeddings.weight.grad.clone()

    loss_shrunk, grad_shrunk = grads()
    monkeypatch.setattr(model, "_shrink_gradient", lambda e: e)
    loss_plain, grad_plain = grads()
    torch.testing.assert_close(loss_shrunk, loss_plain)  # the value is unchanged
    torch.testing.assert_close(grad_shrunk, 0.1 * grad_plain)


def test_loss_needs_full_image() -> None:
    model = _tiny()
    text, image = _batch(model.config)
    with pytest.raises(ValueError, match="all 16 image codes"):
        model(text, image[:, :5], return_loss=True)
    with pytest.raises(ValueError, match="text_ids"):
        model(text[:, :3], image)


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = _tiny("v2")
    path = tmp_path / "dalle.safetensors"
    model.save(path)
    loaded = Dalle.load(path).eval()
    assert loaded.config == model.config
    text, image = _batch(model.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(text, image), model(text, image), atol=0, rtol=0)
    assert not any(name.endswith("_mask") for name in loaded.state_dict())
    Dalle.load(path, expected=model.config)  # same config: fine


def test_load_rejects_other_config(tmp_path: Path) -> None:
    path = tmp_path / "dalle.safetensors"
    _tiny("v2").save(path)
    with pytest.raises(CheckpointError, match="format"):
        Dalle.load(path, expected=DalleConfig.preset("tiny"))
    with pytest.raises(CheckpointError, match="num_layers"):
        Dalle.load(path, expected=DalleConfig.preset("demo"))


def _published_state(model: Dalle, with_masks: bool) -> dict[str, torch.Tensor]:
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    if with_masks:
        transformer = model.transformer
        for name, mask in zip(
            MASK_BUFFER_NAMES,
            (transformer.row_mask, transformer.col_mask, transformer.conv_mask),
            strict=True,
        ):
            state[name] = mask.clone()
    return state


@pytest.mark.parametrize("with_masks", [True, False])
def test_load_published_with_and_without_mask_buffers(tmp_path: Path, with_masks: bool) -> None:
    source = _tiny("v3", seed=3)
    path = tmp_path / "pytorch_model_v3.bin"
    torch.save(_published_state(source, with_masks), path)
    target = _tiny("v3", seed=4).load_published(path)
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


def test_load_published_names_missing_tensor(tmp_path: Path) -> None:
    state = _published_state(_tiny(), with_masks=True)
    del state["transformer.layers.1.attention.dense.weight"]
    path = tmp_path / "broken.bin"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing.*transformer\.layers\.1\.attention\.dense\.weight"):
        _tiny().load_published(path)


def test_load_published_names_misshaped_tensor(tmp_path: Path) -> None:
    state = _published_state(_tiny(), with_masks=False)
    state["to_logits.1.weight"] = torch.zeros(5, 64)
    path = tmp_path / "broken.bin"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"to_logits\.1\.weight has shape \(5, 64\)"):
        _tiny().load_published(path)
