"""VQGAN: published key layout, published-format loading, our checkpoints, DWT, training."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from emojich.models.checkpoints import CheckpointError
from emojich.models.dwt import InverseHaar, haar_dwt
from emojich.models.quantizers import QuantizerTraining
from emojich.models.vqgan import (
    VQGan,
    VQGanConfig,
    codebook_usage,
    reconstruction_psnr,
    saturating,
    train_vqgan,
)

TINY = VQGanConfig.preset("tiny")
TINY_DWT = dataclasses.replace(TINY, dwt=True)


def _meta_state(name: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return VQGan(VQGanConfig.preset(name)).state_dict()


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


# -- the published layout (full size, on the meta device) ---------------------------------------


def test_sber_preset_key_count_and_families() -> None:
    keys = list(_meta_state("sber"))
    # Derived from the published config: a residual block has 8 tensors (+2 for a 1x1 shortcut
    # where the width changes), an attention block 10, a resampler 2. Encoder: 2 blocks per
    # level over widths 128,128,256,512, attention (2 blocks) at level 3, 3 downsamplers, mid
    # 26, conv_in/norm_out/conv_out 6 -> 126. Decoder: 3 blocks per level, attention (3) at
    # up.3, 3 upsamplers, mid 26, conv_in/norm_out/conv_out 6 -> 168. Quantizer and 1x1s: 7.
    assert sum(k.startswith("encoder.") for k in keys) == 126
    assert sum(k.startswith("decoder.") for k in keys) == 168
    assert len(keys) == 301
    assert sum(".attn." in k and k.startswith("encoder.down.3.") for k in keys) == 20
    assert sum(".attn." in k and k.startswith("decoder.up.3.") for k in keys) == 30
    assert not any(".attn." in k for k in keys if k.startswith(("encoder.down.0", "decoder.up.0")))
    assert sum(k.endswith("nin_shortcut.weight") for k in keys) == 4


def test_sber_preset_shapes() -> None:
    shapes = _shapes(_meta_state("sber"))
    expected = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.block.1.conv2.weight": (128, 128, 3, 3),
        "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.2.downsample.conv.weight": (256, 256, 3, 3),
        "encoder.down.3.attn.1.proj_out.weight": (512, 512, 1, 1),
        "encoder.down.3.attn.0.norm.bias": (512,),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.mid.block_2.norm2.weight": (512,),
        "encoder.norm_out.weight": (512,),
        "encoder.conv_out.weight": (256, 512, 3, 3),
        "quant_conv.weight": (256, 256, 1, 1),
        "quantize.proj.weight": (8192, 256, 1, 1),
        "quantize.proj.bias": (8192,),
        "quantize.embed.weight": (8192, 256),
        "post_quant_conv.weight": (256, 256, 1, 1),
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.mid.block_1.conv1.weight": (512, 512, 3, 3),
        "decoder.up.3.block.2.conv2.weight": (512, 512, 3, 3),
        "decoder.up.3.attn.2.v.weight": (512, 512, 1, 1),
        "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.2.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.1.block.0.conv1.weight": (128, 256, 3, 3),
        "decoder.up.1.upsample.conv.weight": (128, 128, 3, 3),
        "decoder.up.0.block.2.norm2.bias": (128,),
        "decoder.norm_out.weight": (128,),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    assert {key: shapes.get(key) for key in expected} == expected
    for absent in ("encoder.down.3.downsample.conv.weight", "decoder.up.0.upsample.conv.weight"):
        assert absent not in shapes


def test_sber_dwt_preset_layout() -> None:
    shapes = _shapes(_meta_state("sber-dwt"))
    assert shapes["decoder.post_quant_conv.weight"] == (256, 256, 1, 1)
    assert shapes["decoder.decoder.conv_out.weight"] == (12, 128, 3, 3)
    assert shapes["decoder.decoder.up.3.attn.0.q.weight"] == (512, 512, 1, 1)
    assert shapes["decoder.idwt.g0_col"] == (1, 1, 2, 1)
    assert shapes["decoder.idwt.g1_row"] == (1, 1, 1, 2)
    assert "post_quant_conv.weight" not in shapes
    # Same encoder and codebook as the plain model; decoder keys move under decoder.decoder.
    plain = _shapes(_meta_state("sber"))
    assert {k: v for k, v in shapes.items() if k.startswith(("encoder.", "quantize."))} == {
        k: v for k, v in plain.items() if k.startswith(("encoder.", "quantize."))
    }
    assert len(shapes) == 301 + 4  # post_quant_conv moved under decoder, 4 filter buffers added


def test_grid_sizes() -> None:
    assert VQGanConfig.preset("sber").grid_size == 32
    assert VQGanConfig.preset("sber-dwt").output_resolution == 512
    assert VQGanConfig.preset("demo").grid_size == 8
    with pytest.raises(ValueError, match="unknown VQGAN preset"):
        VQGanConfig.preset("nope")


# -- real passes on the tiny preset ------------------------------------------------------------


def test_encode_decode_shapes_and_range() -> None:
    torch.manual_seed(0)
    model = VQGan(TINY).eval()
    images = torch.rand(2, 3, 16, 16)
    codes = model.encode(images)
    assert codes.dtype == torch.long and codes.shape == (2, TINY.grid_size**2)
    assert int(codes.min()) >= 0 and int(codes.max()) < TINY.codebook_size
    decoded = model.decode(codes)
    assert decoded.shape == (2, 3, 16, 16)
    assert float(decoded.min()) >= 0.0 and float(decoded.max()) <= 1.0
    assert torch.equal(model.encode(images), codes)  # argmax: deterministic


def test_encode_scales_input_to_minus_one_one() -> None:
    torch.manual_seed(0)
    model = VQGan(TINY).eval()
    images = torch.rand(1, 3, 16, 16)
    seen = {}

    def remember_input(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen["x"] = args[0]

    model.encoder.conv_in.register_forward_hook(remember_input)
    model.encode(images)
    assert torch.allclose(seen["x"], 2 * images - 1)


def test_decode_is_one_hot_times_codebook() -> None:
    torch.manual_seed(0)
    model = VQGan(TINY).eval()
    codes = torch.randint(0, TINY.codebook_size, (2, 4))
    one_hot = torch.nn.functional.one_hot(codes, TINY.codebook_size).float()
    z = (one_hot @ model.quantize.embed.weight).reshape(2, 2, 2, -1).permute(0, 3, 1, 2)
    expected = (model.decoder(model.post_quant_conv(z)).clamp(-1, 1) + 1) / 2
    assert torch.allclose(model.decode(codes), expected, atol=1e-6)


def test_dwt_decoder_doubles_resolution() -> None:
    torch.manual_seed(0)
    model = VQGan(TINY_DWT).eval()
    codes = model.encode(torch.rand(2, 3, 16, 16))
    assert model.decode(codes).shape == (2, 3, 32, 32)


# -- Haar ------------------------------------------------------------------------------------------


def test_haar_round_trip() -> None:
    torch.manual_seed(0)
    image = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    coeffs = haar_dwt(image)
    assert coeffs.shape == (2, 12, 4, 6)
    assert torch.allclose(InverseHaar().double()(coeffs), image, atol=1e-12)


def test_haar_band_layout() -> None:
    # A constant image lives entirely in the low band (channels 0..2); a horizontal stripe
    # pattern (rows alternate) is purely vertical detail: band LH of each colour.
    flat = torch.ones(1, 3, 4, 4)
    coeffs = haar_dwt(flat)
    assert torch.allclose(coeffs[:, :3], torch.full((1, 3, 2, 2), 2.0))
    assert torch.allclose(coeffs[:, 3:], torch.zeros(1, 9, 2, 2))
    stripes = torch.tensor([1.0, -1.0]).repeat(2).reshape(1, 1, 4, 1).expand(1, 3, 4, 4)
    high = haar_dwt(stripes)[:, 3:].reshape(1, 3, 3, 2, 2)
    assert torch.allclose(high[:, :, 0], torch.full((1, 3, 2, 2), 2.0))  # LH
    assert torch.allclose(high[:, :, 1:], torch.zeros(1, 3, 2, 2, 2))


# -- published-format loading ------------------------------------------------------------------


def _taming_checkpoint(model: VQGan) -> dict:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    state["loss.perceptual_loss.net.slice1.0.weight"] = torch.zeros(4, 3, 3, 3)
    return {"state_dict": state, "global_step": 1}


def test_load_published_taming_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    source = VQGan(TINY)
    path = tmp_path / "vqgan.gumbelf8-sber.model.ckpt"
    torch.save(_taming_checkpoint(source), path)
    loaded = VQGan.load_published(path, config=TINY)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_load_published_dwt_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    source = VQGan(TINY_DWT)
    state = {f"model.{k}": v.clone() for k, v in source.state_dict().items()}
    # GumbelVQ also builds an unused top-level post_quant_conv in its DWT variant.
    state["model.post_quant_conv.weight"] = torch.zeros(TINY.z_channels, TINY.embed_dim, 1, 1)
    state["model.post_quant_conv.bias"] = torch.zeros(TINY.z_channels)
    path = tmp_path / "vqgan.gumbelf8-sber-dwt.model.ckpt"
    torch.save({"state_dict": state}, path)
    loaded = VQGan.load_published(path, config=TINY_DWT)
    assert loaded.config.dwt
    images = torch.rand(1, 3, 16, 16)
    assert torch.equal(loaded.decode(loaded.encode(images)), source.eval().decode(source.encode(images)))
    with pytest.raises(CheckpointError, match="DWT"):
        VQGan.load_published(path, config=TINY)


def test_load_published_rejects_missing_and_misshaped(tmp_path) -> None:
    checkpoint = _taming_checkpoint(VQGan(TINY))
    del checkpoint["state_dict"]["encoder.down.0.block.0.conv1.weight"]
    path = tmp_path / "missing.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"encoder\.down\.0\.block\.0\.conv1\.weight"):
        VQGan.load_published(path, config=TINY)

    checkpoint = _taming_checkpoint(VQGan(TINY))
    checkpoint["state_dict"]["quantize.embed.weight"] = torch.zeros(TINY.codebook_size + 1, TINY.embed_dim)
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"quantize\.embed\.weight has shape"):
        VQGan.load_published(path, config=TINY)

    checkpoint = _taming_checkpoint(VQGan(TINY))
    checkpoint["state_dict"]["encoder.extra.weight"] = torch.zeros(1)
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\): encoder\.extra\.weight"):
        VQGan.load_published(path, config=TINY)


# -- our checkpoints ---------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = VQGan(TINY).eval()
    path = tmp_path / "vqgan.safetensors"
    model.save(path)
    loaded = VQGan.load(path)
    assert loaded.config == TINY
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded.encode(images), model.encode(images))
    assert VQGan.load(path, expected=TINY).config == TINY
    with pytest.raises(CheckpointError, match="codebook_size=32 \\(expected 64\\)"):
        VQGan.load(path, expected=dataclasses.replace(TINY, codebook_size=64))


def test_load_rejects_foreign_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match="not an emojich-vqgan checkpoint"):
        VQGan.load(path)


# -- metrics and training ------------------------------------------------------------------------


def test_codebook_usage() -> None:
    usage = codebook_usage(torch.tensor([[0, 0, 1, 1]]), 4)
    assert usage["used_fraction"] == 0.5
    assert usage["perplexity"] == pytest.approx(2.0)


def _synthetic_emoji(count: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Flat-coloured discs and squares on white: crude stand-ins for emoji, uint8 NHWC."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.full((count, size, size, 3), 255, dtype=torch.uint8)
    for index in range(count):
        colour = torch.randint(0, 256, (3,), generator=generator, dtype=torch.uint8)
        cy, cx, radius = (torch.randint(4, size - 4, (3,), generator=generator)).tolist()
        radius = max(3, radius // 2)
        if index % 2:
            mask = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2
        else:
            mask = ((ys - cy).abs() <= radius) & ((xs - cx).abs() <= radius)
        images[index][mask] = colour
    return images


def test_training_improves_psnr_and_is_deterministic() -> None:
    images = _synthetic_emoji(128)
    torch.manual_seed(1)
    model = VQGan(TINY)
    initial = reconstruction_psnr(model, images)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = train_vqgan(model, images, steps=60, batch_size=8, lr=3e-3, seed=0, progress=False)
    assert metrics["psnr"] > initial + 5.0, (initial, metrics)
    assert metrics["loss_last"] < metrics["loss_first"]
    assert 0.0 < metrics["codebook_used_fraction"] <= 1.0

    again = VQGan(TINY)
    again.load_state_dict(before)
    repeat = train_vqgan(again, images[:32], steps=3, batch_size=4, seed=3, progress=False)
    model.load_state_dict(before)
    first = train_vqgan(model, images[:32], steps=3, batch_size=4, seed=3, progress=False)
    assert repeat["loss_last"] == first["loss_last"]
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )


# -- the EMA quantizer (demo tokenizer) ---------------------------------------------------------

TINY_EMA = dataclasses.replace(TINY, quantizer="ema")


def test_demo_preset_uses_the_ema_quantizer_and_its_checkpoint_has_no_proj() -> None:
    assert VQGanConfig.preset("demo").quantizer == "ema"
    assert VQGanConfig.preset("sber").quantizer == "gumbel"
    keys = set(VQGan(TINY_EMA).state_dict())
    assert "quantize.embed.weight" in keys and "quantize.proj.weight" not in keys
    # EMA statistics are training state, not part of the checkpoint.
    assert not any("cluster_size" in k or "embed_sum" in k for k in keys)
    with pytest.raises(ValueError, match="quantizer must be one of"):
        VQGanConfig(quantizer="fsq")


def test_ema_encode_is_the_nearest_codebook_entry_and_decodes_through_the_lookup() -> None:
    torch.manual_seed(0)
    model = VQGan(TINY_EMA).eval()
    images = torch.rand(3, 3, 16, 16)
    latents = model.latents(images)
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    nearest = torch.cdist(flat, model.quantize.embed.weight).argmin(dim=1).reshape(3, -1)
    assert torch.equal(model.encode(images), nearest)
    codes = model.encode(images)
    side = TINY_EMA.grid_size
    z_q = model.quantize.embed.weight[codes].reshape(3, side, side, -1).permute(0, 3, 1, 2)
    expected = (model.decode_latents(z_q).clamp(-1, 1) + 1) / 2
    assert torch.allclose(model.decode(codes), expected)


def test_ema_training_beats_gumbel_at_equal_budget() -> None:
    """Same encoder, decoder, data and steps: the EMA quantizer reconstructs better (on the demo
    set the gap is 16 dB against 20 dB, with Gumbel's decoder drawing the average brown)."""
    images = _synthetic_emoji(128)
    scores = {}
    for quantizer in ("gumbel", "ema"):
        torch.manual_seed(1)
        model = VQGan(dataclasses.replace(TINY, quantizer=quantizer))
        metrics = train_vqgan(model, images, steps=120, batch_size=16, lr=3e-3, seed=0, progress=False)
        scores[quantizer] = metrics["psnr"]
        if quantizer == "ema":
            assert metrics["codebook_used_fraction"] > 0.5  # dead codes were restarted
    assert scores["ema"] > scores["gumbel"] + 1.0, scores


def test_ema_dead_codes_are_restarted_on_the_batch_latents() -> None:
    torch.manual_seed(0)
    quantizer = VQGan(TINY_EMA).quantize
    latents = torch.randn(2, TINY_EMA.embed_dim, 4, 4) + 10.0  # far from every initial entry
    step = quantizer.train_step(latents, 0.0, QuantizerTraining(), torch.Generator().manual_seed(0))
    flat = latents.permute(0, 2, 3, 1).reshape(-1, TINY_EMA.embed_dim)
    # Every entry started dead: the ones no latent chose this step now sit on a batch latent
    # (the chosen ones moved towards their latents' mean by EMA instead).
    chosen = torch.zeros(TINY_EMA.codebook_size, dtype=torch.bool)
    chosen[step.codes.flatten()] = True
    distance = (
        torch.cdist(quantizer.embed.weight[~chosen], flat, compute_mode="donot_use_mm_for_euclid_dist")
        .min(dim=1)
        .values
    )
    assert (~chosen).sum() >= TINY_EMA.codebook_size // 2 and distance.max() < 1e-3
    assert step.z_q.shape == latents.shape and step.loss > 0


def test_saved_quantizer_must_match_and_published_loading_refuses_ema(tmp_path) -> None:
    path = tmp_path / "vqgan.safetensors"
    VQGan(TINY_EMA).save(path)
    assert VQGan.load(path, expected=TINY_EMA).config.quantizer == "ema"
    with pytest.raises(CheckpointError, match="quantizer='ema'"):
        VQGan.load(path, expected=TINY)
    published = tmp_path / "vqgan.gumbelf8-sber.model.ckpt"
    torch.save(_taming_checkpoint(VQGan(TINY)), published)
    with pytest.raises(CheckpointError, match="Gumbel quantizer"):
        VQGan.load_published(published, config=TINY_EMA)


def test_decoder_learns_to_saturate_white_backgrounds() -> None:
    """Overshooting white costs nothing once clamped, so the loss lets the decoder saturate:
    the background of a reconstruction is white, not 240-grey with a darker frame."""
    target = torch.tensor([1.0, 1.0, 0.2, -1.0])
    recon = torch.tensor([1.3, 0.9, 0.5, -1.4], requires_grad=True)
    shown = saturating(recon, target)
    assert shown.tolist() == pytest.approx([1.0, 0.9, 0.5, -1.0])
    shown.sum().backward()
    assert recon.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
