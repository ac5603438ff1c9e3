"""Which weights generation samples with: as the checkpoint stores them, bf16, or int8 linears.

- `checkpoint`: the stored tensors unchanged (fp32 for models trained here); the default.
- `bf16`: every weight the image tokens pass through in bf16, half the bytes a decode step reads;
  on the CPU the transformer's linear layers are packed for oneDNN once (`emojich.models.packed`).
- `int8`: as bf16, then the transformer's linear layers (attention qkv and output, MLP) int8 with
  per-output-channel scales (`emojich.models.int8`): half again. Embeddings, layer norms and the
  logits head stay bf16; together they are a few per cent of what a step reads.

The caption side of an encoder-conditioned model (`CaptionProjection`, `CaptionMemory`) stays
fp32 in every mode: it runs once per caption, and the memory's softmax at temperature 0.02 turns
the bf16 rounding of its keys (~0.004 of a cosine) into a fifth of a logit, enough to change
which learnt emoji a caption reads.

Kept free of a top-level torch import, so `emojich generate --help` stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from emojich.models.dalle import Dalle

WEIGHTS_DTYPES = ("checkpoint", "bf16", "int8")


def check_weights_dtype(value: object, where: str = "weights_dtype") -> str:
    """`value` if it names a mode, else a one-line ValueError naming `where`."""
    if value not in WEIGHTS_DTYPES:
        raise ValueError(f"{where} must be one of {', '.join(WEIGHTS_DTYPES)}, got {value!r}")
    return str(value)


def set_weights_dtype(model: Dalle, weights_dtype: str, device: torch.device | str = "cpu") -> Dalle:
    """Cast (and for int8 quantise) the CPU `model` in place for sampling on `device`; returns it.
    Move it to `device` afterwards: bf16 weights packed for the CPU stay on the CPU."""
    import torch

    from emojich.models.int8 import quantize_linears
    from emojich.models.packed import pack_linears

    check_weights_dtype(weights_dtype)
    if weights_dtype == "checkpoint":
        return model
    model.to(torch.bfloat16)
    for caption_side in (model.caption_projection, model.caption_memory):
        if caption_side is not None:
            caption_side.float()
    if weights_dtype == "int8":
        quantize_linears(model.transformer, torch.bfloat16)
    elif torch.device(device).type == "cpu":
        pack_linears(model.transformer)
    return model
