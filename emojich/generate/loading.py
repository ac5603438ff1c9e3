"""Loading what generation needs (transformer, BPE, VQGAN, upscaler) and saying how images reach 512 px.

512 px output: a DWT VQGAN (paper profile) decodes to 512 px itself; otherwise the decoded images
are super-resolved x4 by the upscaler trained upstream and resized to 512 px (Lanczos), or only
resized when there is no usable upscaler. The method is recorded in every sidecar and metric.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors import safe_open

from emojich.foundation.storage import sha256_file
from emojich.generate.reading import CaptionReader, Reading
from emojich.models.dalle import Dalle
from emojich.models.origin import ORIGIN_KEY, combine, safetensors_origin
from emojich.models.precision import check_weights_dtype, set_weights_dtype
from emojich.models.rrdbnet import RRDBNet
from emojich.models.vqgan import VQGan
from emojich.text.bpe import TextTokenizer
from emojich.text.encoder import CaptionEncoder, encoder_provenance, load_encoder
from emojich.upscale.superres import needs_super_resolution

TARGET_SIZE = 512  # Telegram stickers and the report's DWT decoder are 512 x 512

DWT_DECODER = "dwt-decoder"
SELF_TRAINED = "rrdbnet-selftrained"
LANCZOS_FALLBACK = "lanczos-fallback"


def load_upscaler(path: str | Path | None, device: torch.device) -> tuple[RRDBNet | None, str]:
    """The upscale stage's saved model and its variant, or (None, lanczos-fallback).

    The upscale stage always writes `rrdbnet.safetensors`, with its variant in the metadata;
    an untrained placeholder says `lanczos-fallback` and must not be used.
    """
    if not path:
        return None, LANCZOS_FALLBACK
    with safe_open(str(path), framework="pt") as handle:
        variant = (handle.metadata() or {}).get("variant", SELF_TRAINED)
    if variant == LANCZOS_FALLBACK:
        return None, LANCZOS_FALLBACK
    return RRDBNet.load(path).to(device).eval(), variant


@dataclasses.dataclass
class Models:
    dalle: Dalle
    tokenizer: TextTokenizer
    vqgan: VQGan
    upscaler: RRDBNet | None
    upscaler_variant: str
    # sha256 of every file the images depend on, and the weights_dtype when it is not "checkpoint"
    provenance: dict[str, str]
    # A conditioned model's frozen text encoder, and what it learnt to read (for "read as").
    encoder: CaptionEncoder | None = None
    reader: CaptionReader | None = None

    def caption_vectors(self, prompts: list[str]) -> torch.Tensor | None:
        """[prompts, 2, dim] caption vectors for a conditioned model; None for a BPE one."""
        return self.encoder.condition(prompts) if self.encoder is not None else None

    def read(self, prompt: str) -> Reading | None:
        """How a conditioned model reads a caption (None for a BPE model or without pairs)."""
        if self.encoder is None or self.reader is None:
            return None
        return self.reader.read(prompt, self.encoder.encode)

    @property
    def device(self) -> torch.device:
        return next(self.dalle.parameters()).device

    @property
    def output_method(self) -> str:
        """How decoded images reach 512 px: recorded so a demo result is never taken for a paper one."""
        if self.vqgan.config.dwt:
            return DWT_DECODER
        size = self.vqgan.config.output_resolution  # load_models checked the grids agree
        if self.upscaler is None or not needs_super_resolution(size, size, TARGET_SIZE):
            return LANCZOS_FALLBACK
        return self.upscaler_variant


def load_models(
    checkpoint: str | Path,
    bpe: str | Path,
    vqgan: str | Path,
    upscaler: str | Path | None,
    device: torch.device,
    weights_dtype: str = "checkpoint",
) -> Models:
    """`weights_dtype` (`emojich.models.precision`): the transformer's weights as stored, bf16 or int8."""
    check_weights_dtype(weights_dtype)
    # Cast and quantised on the CPU, where the checkpoint was read, before moving to `device`.
    dalle = set_weights_dtype(Dalle.load(checkpoint), weights_dtype, device).to(device).eval()
    tokenizer = TextTokenizer.load(bpe)
    image_model = VQGan.load(vqgan).to(device).eval()
    cfg, vq = dalle.config, image_model.config
    if (cfg.image_tokens_per_dim, cfg.image_vocab_size) != (vq.grid_size, vq.codebook_size):
        raise ValueError(
            f"{checkpoint} samples a {cfg.image_tokens_per_dim}² grid of {cfg.image_vocab_size} codes, "
            f"{vqgan} decodes {vq.grid_size}² of {vq.codebook_size}"
        )
    if tokenizer.vocab_size > cfg.vocab_size - cfg.text_seq_length:
        raise ValueError(f"{bpe} has {tokenizer.vocab_size} tokens, more than {checkpoint} was trained with")
    sr_model, variant = (None, DWT_DECODER) if vq.dwt else load_upscaler(upscaler, device)
    provenance = {
        "checkpoint_sha256": sha256_file(checkpoint),
        "tokenizer_sha256": sha256_file(bpe),
        "vqgan_sha256": sha256_file(vqgan),
    }
    origins = [safetensors_origin(checkpoint), safetensors_origin(vqgan)]
    if sr_model is not None and upscaler:
        provenance["upscaler_sha256"] = sha256_file(upscaler)
        origins.append(safetensors_origin(upscaler))
    # Every image says whether stand-in weights drew it, so no result passes for the paper's.
    provenance[ORIGIN_KEY] = combine(origins)
    if weights_dtype != "checkpoint":
        # Only then: images drawn from the weights as stored keep exactly their records.
        provenance["weights_dtype"] = weights_dtype
    encoder = reader = None
    if cfg.conditioned:
        encoder = load_encoder(cfg.text_encoder)
        reader = CaptionReader.load(Path(bpe).parent)
        provenance.update(encoder_provenance())
    return Models(dalle, tokenizer, image_model, sr_model, variant, provenance, encoder, reader)
