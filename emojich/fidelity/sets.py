"""Generalisation, measured on evaluation sets of prompts the model never trained on (`prompts/*.tsv`).

For each set and each generated image:

- **top-10**: the intended emoji (any of a line's emoji) is among the 10 nearest captions of the
  catalogue by nearest real emoji (`retrieval`): the image looks like that emoji;
- for a colour set, a **hit** also needs the asked colour: the intended emoji is in the top 10
  under a hue-blind feature (`shape_features`: the drawing's light and dark, whatever its hue),
  and the image's dominant hue is nearest the asked colour.

Beside each rate: chance, and for colour sets the real intended emoji recoloured into the asked
colour (which the measure should pass: it checks the measure, not the model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from emojich.data.recolour import dominant_hue, recolour_batch
from emojich.fidelity.retrieval import TOP_K, Reference, features, shape_features, thumbnails
from emojich.text.colours import BY_NAME, nearest_colour
from emojich.text.normalise import normalise_caption
from emojich.text.prompt_sets import PromptSet


def image_colour(image: torch.Tensor) -> str | None:
    """The colour name nearest the dominant hue of a uint8 [3, H, W] image (None: no hue)."""
    hue, _ = dominant_hue(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
    return None if hue is None else nearest_colour(hue).name


def set_ranks(reference: Reference, prompt_set: PromptSet, images: Sequence[torch.Tensor]) -> list[list[int]]:
    """Per prompt, per image: the rank of the nearest intended emoji's caption (hue-blind for a
    colour set, whose asked hue must not count against the drawing)."""
    colour_set = any(prompt.colour for prompt in prompt_set.prompts)
    index = reference.shape_index if colour_set else reference.index
    feature = shape_features if colour_set else features
    out = []
    for prompt, batch in zip(prompt_set.prompts, images, strict=True):
        targets = reference.caption_ids_of(prompt.emoji)
        out.append(index.best_ranks(feature(thumbnails(batch)), targets) if len(batch) else [])
    return out


def set_metrics(
    reference: Reference, prompt_set: PromptSet, images: Sequence[torch.Tensor], top_k: int = TOP_K
) -> dict[str, float]:
    """`images[i]`: uint8 [n, 3, H, W] generated for prompt i. Flat metrics named `<set>_...`."""
    name = prompt_set.name
    ranks = set_ranks(reference, prompt_set, images)
    captions = len(reference.index.captions)
    flat = [rank for per_prompt in ranks for rank in per_prompt]
    metrics: dict[str, float] = {
        f"{name}_prompts": len(prompt_set.prompts),
        f"{name}_top{top_k}": _share(rank <= top_k for rank in flat),
        f"{name}_prompts_top{top_k}": _share(any(r <= top_k for r in per) for per in ranks),
        f"{name}_median_rank": float(np.median(flat)) if flat else float("nan"),
        # A line may accept several emoji: chance is that of its own number of captions.
        f"{name}_chance_top{top_k}": float(
            np.mean(
                [
                    min(top_k * max(len(reference.caption_ids_of(p.emoji)), 1), captions) / captions
                    for p in prompt_set.prompts
                ]
            )
        ),
        f"{name}_trained_prompts": sum(
            normalise_caption(p.text) in reference.learnt or reference.prompt_kind(p.text) != "zero-shot"
            for p in prompt_set.prompts
        ),
    }
    if any(prompt.colour for prompt in prompt_set.prompts):
        metrics.update(_colour_metrics(reference, prompt_set, images, ranks, top_k))
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in metrics.items()}


def _colour_metrics(
    reference: Reference,
    prompt_set: PromptSet,
    images: Sequence[torch.Tensor],
    ranks: list[list[int]],
    top_k: int,
) -> dict[str, float]:
    name = prompt_set.name
    hue_ok, hits = [], []
    for prompt, batch, per in zip(prompt_set.prompts, images, ranks, strict=True):
        for image, rank in zip(batch, per, strict=True):
            right = image_colour(image) == prompt.colour
            hue_ok.append(right)
            hits.append(right and rank <= top_k)
    real = _real_recoloured_hits(reference, prompt_set, top_k)
    return {f"{name}_hit": _share(hits), f"{name}_hue": _share(hue_ok), f"{name}_real_hit": real}


def _real_recoloured_hits(reference: Reference, prompt_set: PromptSet, top_k: int) -> float:
    """The same test on the real intended emoji, recoloured into the asked colour."""
    hits = []
    for prompt in prompt_set.prompts:
        rows = reference.rows_of(prompt.emoji)
        if not rows or reference.thumbs is None or prompt.colour is None:
            continue
        colour = BY_NAME[prompt.colour]
        recoloured = recolour_batch(reference.thumbs[rows[:1]], [colour.hue])
        rank = reference.shape_index.best_ranks(
            shape_features(recoloured), reference.caption_ids_of(prompt.emoji)
        )
        hits.append(rank[0] <= top_k and image_colour(recoloured[0]) == prompt.colour)
    return _share(hits)


def _share(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")
