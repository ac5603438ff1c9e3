"""Cached sampling: exactness against the full forward, reproducibility, filters, arguments."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from emojich.generate.sampling import (
    IncrementalDecoder,
    SampleResult,
    _attend_segments,
    _attend_segments_flash,
    _text_and_image_segments,
    filter_logits,
    generate,
    guide,
    key_segments,
)
from emojich.models.dalle import Dalle, DalleConfig


def _model(fmt: str = "v3", preset: str = "tiny", scale: float = 4.0, seed: int = 0) -> Dalle:
    """A random model with weights scaled up so attention is peaked and a wrong mask shows."""
    torch.manual_seed(seed)
    model = Dalle(dataclasses.replace(DalleConfig.preset(preset), format=fmt)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" not in name and "to_logits.0" not in name:
                param.mul_(scale)
    return model


def _text(cfg: DalleConfig, captions: int = 1, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(
        4, cfg.vocab_size - cfg.text_seq_length, (captions, cfg.text_seq_length), generator=g
    )
    text[:, -2:] = 0
    return text


@pytest.mark.parametrize("fmt", ["v2", "v3"])
@pytest.mark.parametrize("preset", ["tiny", "demo-bpe"])
def test_cached_decoding_equals_full_forward(fmt: str, preset: str) -> None:
    model = _model(fmt, preset, scale=2.0 if preset == "demo-bpe" else 4.0)
    cfg = model.config
    assert set(cfg.layer_masks or ()) == {"row", "column", "conv"}
    text = _text(cfg, captions=2)
    image = torch.randint(
        0, cfg.image_vocab_size, (2, cfg.image_seq_length), generator=torch.Generator().manual_seed(7)
    )
    with torch.no_grad():
        full = model(text, image)[:, cfg.text_positions - 1 :, cfg.vocab_size :]
    decoder = IncrementalDecoder(model, batch_size=3)  # larger cache than the batch is fine
    steps = [decoder.prefill(text)]
    steps += [decoder.step(image[:, j]) for j in range(cfg.image_seq_length - 1)]
    cached = torch.stack(steps, dim=1)
    assert cached.shape == (2, cfg.image_seq_length, cfg.image_vocab_size)
    assert (cached - full[:, : cfg.image_seq_length]).abs().max().item() <= 1e-4
    with pytest.raises(RuntimeError, match="already"):
        decoder.step(image[:, -1])


def test_decode_reads_only_allowed_keys() -> None:
    # XL row layers: deep in the image, text + 33 keys in two contiguous runs.
    first = 128
    row = key_segments("row", 128, 32, "v3", 11, first)[700]
    assert [(s.start, s.stop, s.step) for s in row] == [(0, 128, None), (128 + 700 - 32, 128 + 700 + 1, None)]
    column = key_segments("column", 128, 32, "v3", 11, first)[700]
    assert column[1].step == 32 and column[1].stop == 128 + 700 + 1
    conv = key_segments("conv", 128, 32, "v3", 11, first)[16 * 32 + 16]
    assert len(conv) == 1 and len(conv[0]) == 128 + 5 * 11 + 6


def _greedy(model: Dalle, text: torch.Tensor) -> torch.Tensor:
    cfg = model.config
    image = torch.empty(1, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(cfg.image_seq_length):
            logits = model(text, image)[:, -1, cfg.vocab_size :]
            image = torch.cat((image, logits.argmax(-1, keepdim=True)), dim=1)
    return image


@pytest.mark.parametrize("fmt", ["v2", "v3"])
def test_top_k_one_is_greedy(fmt: str) -> None:
    model = _model(fmt)
    text = _text(model.config)
    result = generate(model, text[0], images_num=2, top_k=1, top_p=1.0, seed=3, progress=False)
    expected = _greedy(model, text)
    assert torch.equal(result.codes, expected.expand(2, -1))


def test_same_seed_same_images_whatever_the_batch_size() -> None:
    model = _model()
    text = _text(model.config)
    one = generate(model, text, images_num=3, top_k=16, top_p=0.95, seed=11, batch_size=1, progress=False)
    three = generate(model, text, images_num=3, top_k=16, top_p=0.95, seed=11, batch_size=3, progress=False)
    two = generate(model, text, images_num=3, top_k=16, top_p=0.95, seed=11, batch_size=2, progress=False)
    assert isinstance(one, SampleResult)
    assert one.codes.shape == (3, 16) and one.codes.dtype == torch.long
    assert torch.equal(one.codes, three.codes) and torch.equal(one.codes, two.codes)
    torch.testing.assert_close(one.scores, three.scores)
    other = generate(model, text, images_num=3, top_k=16, top_p=0.95, seed=12, batch_size=3, progress=False)
    assert not torch.equal(other.codes, one.codes)
    assert not torch.equal(one.codes[0], one.codes[1])  # images of one run differ from each other


def test_on_progress_counts_every_token_and_changes_no_image() -> None:
    model = _model()
    text = _text(model.config)
    reports: list[tuple[int, int]] = []
    kwargs = {"images_num": 3, "top_k": 16, "seed": 11, "batch_size": 2, "progress": False}
    reported = generate(model, text, on_progress=lambda done, total: reports.append((done, total)), **kwargs)
    plain = generate(model, text, **kwargs)
    assert torch.equal(reported.codes, plain.codes)
    steps = model.config.image_seq_length
    assert len(reports) == 2 * steps  # a report per step of each of the two batches
    assert {total for _, total in reports} == {3 * steps}
    dones = [done for done, _ in reports]
    assert dones == sorted(dones) and dones[0] == 2 and dones[-1] == 3 * steps


def test_scores_are_mean_nll_under_the_raw_model() -> None:
    model = _model("v2")
    cfg = model.config
    text = _text(cfg, captions=2)
    result = generate(model, text, images_num=2, top_k=8, top_p=0.9, temperature=0.7, seed=1, progress=False)
    assert result.codes.shape == (4, cfg.image_seq_length)
    captions = text.repeat_interleave(2, dim=0)  # caption-major order
    with torch.no_grad():
        logits = model(captions, result.codes)[:, cfg.text_positions - 1 :, cfg.vocab_size :]
    nll = -F.log_softmax(logits, dim=-1).gather(-1, result.codes.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(result.scores, nll.mean(dim=1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", ["tiny", "demo-bpe"])
def test_bf16_decoding_on_cpu_reads_the_cache_in_place_and_stays_near_fp32(preset: str) -> None:
    model = _model("v2", preset, scale=2.0)
    cfg = model.config
    text = _text(cfg, captions=2)
    image = torch.randint(
        0, cfg.image_vocab_size, (2, cfg.image_seq_length), generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        full = model(text, image)[:, cfg.text_positions - 1 :, cfg.vocab_size :][:, : cfg.image_seq_length]
    model = model.to(torch.bfloat16)
    errors = {}
    for attend in (_attend_segments_flash, _attend_segments):
        decoder = IncrementalDecoder(model, batch_size=2)
        assert decoder.attend is _attend_segments_flash  # bf16 on the CPU
        decoder.attend = attend
        steps = [decoder.prefill(text)] + [decoder.step(image[:, j]) for j in range(cfg.image_seq_length - 1)]
        errors[attend] = (torch.stack(steps, dim=1) - full).abs().max().item()
    # The flash kernel scales and accumulates in fp32: no further from fp32 than bf16 matmuls are.
    assert errors[_attend_segments_flash] <= 1.5 * errors[_attend_segments] + 1e-3
    assert errors[_attend_segments_flash] < 0.05 * full.abs().max().item()


@pytest.mark.parametrize("preset", ["tiny", "demo-bpe"])
def test_flash_segments_read_the_same_keys_text_first(preset: str) -> None:
    cfg = DalleConfig.preset(preset)
    for kind in ("row", "column", "conv"):
        rows = key_segments(
            kind,
            cfg.text_seq_length,
            cfg.image_tokens_per_dim,
            cfg.format,
            cfg.conv_kernel,
            cfg.text_positions,
        )
        for segments in rows:
            flash = _text_and_image_segments(segments, cfg.text_positions)
            text, image = flash  # the text (all but v2's last position), then the image keys
            assert (
                text.start == 0
                and text.step is None
                and text.stop in (cfg.text_seq_length, cfg.text_positions)
            )
            assert _positions([image])[0] >= cfg.text_positions
            assert _positions(flash) == _positions(segments)


def _positions(segments) -> list[int]:
    return sorted(
        p
        for s in segments
        for p in (range(s.start, s.stop, s.step or 1) if isinstance(s, slice) else s.tolist())
    )


def test_one_captions_batch_reads_its_text_keys_from_one_row() -> None:
    model = _model("v2", "demo-bpe", scale=2.0).to(torch.bfloat16)
    cfg = model.config
    text = _text(cfg)
    image = torch.randint(0, cfg.image_vocab_size, (3, 12), generator=torch.Generator().manual_seed(4))
    batch = IncrementalDecoder(model, batch_size=3)
    logits = [batch.prefill(text.expand(3, -1))]
    assert batch.shared == cfg.text_positions
    logits += [batch.step(image[:, j]) for j in range(image.shape[1])]
    for row in range(3):  # each image as if it ran alone
        alone = IncrementalDecoder(model, batch_size=1)
        expected = [alone.prefill(text)] + [
            alone.step(image[row : row + 1, j]) for j in range(image.shape[1])
        ]
        assert alone.shared == 0
        for got, want in zip(logits, expected, strict=True):
            assert (got[row] - want[0]).abs().max() < 0.05 * want.abs().max()
    mixed = IncrementalDecoder(model, batch_size=2)
    mixed.prefill(torch.cat([text, _text(cfg, seed=6)]))
    assert mixed.shared == 0
    fp32 = IncrementalDecoder(model.float(), batch_size=3)
    fp32.prefill(text.expand(3, -1))
    assert fp32.shared == 0  # the fp32 path keeps every row's own keys


def test_bfloat16_on_cpu() -> None:
    model = _model(scale=1.0)
    text = _text(model.config)
    autocast = generate(model, text, images_num=2, top_k=8, seed=2, dtype=torch.bfloat16, progress=False)
    native = generate(model.to(torch.bfloat16), text, images_num=2, top_k=8, seed=2, progress=False)
    for result in (autocast, native):
        assert result.codes.shape == (2, 16)
        assert int(result.codes.min()) >= 0 and int(result.codes.max()) < model.config.image_vocab_size
        assert torch.isfinite(result.scores).all()


def test_filter_top_k() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5], [0.0, -1.0, 5.0, 4.0]])
    out = filter_logits(logits, top_k=1)
    assert torch.equal(out.argmax(-1), logits.argmax(-1))
    assert torch.isinf(out).sum(dim=-1).tolist() == [3, 3]
    two = filter_logits(logits, top_k=2)
    assert torch.equal(
        torch.isfinite(two), torch.tensor([[False, True, True, False], [False, False, True, True]])
    )
    assert torch.equal(filter_logits(logits, top_k=100), logits)


@pytest.mark.parametrize(("top_p", "kept"), [(0.45, 1), (0.79, 2), (0.81, 3), (0.96, 4), (1.0, 4)])
def test_filter_top_p_keeps_smallest_set_reaching_p(top_p: float, kept: int) -> None:
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])  # sorted: 0.5, 0.3, 0.15, 0.05
    out = filter_logits(probs.log().unsqueeze(0), top_k=4, top_p=top_p)[0]
    finite = torch.isfinite(out)
    assert int(finite.sum()) == kept
    order = probs.argsort(descending=True)
    assert finite[order[:kept]].all()
    torch.testing.assert_close(out[finite], probs.log()[finite])


def test_bad_arguments() -> None:
    model = _model()
    text = _text(model.config)
    for kwargs, message in [
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"images_num": 0}, "images_num"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
    ]:
        with pytest.raises(ValueError, match=message):
            generate(model, text, progress=False, **kwargs)
    with pytest.raises(ValueError, match="text_ids"):
        generate(model, text[:, :3], progress=False)
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(torch.zeros(1, 4), top_k=0)


def test_guidance_one_is_the_plain_sampler_and_guided_images_are_reproducible() -> None:
    model = _model("v2")
    text = _text(model.config)
    kwargs = dict(images_num=3, top_k=16, top_p=0.95, seed=11, progress=False)
    plain = generate(model, text, **kwargs)
    assert torch.equal(generate(model, text, guidance=1.0, **kwargs).codes, plain.codes)
    guided = generate(model, text, guidance=3.0, batch_size=3, **kwargs)
    assert not torch.equal(guided.codes, plain.codes)
    # An image depends on its own seed only, not on the batch it ran in, with guidance too.
    assert torch.equal(generate(model, text, guidance=3.0, batch_size=1, **kwargs).codes, guided.codes)
    with pytest.raises(ValueError, match="guidance"):
        generate(model, text, guidance=0.5, **kwargs)


def test_guidance_scores_stay_the_conditional_models_nll() -> None:
    """Scores rank images by the model's own p(image | caption), whatever the sampler drew from."""
    model = _model("v2")
    cfg = model.config
    text = _text(cfg)
    result = generate(model, text, images_num=2, top_k=8, seed=1, guidance=2.5, progress=False)
    with torch.no_grad():
        logits = model(text.expand(2, -1), result.codes)[:, cfg.text_positions - 1 :, cfg.vocab_size :]
    nll = -F.log_softmax(logits, dim=-1).gather(-1, result.codes.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(result.scores, nll.mean(dim=1), atol=1e-4, rtol=1e-4)


def test_guide_amplifies_what_the_caption_adds() -> None:
    conditional = torch.tensor([[2.0, 0.0, 0.0]])
    unconditional = torch.tensor([[0.0, 0.0, 0.0]])
    torch.testing.assert_close(guide(conditional, unconditional, 1.0), torch.log_softmax(conditional, -1))
    strong = torch.softmax(guide(conditional, unconditional, 3.0), -1)
    assert strong[0, 0] > torch.softmax(conditional, -1)[0, 0]
