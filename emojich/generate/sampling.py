"""Fast image sampling from the ruDALL-E transformer with a static key/value cache.

Per image token the release re-normalises and re-projects the whole sequence to logits,
grows its cache by concatenation and scores images with a second forward pass. Here:

- keys and values live in one cache `[layers, batch, heads, seq, head_dim]` allocated once
  and written by position;
- the text is run once (prefill), then each step embeds and runs a single token (decode);
- a step computes logits for that one position and over the image vocabulary only
  (a row slice of `to_logits`);
- attention reads only the keys the layer's sparse mask allows: text plus the last `grid + 1`
  image keys for row layers, text plus a strided same-column view for column layers, text
  plus a gathered neighbourhood for the conv layer. The key sets are derived from the very
  masks the full forward uses, so cached logits equal full-forward logits;
- bf16 / fp16 caches on the CPU attend with torch's flash-attention kernel, which reads the
  cache in place, and a batch of one caption runs and keeps its text once, in row 0 (the text is
  most of the keys a step reads; `IncrementalDecoder.shared`);
- image scores (mean negative log-likelihood of the sampled codes under the model's raw,
  unfiltered temperature-1 distribution over the image vocabulary) are accumulated from the
  same logits, with no second pass. Raw rather than filtered: a score should rank images by
  how likely the model finds them, not by the sampler settings that produced them.

Reproducibility: image i draws its random numbers from its own CPU generator seeded from
`(seed, i)`, by inverse-CDF sampling, so an image does not depend on the batch it ran in.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from emojich.foundation.progress import OnProgress, progress_bar
from emojich.models.dalle import Dalle, DalleConfig, masked_attention
from emojich.models.masks import build_mask

# A run of allowed keys as a (possibly strided) slice, or the explicit positions of a scattered set.
Segment = slice | torch.Tensor


@dataclass
class SampleResult:
    codes: torch.Tensor  # [N, grid * grid] long: image codes in raster order
    scores: torch.Tensor  # [N] float: mean NLL per code (lower = more likely)


# ----- sampling filters -----


def _check_sampling_args(top_k: int, top_p: float, temperature: float = 1.0) -> None:
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def _candidates(logits: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k logits in descending order (and their ids), with those outside top-p set to -inf."""
    values, indices = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
    if top_p < 1.0:
        probs = torch.softmax(values, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        # Keep a candidate while the mass before it is below p: the smallest set reaching p.
        # The first candidate always stays (its mass_before is 0 < p).
        values = values.masked_fill(mass_before >= top_p, -math.inf)
    return values, indices


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then nucleus (top-p) filtering over the last dimension; removed entries become -inf.

    `top_k=1` keeps only the argmax; top-p keeps the smallest set of most likely tokens whose
    probability mass reaches `top_p` (after top-k). Apply temperature before calling.
    """
    _check_sampling_args(top_k, top_p)
    values, indices = _candidates(logits, top_k, top_p)
    return torch.full_like(logits, -math.inf).scatter(-1, indices, values)


def _sample(
    logits: torch.Tensor,
    uniforms: torch.Tensor,
    top_k: int,
    top_p: float,
    temperature: float,
    guided: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row by inverse CDF; returns (tokens, raw NLL of the tokens).

    `guided`, when given, are the logits to draw from (classifier-free guidance); the NLL is
    always that of the model's own conditional `logits`, so scores stay comparable.
    """
    values, indices = _candidates((logits if guided is None else guided) / temperature, top_k, top_p)
    cdf = torch.cumsum(torch.softmax(values, dim=-1), dim=-1)
    # right=True: a zero-probability candidate (equal cdf to its predecessor) is never chosen.
    choice = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(1), right=True)
    tokens = indices.gather(1, choice.clamp_(max=values.shape[-1] - 1)).squeeze(1)
    nll = torch.logsumexp(logits, dim=-1) - logits.gather(1, tokens.unsqueeze(1)).squeeze(1)
    return tokens, nll


