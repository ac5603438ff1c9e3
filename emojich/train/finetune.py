"""Fine-tuning the transformer on (caption, image codes) pairs: the report's recipe.

The report freezes the feed-forward and self-attention layers of the pretrained transformer and
trains the rest (embeddings, layer norms, the output head). Freezing here is decided by module
type inside each transformer layer, never by matching parameter names: a widely copied helper
matched the string "attn", which no ruDALL-E parameter name contains (they say "attention"),
and so trained attention while claiming to freeze it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from emojich.foundation import distributed
from emojich.models.dalle import MLP, Dalle, DalleConfig, SelfAttention
from emojich.text.bpe import TextTokenizer

log = logging.getLogger(__name__)

FREEZE_MODES = ("none", "attention-and-mlp")


def freeze_for_finetune(model: Dalle, mode: str) -> dict[str, list[str]]:
    """Set `requires_grad` for the recipe and return {"trainable": [...], "frozen": [...]} names."""
    if mode not in FREEZE_MODES:
        raise ValueError(f"freeze must be one of {FREEZE_MODES}, got {mode!r}")
    model.requires_grad_(True)
    if mode == "attention-and-mlp":
        for layer in model.transformer.layers:
            for block in layer.children():
                if isinstance(block, SelfAttention | MLP):
                    block.requires_grad_(False)
    split: dict[str, list[str]] = {"trainable": [], "frozen": []}
    for name, parameter in model.named_parameters():
        split["trainable" if parameter.requires_grad else "frozen"].append(name)
    return split


@dataclasses.dataclass
class PairSet:
    """Tokenized captions and image codes of one split, row-aligned."""

    text: torch.Tensor  # [N, text_seq_length] long
    codes: torch.Tensor  # [N, grid * grid] long
    captions: list[str]
    truncated: int  # captions cut to fit the text length (they lose their eos)
    # Caption vectors [N, dim] for a model conditioned on a text encoder (its text rows are padding).
    conditions: torch.Tensor | None = None
    # Drawings [N, grid * grid] a model that draws by reference reads (None: it finds them itself).
    references: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.captions)

    def rows(self, rows: list[int] | slice) -> PairSet:
        captions = self.captions[rows] if isinstance(rows, slice) else [self.captions[r] for r in rows]
        conditions = None if self.conditions is None else self.conditions[rows]
        references = None if self.references is None else self.references[rows]
        return PairSet(self.text[rows], self.codes[rows], captions, 0, conditions, references)

    def condition(self, rows, device: torch.device) -> torch.Tensor | None:
        return None if self.conditions is None else self.conditions[rows].to(device)

    def reference(self, rows, device: torch.device) -> torch.Tensor | None:
        return None if self.references is None else self.references[rows].to(device)

    def head(self, count: int) -> PairSet:
        return self.rows(slice(0, count))

    def spread(self, count: int) -> PairSet:
        """Up to `count` pairs with distinct captions, taken evenly over the split.

        Rows come grouped by image id, so the first rows are often one caption's variants (skin
        tones, styles): scoring those would measure one caption many times over.
        """
        first: dict[str, int] = {}
        for row, caption in enumerate(self.captions):
            first.setdefault(caption, row)
        rows = list(first.values())
        if len(rows) > count:
            rows = [rows[i * len(rows) // count] for i in range(count)]
        return self.rows(rows)


def build_pairs(
    captions: Sequence[str],
    codes: torch.Tensor,
    tokenizer: TextTokenizer,
    text_seq_length: int,
    image_vocab: int,
) -> PairSet:
    """Tokenize captions and check codes; a bad code is an error, a long caption a counted cut."""
    if len(captions) != len(codes):
        raise ValueError(f"{len(captions)} captions but {len(codes)} code rows")
    codes = codes.long()
    if len(codes) and (codes.min() < 0 or codes.max() >= image_vocab):
        bad = int(((codes < 0) | (codes >= image_vocab)).any(dim=1).sum())
        raise ValueError(
            f"{bad} image(s) have codes outside [0, {image_vocab}): the codes were made by another image "
            "tokenizer than the one this model expects"
        )
    text = torch.tensor(tokenizer.encode_batch(list(captions), text_seq_length), dtype=torch.long)
    text = text.reshape(len(captions), text_seq_length)
    # A caption that fits ends in eos or padding; one that was cut ends in one of its own tokens.
    last = text[:, -1] if len(text) else text.new_zeros(0)
    truncated = int(((last != TextTokenizer.eos_id) & (last != TextTokenizer.pad_id)).sum())
    return PairSet(text, codes, list(captions), truncated)


def pair_loss(pairs: PairSet, device: torch.device, caption_dropout: float = 0.0):
    """The loss function the Trainer calls with example indices.

    `caption_dropout` replaces that share of captions with an empty one (all padding), so the
    model also learns p(image) without a caption: what classifier-free guidance at sampling time
    (`emojich.generate.sampling.generate(guidance=...)`) pushes away from. Drawn from torch's global
    generator, whose state the Trainer's checkpoints carry, so a resumed run drops the same ones.

    Under DDP `indices` is the step's global batch: the dropout draw covers all of it on every
    rank (their generators agree), then each rank keeps its `local_rows`, so the captions dropped
    are the ones one process would drop.
    """
    if not 0.0 <= caption_dropout < 1.0:
        raise ValueError(f"caption_dropout must be in [0, 1), got {caption_dropout!r}")

    def loss(model: Dalle, indices: torch.Tensor):
        text = pairs.text[indices]
        condition = pairs.conditions[indices] if pairs.conditions is not None else None
        reference = pairs.references[indices] if pairs.references is not None else None
        if caption_dropout:
            dropped = torch.rand(len(indices)) < caption_dropout
            text = text.masked_fill(dropped[:, None], TextTokenizer.pad_id)
            if condition is not None:  # zeros: what guidance feeds as "no caption"
                condition = condition.masked_fill(dropped[:, None], 0.0)
            if reference is not None:  # -1: no drawing to read
                reference = reference.masked_fill(dropped[:, None], -1)
        rows = distributed.local_rows(len(indices))
        drawing = {} if reference is None else {"reference": reference[rows].to(device)}
        return model(
            text[rows].to(device),
            pairs.codes[indices[rows]].to(device),
            return_loss=True,
            condition=None if condition is None else condition[rows].to(device),
            **drawing,
        )

    return loss


@torch.no_grad()
def validation_loss(model: Dalle, pairs: PairSet, batch_size: int, device: torch.device) -> dict[str, float]:
    """Mean weighted loss and its text and image parts over a split (dropout off)."""
    was_training = model.training
    model.eval()
    totals = {"loss": 0.0, "text": 0.0, "image": 0.0}
    for start in range(0, len(pairs), batch_size):
        batch = slice(start, start + batch_size)
        text = pairs.text[batch].to(device)
        codes = pairs.codes[batch].to(device)
        loss, parts = model(
            text,
            codes,
            return_loss=True,
            condition=pairs.condition(batch, device),
            reference=pairs.reference(batch, device),
        )
        count = len(text)
        totals["loss"] += float(loss) * count
        totals["text"] += float(parts["text"]) * count
        totals["image"] += float(parts["image"]) * count
    model.train(was_training)
    return {name: value / max(len(pairs), 1) for name, value in totals.items()}


@torch.no_grad()
def image_log_likelihood(
    model: Dalle, text: torch.Tensor, codes: torch.Tensor, condition: torch.Tensor | None = None
) -> torch.Tensor:
    """log p(image codes | caption) under the model, per row."""
    cfg = model.config
    tokens = model.text_tokens(text)
    logits = model(text, codes, condition=condition).float()
    labels = torch.cat((tokens[:, 1:], codes), dim=1)
    t = cfg.text_seq_length
    image_lp = F.log_softmax(logits[:, t : labels.shape[1], cfg.vocab_size :], dim=-1)
    return image_lp.gather(-1, labels[:, t:, None]).squeeze(-1).sum(dim=1)


@torch.no_grad()
def caption_loss(
    model: Dalle, pairs: PairSet, candidates: int, device: torch.device, seed: int = 0
) -> dict[str, float]:
    """Cross-entropy of an image's own caption given the image, among `candidates` captions,
    and how often the own caption ranks first (`top1`; chance is 1 / candidates).

    The report proposes scoring captions given images (CogView's caption loss). The released
    transformer only reads text before the image, so p(caption | image) is taken by Bayes over
    a candidate set (the true caption and `candidates - 1` other distinct captions of `pairs`)
    with a uniform prior over it: p(c | image) = p(image | c) / sum over candidates of
    p(image | c'). A uniform prior rather than the model's own p(c): caption priors differ by
    many nats between short and long captions and would drown the image-text agreement this
    metric is for. Chance level is log(candidates); lower is better. Candidates are fixed by `seed`.

    `floor` is the lowest loss any one temperature on the scores gives, fitted on these very
    pairs: a bound, not a result. It separates the two ways the loss can be high. A model whose
    loss is far above its floor ranks well but is over-confident (a sum over every image code
    makes its scores differ by tens of nats); a floor near chance means the ranking itself
    carries little, and no calibration would help.
    """
    distinct = sorted(set(pairs.captions))
    if len(distinct) < 2 or candidates < 2:
        return {"loss": float("nan"), "top1": float("nan"), "floor": float("nan")}
    candidates = min(candidates, len(distinct))
    first_row = {caption: pairs.captions.index(caption) for caption in distinct}
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    rows_scores = []
    for row in range(len(pairs)):
        own = pairs.captions[row]
        others = [c for c in distinct if c != own]
        picks = torch.randperm(len(others), generator=generator)[: candidates - 1].tolist()
        rows = [row] + [first_row[others[i]] for i in picks]
        text = pairs.text[rows].to(device)
        codes = pairs.codes[row].expand(len(rows), -1).to(device)
        scores = image_log_likelihood(model, text, codes, pairs.condition(rows, device))
        rows_scores.append(scores.double().cpu())
    model.train(was_training)
    scores = torch.stack(rows_scores)  # [pairs, candidates], own caption first
    top1 = float((scores[:, 0] > scores[:, 1:].max(dim=1).values).double().mean())
    floor = min(ranking_loss(scores / t) for t in FLOOR_TEMPERATURES)
    return {"loss": ranking_loss(scores), "top1": top1, "floor": min(floor, math.log(candidates))}


# Temperatures tried for the caption-loss floor: 1 to 1,000 in steps of 10^0.1; an infinite one
# (every candidate equal) gives chance, log(candidates).
FLOOR_TEMPERATURES = [10 ** (k / 10) for k in range(31)]


def ranking_loss(scores: torch.Tensor) -> float:
    """Mean cross-entropy of column 0 under a softmax over each row."""
    return float(-(scores[:, 0] - torch.logsumexp(scores, dim=1)).mean())


def chance_caption_loss(candidates: int) -> float:
    return math.log(candidates)


def allreduce_for_preset(preset: str, freeze: str, world: int) -> distributed.AllReduceVolume:
    """What DDP all-reduces per step for a preset and freezing, from its config alone.

    The model is built on the meta device: shapes without storage, so the 1.3B Malevich shape
    is counted in a second without allocating its 5 GB.
    """
    with torch.device("meta"):
        model = Dalle(DalleConfig.preset(preset))
    freeze_for_finetune(model, freeze)
    return distributed.allreduce_volume(list(model.parameters()), world)