def guide(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: move the logits away from the caption-free prediction.

    `scale` 1 is the conditional model itself; above 1, what the caption adds is amplified.
    Both are log-probabilities (normalised first), so the mix does not depend on logit offsets.
    """
    cond = torch.log_softmax(conditional, dim=-1)
    uncond = torch.log_softmax(unconditional, dim=-1)
    return uncond + scale * (cond - uncond)


def image_seed(seed: int, index: int) -> int:
    """A well-mixed 32-bit seed for image `index` of a run seeded with `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def reference_draws(seed: int, indices: Sequence[int]) -> torch.Tensor:
    """One uniform per image for choosing the drawing a by-reference model reads: from its own
    stream (not the codes'), so the codes' draws are the same whichever drawing is read."""
    return torch.tensor(
        [
            float(np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, i, 1]))).random())
            for i in indices
        ]
    )


def _image_uniforms(seed: int, indices: Sequence[int], steps: int) -> torch.Tensor:
    rows = []
    for index in indices:
        generator = torch.Generator(device="cpu").manual_seed(image_seed(seed, index))
        rows.append(torch.rand(steps, generator=generator))
    return torch.stack(rows)


# ----- allowed keys per query position -----


def _row_segments(row: np.ndarray) -> list[slice | np.ndarray]:
    """Compress one mask row (allowed keys of a query) into as few segments as possible."""
    keys = np.flatnonzero(row)
    runs = np.split(keys, np.flatnonzero(np.diff(keys) != 1) + 1)
    if len(runs) <= 2:  # causal text, or text + a sliding window (row layers)
        return [slice(int(run[0]), int(run[-1]) + 1) for run in runs]
    rest = keys[len(runs[0]) :]
    strides = np.unique(np.diff(rest))
    if all(len(run) == 1 for run in runs[1:]) and len(strides) == 1:  # text + one column
        step = int(strides[0])
        return [slice(int(runs[0][0]), int(runs[0][-1]) + 1), slice(int(rest[0]), int(rest[-1]) + 1, step)]
    return [keys]  # a neighbourhood: gather it


@functools.lru_cache(maxsize=32)
def key_segments(
    kind: str, text_seq_length: int, grid: int, format: str, conv_kernel: int, first_query: int
) -> tuple[tuple[slice | np.ndarray, ...], ...]:
    """For each query position from `first_query` on, the allowed keys of a `kind` layer as segments."""
    mask = build_mask(kind, text_seq_length, grid, format, conv_kernel, device="cpu").numpy()
    return tuple(tuple(_row_segments(mask[p, : p + 1])) for p in range(first_query, mask.shape[0]))


def _take(cache: torch.Tensor, segment: Segment) -> torch.Tensor:
    if isinstance(segment, slice):
        return cache[:, :, segment]  # a view: no copy of the cache
    return cache.index_select(2, segment)


def _attend_segments(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, segments: Sequence[Segment]
) -> torch.Tensor:
    """One query `[b, heads, 1, d]` against the allowed cached keys; same math as `masked_attention`
    with the disallowed keys left out instead of filled with -10000 (their weight is exactly 0)."""
    query = query * (1.0 / math.sqrt(query.shape[-1]))
    key_parts = [_take(keys, segment) for segment in segments]
    scores = torch.cat([torch.matmul(query, part.transpose(-1, -2)) for part in key_parts], dim=-1)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
    if len(segments) == 1:
        return torch.matmul(probs, _take(values, segments[0]))
    sizes = [part.shape[2] for part in key_parts]
    context = None
    for part_probs, segment in zip(probs.split(sizes, dim=-1), segments, strict=True):
        term = torch.matmul(part_probs, _take(values, segment))
        context = term if context is None else context + term
    assert context is not None
    return context


# Low-precision caches on the CPU take another way to the same softmax: torch's bf16 batched
# matmul copies a slice of the cache (a strided view) to a contiguous tensor before multiplying,
# and at batch 16 those copies took longer than the products (4.5 ms vs 0.9 ms a row layer). The
# CPU flash-attention kernel reads the views in place, scales and accumulates in fp32, and
# returns each segment's log-sum-exp, so the segments' partial results merge into the softmax
# over all of them. fp32 caches keep `_attend_segments`, whose logits match the full forward's.
_FLASH_DTYPES = (torch.bfloat16, torch.float16)


def _attend_segments_flash(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    segments: Sequence[Segment],
    shared: int = 0,
) -> torch.Tensor:
    """`_attend_segments` with the CPU flash-attention kernel, for bf16 / fp16 caches. Keys before
    position `shared` are the same for every row (one caption's text): row 0's are read for all."""
    outputs, lse = [], []
    for segment in segments:
        segment_keys, segment_values = _take(keys, segment), _take(values, segment)
        if isinstance(segment, slice) and segment.stop <= shared:
            segment_keys = segment_keys[:1].expand_as(segment_keys)  # stride 0: one read, from cache
            segment_values = segment_values[:1].expand_as(segment_values)
        out, segment_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, segment_keys, segment_values
        )
        outputs.append(out)
        lse.append(segment_lse)  # [b, heads, 1], fp32
    if len(outputs) == 1:
        return outputs[0]
    shares = torch.softmax(torch.stack(lse), dim=0).unsqueeze(-1)  # each segment's share of the mass
    context = shares[0] * outputs[0].float()
    for share, out in zip(shares[1:], outputs[1:], strict=True):
        context += share * out.float()
    return context.to(query.dtype)


def _as_segment(positions: np.ndarray) -> slice | np.ndarray:
    """Sorted key positions as one slice where they are evenly spaced, else themselves (gathered)."""
    steps = np.unique(np.diff(positions))
    if len(steps) > 1:
        return positions
    step = int(steps[0]) if len(steps) else 1
    return slice(int(positions[0]), int(positions[-1]) + 1, None if step == 1 else step)


def _text_and_image_segments(
    segments: Sequence[slice | np.ndarray], text_positions: int
) -> tuple[slice | np.ndarray, ...]:
    """The same keys as at most two segments for the flash path: the text, then the image keys (the
    row layer's window, the column layer's column, the conv layer's neighbourhood: only the last
    is gathered). The text then stands apart, to be shared by the images of one caption."""
    positions = np.concatenate(
        [np.arange(s.start, s.stop, s.step or 1) if isinstance(s, slice) else s for s in segments]
    )
    parts = (positions[positions < text_positions], positions[positions >= text_positions])
    return tuple(_as_segment(part) for part in parts if len(part))


# ----- cached decoding -----


def attention_segments(
    cfg: DalleConfig, flash: bool, device: torch.device | str = "cpu"
) -> dict[str, list[tuple[slice | torch.Tensor, ...]]]:
    """Per mask kind, per image position: the cache index groups a decode step's query reads
    (`key_segments`), as tensors on `device`; with `flash`, text and image groups apart."""
    first_query = cfg.text_positions
    return {
        kind: [
            tuple(
                s if isinstance(s, slice) else torch.from_numpy(s).to(device)
                for s in (_text_and_image_segments(segs, first_query) if flash else segs)
            )
            for segs in key_segments(
                kind,
                cfg.text_seq_length,
                cfg.image_tokens_per_dim,
                cfg.format,
                cfg.conv_kernel,
                first_query,
            )
        ]
        for kind in set(cfg.layer_masks or ())
    }


class IncrementalDecoder:
    """Prefill the caption, then feed image codes one at a time, with a static key/value cache.

    `prefill(text_ids)` returns the image logits for code 0; each `step(codes)` feeds the next
    image code and returns the image logits for the one after it. Logits are fp32 `[b, image_vocab]`.
    """

    def __init__(self, model: Dalle, batch_size: int, dtype: torch.dtype | None = None) -> None:
        cfg = model.config
        param = next(model.parameters())
        self.model = model
        self.device = param.device
        self.dtype = dtype or param.dtype
        # Autocast only when asked for a compute dtype the weights are not already in.
        self.autocast = self.dtype != param.dtype
        shape = (cfg.num_layers, batch_size, cfg.num_attention_heads, cfg.seq_length, cfg.head_dim)
        self.keys = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.values = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.first_query = cfg.text_positions
        flash = self.device.type == "cpu" and self.dtype in _FLASH_DTYPES
        self.attend = _attend_segments_flash if flash else _attend_segments
        self.segments = attention_segments(cfg, flash, self.device)
        self.flash = flash
        self.batch = 0
        self.image_position = 0  # index of the next image code to feed
        self.reference: torch.Tensor | None = None  # the drawing a by-reference model reads
        # Text positions every row shares (a batch of one caption on the flash path), else 0.
        self.shared = 0

    def _context(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast:
            return torch.autocast(self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.model.transformer.final_layernorm(x[:, -1])
        return self.model.image_logits(hidden).float()

    @torch.inference_mode()
    def prefill(
        self,
        text_ids: torch.Tensor,
        condition: torch.Tensor | None = None,
        draws: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the caption; `draws` (one uniform per row) pick a by-reference model's drawings,
        unless `reference` gives them."""
        model, transformer = self.model, self.model.transformer
        text_ids = text_ids.to(self.device)
        condition = None if condition is None else condition.to(self.device)
        b = text_ids.shape[0]
        if b > self.keys.shape[1]:
            raise ValueError(f"batch of {b} captions exceeds the cache's batch size {self.keys.shape[1]}")
        self.batch, self.image_position = b, 0
        self.reference = model.drawing_reference(
            condition,
            None if reference is None else reference.to(self.device),
            draws=None if draws is None else draws.to(self.device),
        )
        with self._context():
            x = model.embed_text(model.text_tokens(text_ids), condition, self.reference)
            # One caption for the whole batch (as `generate` samples a prompt's attempts): on the
            # flash path its text is run and cached once, in row 0, and every step reads it from
            # there. At mid-image the text is four fifths of the keys a step reads: a batch of 16
            # then reads 5x fewer, and its prefill is one row's. Equal embeddings, not equal ids:
            # whatever else conditions the text counts (a by-reference model's rows that read
            # different drawings differ at the last text position).
            self.shared = self.first_query if self.flash and b > 1 and bool((x == x[:1]).all()) else 0
            rows = 1 if self.shared else b
            x = x[:rows]
            n = x.shape[1]
            for index, (layer, kind) in enumerate(
                zip(transformer.layers, transformer.layer_masks, strict=True)
            ):
                q, k, v = layer.attention.project(layer.input_layernorm(x))
                self.keys[index, :rows, :, :n] = k
                self.values[index, :rows, :, :n] = v
                mask = transformer.mask_for(kind)[:n, :n].to(self.device)
                context = masked_attention(q, k, v, mask)
                x = x + layer.before_first_addition_layernorm(layer.attention.merge(context))
                x = layer.feed_forward(x)
            return self._logits(x).expand(b, -1)

    @torch.inference_mode()
    def step(self, codes: torch.Tensor) -> torch.Tensor:
        model, transformer = self.model, self.model.transformer
        cfg = model.config
        if self.image_position >= cfg.image_seq_length - 1:
            raise RuntimeError("all image codes have been fed already")
        b = self.batch
        position = self.first_query + self.image_position
        with self._context():
            x = model.embed_image(
                codes.to(self.device).view(b, 1), start=self.image_position, reference=self.reference
            )
            for index, (layer, kind) in enumerate(
                zip(transformer.layers, transformer.layer_masks, strict=True)
            ):
                q, k, v = layer.attention.project(layer.input_layernorm(x))
                keys, values = self.keys[index, :b], self.values[index, :b]
                keys[:, :, position : position + 1] = k
                values[:, :, position : position + 1] = v
                segments = self.segments[kind][position - self.first_query]
                if self.shared:
                    context = _attend_segments_flash(q, keys, values, segments, self.shared)
                else:
                    context = self.attend(q, keys, values, segments)
                x = x + layer.before_first_addition_layernorm(layer.attention.merge(context))
                x = layer.feed_forward(x)
            logits = self._logits(x)
        self.image_position += 1
        return logits


# ----- generation -----


def _as_captions(
    text_ids: torch.Tensor | Sequence[Sequence[int]] | Sequence[int], length: int
) -> torch.Tensor:
    captions = torch.as_tensor(text_ids, dtype=torch.long)
    if captions.ndim == 1:
        captions = captions.unsqueeze(0)
    if captions.ndim != 2 or captions.shape[1] != length:
        raise ValueError(f"text_ids must be [{length}] or [captions, {length}], got {tuple(captions.shape)}")
    return captions


def generate(
    model: Dalle,
    text_ids: torch.Tensor | Sequence[Sequence[int]] | Sequence[int],
    images_num: int = 1,
    top_k: int = 2048,
    top_p: float = 0.995,
    temperature: float = 1.0,
    seed: int = 42,
    batch_size: int = 16,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    guidance: float = 1.0,
    image_indices: Sequence[int] | None = None,
    conditions: torch.Tensor | None = None,
    on_progress: OnProgress | None = None,
) -> SampleResult:
    """Sample `images_num` images per caption.

    `text_ids` is one tokenized caption `[T]` or several `[C, T]`; the result holds
    `C * images_num` images, caption-major (image i belongs to caption `i // images_num`).
    Sampling: temperature, then top-k, then top-p, as released. `dtype` is the compute dtype
    (default: the weights' dtype; another one runs under autocast).

    `guidance` > 1 turns on classifier-free guidance (not in the release): every image also runs
    with an empty caption (all padding, what a model trained with caption dropout saw for "no
    caption") in the same batch, and tokens are drawn from `guide(...)`. It costs a second
    stream per image. Image i still depends only on (caption, settings, seed, i). A model with
    a caption memory is guided away from the caption's subject alone instead, drawn from the same
    reference (`Dalle.guidance_counterpart`): attribute guidance, which strengthens a colour asked
    for and leaves captions with no attribute as they are, at no cost.

    `image_indices` samples only those images of the caption-major numbering, in that order
    (batches of `batch_size` taken from it), so processes can share one request: a process
    given one of the full run's batches computes it exactly as the full run does.

    A conditioned model (`DalleConfig.conditioned`) takes the captions as encoder vectors
    `conditions` `[C, 2, condition_dim]` (`CaptionEncoder.condition`) beside all-padding `text_ids`.

    `on_progress(done, total)` is called after every step with the image tokens sampled so far and
    in all (images asked for × `image_seq_length`): what the bar counts, for callers that show
    progress elsewhere (the bot's status message). It runs in the sampling loop: keep it quick.
    """
    _check_sampling_args(top_k, top_p, temperature)
    if not guidance >= 1.0:
        raise ValueError(f"guidance must be >= 1 (1 = off), got {guidance!r}")
    if not isinstance(images_num, int) or images_num < 1:
        raise ValueError(f"images_num must be an integer >= 1, got {images_num!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    cfg = model.config
    captions = _as_captions(text_ids, cfg.text_seq_length)
    if conditions is not None:
        conditions = torch.as_tensor(conditions, dtype=torch.float32)
        if len(conditions) != len(captions):
            raise ValueError(f"{len(conditions)} caption vectors for {len(captions)} captions")
    total = captions.shape[0] * images_num
    steps = cfg.image_seq_length
    # The decoder is sized by the whole request even for a share of it, so a shared batch
    # runs on the same cache shape as in one process.
    batch_size = min(batch_size, total)
    wanted = list(range(total)) if image_indices is None else [int(i) for i in image_indices]
    if any(not 0 <= i < total for i in wanted):
        raise ValueError(f"image_indices must lie in [0, {total})")

    guided = guidance != 1.0
    counterparts = None
    if guided and conditions is not None:
        counterparts = model.guidance_counterpart(conditions)
        # A caption with nothing beyond its subject is its own counterpart: guidance would
        # change nothing, so it costs nothing either.
        guided = not torch.allclose(conditions, counterparts, atol=1e-5)
    was_training = model.training
    model.eval()
    decoder = IncrementalDecoder(model, 2 * batch_size if guided else batch_size, dtype)
    codes = torch.empty(len(wanted), steps, dtype=torch.long)
    scores = torch.empty(len(wanted))
    total_tokens = len(wanted) * steps
    done_tokens = 0
    bar = progress_bar(total=total_tokens, disable=not progress, desc="sampling", unit="tok")
    try:
        with torch.inference_mode():
            for start in range(0, len(wanted), batch_size):
                indices = wanted[start : start + batch_size]
                uniforms = _image_uniforms(seed, indices, steps).to(decoder.device)
                batch_codes = torch.empty(len(indices), steps, dtype=torch.long, device=decoder.device)
                nll = torch.zeros(len(indices), device=decoder.device)
                rows = [i // images_num for i in indices]
                text = captions[rows]
                condition = None if conditions is None else conditions[rows]
                draws = reference = None
                if model.reference_embeddings is not None:
                    draws = reference_draws(seed, indices)
                    if guided:  # both streams read the drawing the caption finds
                        reference = model.drawing_reference(
                            condition.to(decoder.device), draws=draws.to(decoder.device)
                        ).repeat(2, 1)
                # Guided: conditional rows first, then the same images without a caption (or, with
                # a caption memory, with its subject alone: `Dalle.guidance_counterpart`).
                if guided:
                    text = torch.cat([text, torch.zeros_like(text)])
                    if condition is not None:
                        assert counterparts is not None
                        condition = torch.cat([condition, counterparts[rows]])
                logits = decoder.prefill(text, condition, draws, reference)
                for j in range(steps):
                    conditional, mixed = logits, None
                    if guided:
                        conditional, unconditional = logits.chunk(2)
                        mixed = guide(conditional, unconditional, guidance)
                    tokens, token_nll = _sample(conditional, uniforms[:, j], top_k, top_p, temperature, mixed)
                    batch_codes[:, j] = tokens
                    nll += token_nll
                    if j + 1 < steps:
                        logits = decoder.step(torch.cat([tokens, tokens]) if guided else tokens)
                    bar.update(len(indices))
                    done_tokens += len(indices)
                    if on_progress is not None:
                        on_progress(done_tokens, total_tokens)
                codes[start : start + len(indices)] = batch_codes.cpu()
                scores[start : start + len(indices)] = (nll / steps).cpu()
    finally:
        bar.close()
        model.train(was_training)
    return SampleResult(codes=codes, scores=scores)
