"""The ruDALL-E-compatible text-to-image transformer (Malevich / Emojich).

One sequence holds the caption tokens followed by the image's VQGAN codes in raster order;
a decoder-only transformer predicts each next token. Parameter names and shapes follow the
published checkpoints exactly, so `load_published` reads `pytorch_model_v3.bin` (Malevich,
format "v3") and the Emojich `pytorch_model.bin` (format "v2") unchanged.

Sequence layout (T = text_seq_length, G = image_tokens_per_dim):
- v3: `[t_0 .. t_{T-1}, i_0 .. i_{G*G-1}]`, the image starts at position T;
- v2: `[2, t_0 .. t_{T-1}, i_0 .. i_{G*G-2}]`, one extra leading token, so the text takes T + 1
  positions and the final image token is never an input (the sequence stays T + G*G long).
In both, the output at position `text_positions - 1 + j` predicts image token j.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emojich.models.checkpoints import (
    CheckpointError,
    load_state_dict_strict,
    read_state_dict,
    save_safetensors,
)
from emojich.models.masks import FORMATS, MASK_KINDS, build_mask, default_conv_kernel, layer_mask_kinds

# Published files carry these buffers or not; ours never store them (they are derived from the config).
MASK_BUFFER_NAMES = ("transformer.row_mask", "transformer.col_mask", "transformer.conv_mask")
_CONFIG_METADATA_KEY = "emojich.dalle.config"
_MASKED_SCORE = -10000.0  # the release's fill value for disallowed attention scores
_V2_LEADING_TOKEN = 2  # the tokenizer's bos id, prepended by format v2


@dataclass
class DalleConfig:
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    text_seq_length: int
    image_tokens_per_dim: int
    vocab_size: int  # BPE tokens + one pad token per text position
    image_vocab_size: int
    format: str = "v3"
    loss_img_weight: float = 7.0
    attention_dropout: float = 0.1
    output_dropout: float = 0.1
    # The release builds a 0.1 embedding dropout but never applies it; 0.0 reproduces its training.
    embedding_dropout: float = 0.0
    layernorm_eps: float = 1e-5
    # Side of the conv layer's causal window; None -> 11 at 32 x 32, scaled down for small grids.
    conv_kernel: int | None = None
    # Mask kind per layer ("row" / "column" / "conv"); None -> the release's rule for this depth.
    layer_masks: tuple[str, ...] | None = None
    # A frozen pretrained text encoder in place of the BPE caption (not in the release): each
    # caption comes as two `condition_dim` vectors (the caption, and its subject without colour
    # words) and the text ids are all padding. 0 / "" keeps the published BPE path exactly.
    condition_dim: int = 0
    text_encoder: str = ""
    # The caption memory of a conditioned model (`CaptionMemory`): training captions it keys on,
    # and the learnt slots (one per training emoji) they point to. Set from the data.
    memory_keys: int = 0
    memory_slots: int = 0
    # Draw by reference (needs a caption memory): each slot also keeps its emoji's image codes, and
    # the position that predicts code p reads code p of the drawing the caption's memory finds.
    reference_codes: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads"
            )
        if self.vocab_size <= self.text_seq_length:
            raise ValueError("vocab_size must include one pad token per text position plus the BPE tokens")
        if self.format == "v3" and self.image_vocab_size > self.vocab_size:
            # The v3 loss scores the first image token against the text logits (see `Dalle.loss`).
            raise ValueError("format v3 needs image_vocab_size <= vocab_size")
        if self.conv_kernel is None:
            self.conv_kernel = default_conv_kernel(self.image_tokens_per_dim)
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be a positive odd number, got {self.conv_kernel}")
        if self.layer_masks is None:
            self.layer_masks = layer_mask_kinds(self.num_layers)
        self.layer_masks = tuple(self.layer_masks)
        if len(self.layer_masks) != self.num_layers or not set(self.layer_masks) <= set(MASK_KINDS):
            raise ValueError(f"layer_masks must list one of {MASK_KINDS} per layer, got {self.layer_masks}")
        if self.condition_dim < 0 or bool(self.condition_dim) != bool(self.text_encoder):
            raise ValueError("condition_dim and text_encoder go together: both set, or 0 and empty")
        if bool(self.memory_keys) != bool(self.memory_slots) or (self.memory_keys and not self.condition_dim):
            raise ValueError("a caption memory needs keys, slots and a text encoder")
        if self.reference_codes and not self.condition_dim:
            raise ValueError("drawing by reference needs a text encoder and its caption memory")

    @property
    def conditioned(self) -> bool:
        """True when a text encoder's caption vector, not BPE tokens, carries the caption."""
        return self.condition_dim > 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def image_seq_length(self) -> int:
        return self.image_tokens_per_dim**2

    @property
    def text_positions(self) -> int:
        """Sequence positions the text occupies: one more in v2 for the leading token."""
        return self.text_seq_length + (1 if self.format == "v2" else 0)

    @property
    def seq_length(self) -> int:
        return self.text_seq_length + self.image_seq_length

    @property
    def total_vocab_size(self) -> int:
        return self.vocab_size + self.image_vocab_size

    @classmethod
    def preset(cls, name: str) -> DalleConfig:
        """Named configurations: "malevich", "emojich" (published XL), "demo" (CPU), "tiny" (tests)."""
        xl = dict(
            num_layers=24,
            hidden_size=2048,
            num_attention_heads=16,
            text_seq_length=128,
            image_tokens_per_dim=32,
            vocab_size=16384 + 128,
            image_vocab_size=8192,
        )
        presets: dict[str, dict[str, Any]] = {
            "malevich": dict(xl, format="v3", loss_img_weight=7),
            "emojich": dict(xl, format="v2", loss_img_weight=1000),
            # Trains from scratch in minutes on 2 CPU cores: BPE 1024 + 24 pads, 8 x 8 codes (the
            # vocabulary and grid follow the tokenizers trained upstream: 1,024 codes in the demo).
            # v2 so every image token, the first included, is trained over the image vocabulary
            # (v3's loss scores the first one against the text logits).
            "demo": dict(
                num_layers=4,
                hidden_size=256,
                num_attention_heads=8,
                # The caption is the frozen encoder's vector projected to these 8 (+1) positions:
                # no BPE tokens, so a short text part; 1024 + 8 keeps the tokenizer's ids valid.
                text_seq_length=8,
                image_tokens_per_dim=8,
                vocab_size=1024 + 8,
                image_vocab_size=512,
                format="v2",
                loss_img_weight=7,
                # The demo must learn its emoji, not regularise away from them, so no dropout
                # (the release's 0.1 suits 1.3B on millions).
                attention_dropout=0.0,
                output_dropout=0.0,
                condition_dim=512,
                text_encoder="use-m3",
                # Draws by reference: the caption memory's drawing of the emoji a caption finds
                # is read code by code (`CaptionMemory`).
                reference_codes=True,
            ),
            # The Malevich layout (24 layers, so every published key name) at tiny widths:
            # what `emojich standin-weights --size tiny` writes for the paper path in CI.
            "malevich-tiny": dict(
                num_layers=24,
                hidden_size=32,
                num_attention_heads=2,
                text_seq_length=16,
                image_tokens_per_dim=4,
                vocab_size=256 + 16,
                image_vocab_size=64,
                format="v3",
                loss_img_weight=7,
            ),
            # Three layers so row, column and conv layers all occur.
            "tiny": dict(
                num_layers=3,
                hidden_size=64,
                num_attention_heads=4,
                text_seq_length=8,
                image_tokens_per_dim=4,
                vocab_size=32 + 8,
                image_vocab_size=32,
                format="v3",
                loss_img_weight=7,
            ),
        }
        # The demo's earlier shape: BPE captions learnt from scratch (a lookup table of the
        # catalogue's names; kept to compare with).
        demo = presets["demo"]
        presets["demo-bpe"] = dict(
            {
                key: value
                for key, value in demo.items()
                if key not in ("condition_dim", "text_encoder", "reference_codes")
            },
            text_seq_length=24,
            vocab_size=1024 + 24,
        )
        # The demo's text path at tiny size, for smoke runs.
        presets["tiny-encoder"] = dict(
            presets["tiny"], format="v2", condition_dim=512, text_encoder="use-m3", reference_codes=True
        )
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(presets)}")
        return cls(**presets[name])

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layer_masks"] = list(self.layer_masks or ())
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DalleConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DalleConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> DalleConfig:
        return cls.from_dict(json.loads(text))

    def differences(self, other: DalleConfig) -> list[str]:
        """Human-readable `field: ours != theirs` lines."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{key}: {mine[key]!r} != {theirs[key]!r}" for key in mine if mine[key] != theirs[key]]


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # The release uses the tanh approximation; exact erf GELU would shift every activation slightly.
    return F.gelu(x, approximate="tanh")


def masked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Softmax attention as released, `[b, heads, s, d]` in and out; `mask` is `[s_q, s_k]` bool.

    The query is scaled by 1/sqrt(d) *before* the product so fp16 products stay in range.
    Disallowed scores are set to -10000 (not -inf), as released. PB-relax (CogView) then
    subtracts each (batch, head) maximum over the whole score matrix; the release divides by
    alpha = 32 before and multiplies after, which is exact in binary floating point and is
    therefore omitted. The shift cancels in the softmax, which runs in fp32.
    """
    scores = torch.matmul(query * (1.0 / math.sqrt(query.shape[-1])), key.transpose(-1, -2))
    scores = scores.masked_fill(~mask, _MASKED_SCORE)
    scores = scores - scores.detach().amax(dim=(-2, -1), keepdim=True)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    probs = F.dropout(probs, dropout, training)
    return torch.matmul(probs, value)


class Embedding(nn.Embedding):
    """`nn.Embedding` initialised N(0, 0.02), and not at all on the meta device.

    (Random init of a meta tensor computes nothing but drags in a slow first-time import of
    torch's reference ops; skipping it keeps building the XL model on `meta` instant.)
    """

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            nn.init.normal_(self.weight, std=0.02)


class SelfAttention(nn.Module):
    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.attention_dropout = cfg.attention_dropout
        self.query_key_value = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # q, k, v concatenated
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.output_dropout = nn.Dropout(cfg.output_dropout)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`[b, s, h]` -> query, key, value as `[b, heads, s, head_dim]`."""
        b, s, _ = x.shape
        qkv = self.query_key_value(x).view(b, s, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def merge(self, context: torch.Tensor) -> torch.Tensor:
        """`[b, heads, s, head_dim]` attention context -> output projection `[b, s, h]`."""
        b, _, s, _ = context.shape
        return self.output_dropout(self.dense(context.transpose(1, 2).reshape(b, s, -1)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x)
        context = masked_attention(q, k, v, mask, self.attention_dropout, self.training)
        return self.merge(context)


class MLP(nn.Module):
    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(cfg.hidden_size, 4 * cfg.hidden_size)
        self.dense_4h_to_h = nn.Linear(4 * cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.output_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense_4h_to_h(gelu_tanh(self.dense_h_to_4h(x))))


class TransformerLayer(nn.Module):
    """CogView "sandwich" layer: each branch output is normalised again before the residual add,
    which keeps the residual stream from growing in deep fp16 training."""

    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        eps = cfg.layernorm_eps
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=eps)
        self.attention = SelfAttention(cfg)
        self.before_first_addition_layernorm = nn.LayerNorm(cfg.hidden_size, eps=eps)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=eps)
        self.mlp = MLP(cfg)
        self.before_second_addition_layernorm = nn.LayerNorm(cfg.hidden_size, eps=eps)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The second half of the layer (after the attention residual), shared with cached decoding."""
        return x + self.before_second_addition_layernorm(self.mlp(self.post_attention_layernorm(x)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.before_first_addition_layernorm(self.attention(self.input_layernorm(x), mask))
        return self.feed_forward(x)


class Transformer(nn.Module):
    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        self.layer_masks = cfg.layer_masks or ()
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)
        # Derived from the config, so not persistent: our checkpoints never carry them, and
        # `load_published` accepts files that do. Always built on the CPU (vectorised: a few ms
        # for the 1152 x 1152 XL masks), also when the model is built on `meta`, where they
        # would be useless; `.to(device)` moves them with the model.
        for kind, name in zip(MASK_KINDS, ("row_mask", "col_mask", "conv_mask"), strict=True):
            mask = build_mask(
                kind, cfg.text_seq_length, cfg.image_tokens_per_dim, cfg.format, cfg.conv_kernel, device="cpu"
            )
            self.register_buffer(name, mask, persistent=False)

    def mask_for(self, kind: str) -> torch.Tensor:
        return {"row": self.row_mask, "column": self.col_mask, "conv": self.conv_mask}[kind]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[1]
        for layer, kind in zip(self.layers, self.layer_masks, strict=True):
            x = layer(x, self.mask_for(kind)[:s, :s].to(x.device))
        return self.final_layernorm(x)


class CaptionProjection(nn.Module):
    """A frozen text encoder's caption vector -> one embedding per text position.

    A small MLP, trained with the transformer, stands where the BPE embeddings stand: captions the
    encoder places close together (котик, кошка) get close prefixes, so the transformer draws a
    caption it never saw like the ones it learnt nearest to it.

    The vectors are whitened first with statistics of the training captions (`fit_whitening`,
    kept in the checkpoint). Sentence encoders put every caption of a kind in one narrow cone
    (two flags' names are 0.75 alike whatever the countries), so the directions that tell the
    captions apart are small; whitening makes them as large as the rest, and the MLP learns in
    hundreds of steps what it would otherwise take thousands to untangle.
    """

    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        self.positions = cfg.text_positions
        width = 2 * cfg.hidden_size
        dim = cfg.condition_dim
        self.register_buffer("mean", torch.zeros(dim))
        # Identity until fitted; unit vectors have components near 1/sqrt(dim), so the identity is
        # scaled to give the first layer inputs of about unit size either way.
        self.register_buffer("whitening", torch.eye(dim) * dim**0.5)
        self.net = nn.Sequential(
            nn.Linear(dim, width), nn.GELU(), nn.Linear(width, self.positions * cfg.hidden_size)
        )

    @torch.no_grad()
    def fit_whitening(self, vectors: torch.Tensor, shrinkage: float = 0.1) -> None:
        """ZCA whitening from training caption vectors [N, dim], shrunk towards the identity so
        directions the captions hardly use are not blown up into noise."""
        vectors = vectors.double()
        mean = vectors.mean(dim=0)
        centred = vectors - mean
        covariance = centred.T @ centred / max(len(vectors) - 1, 1)
        covariance += shrinkage * covariance.diagonal().mean() * torch.eye(len(mean), dtype=torch.float64)
        values, basis = torch.linalg.eigh(covariance)
        whitening = basis @ torch.diag(values.rsqrt()) @ basis.T
        self.mean.copy_(mean.to(self.mean.dtype))
        self.whitening.copy_(whitening.to(self.whitening.dtype))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        white = (vectors - self.mean.to(vectors.dtype)) @ self.whitening.to(vectors.dtype)
        return self.net(white).view(len(vectors), self.positions, -1)


class CaptionMemory(nn.Module):
    """What the model learnt to draw, looked up by meaning: a key-value memory over its training
    captions.

    Keys are the frozen encoder's vectors of the training captions (names, keywords, inflections;
    fixed, kept in the checkpoint); each points to a slot, one per training emoji, holding a learnt
    embedding and, in a model that draws by reference, the emoji's drawing (its image codes). A
    caption reads the slots through a softmax over its cosine with every key. A training caption
    finds its own emoji's slot, while a caption it never saw («котик») reads the slots of the
    captions nearest it («кот», «котенок»). The temperature is low, 0.02: the encoder puts most
    short captions 0.6 to 0.9 alike, and at 0.05 a training caption still spread half its weight
    over hundreds of keys near it (measured: the demo then drew no caption, learnt or not,
    recognisably). The query is the caption's subject (`query`); the colour reaches the model
    through `CaptionProjection`.

    Why drawings in the memory: a 4-layer model on 2 CPU cores needs ~30 passes over a drawing to
    learn it by heart (2,178 steps gave 64 % of learnt names in the top 10), and recoloured
    drawings multiply that. Reading the drawing as an input, the model learns one skill for all
    emoji instead, to redraw what it reads in the colour it is asked for (the idea of retrieval-
    augmented image generators such as Re-Imagen): 610 steps give 100 % of the sheet's learnt
    names, and colour phrases on objects never trained in that colour reach 31 to 40 % hits
    unguided (two training seeds), not 2.5 %.
    """

    temperature = 0.02

    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        self.register_buffer("keys", torch.zeros(cfg.memory_keys, cfg.condition_dim))
        self.register_buffer("key_slots", torch.zeros(cfg.memory_keys, dtype=torch.long))
        self.slots = Embedding(cfg.memory_slots, cfg.hidden_size)
        # Each slot's drawing (its emoji's image codes), for a model that draws by reference.
        self.slot_codes: torch.Tensor | None
        if cfg.reference_codes:
            self.register_buffer(
                "slot_codes", torch.zeros(cfg.memory_slots, cfg.image_seq_length, dtype=torch.long)
            )
        else:
            self.slot_codes = None

    @torch.no_grad()
    def set_keys(
        self, keys: torch.Tensor, slots: torch.Tensor, slot_codes: torch.Tensor | None = None
    ) -> None:
        if keys.shape != self.keys.shape or slots.shape != self.key_slots.shape:
            raise ValueError(f"memory keys {tuple(keys.shape)} do not fit {tuple(self.keys.shape)}")
        self.keys.copy_(torch.nn.functional.normalize(keys.float(), dim=1))
        self.key_slots.copy_(slots)
        if self.slot_codes is not None:
            if slot_codes is None or slot_codes.shape != self.slot_codes.shape:
                got = None if slot_codes is None else tuple(slot_codes.shape)
                raise ValueError(f"slot drawings {got} do not fit {tuple(self.slot_codes.shape)}")
            self.slot_codes.copy_(slot_codes)

    def query(self, condition: torch.Tensor) -> torch.Tensor:
        """[b, dim]: what a caption `[b, 2, dim]` looks up: its subject (colour words out, so «синий
        кролик» finds the rabbit), unless the whole caption is nearer a key: a learnt name with a
        colour word in it («синее сердце», «большой голубой ромб») must find itself."""
        caption, subject = condition[:, 0].float(), condition[:, 1].float()
        nearer = (caption @ self.keys.T).amax(dim=-1) >= (subject @ self.keys.T).amax(dim=-1)
        return torch.where(nearer[:, None], caption, subject)

    def nearest_slot(self, subjects: torch.Tensor) -> torch.Tensor:
        """[b]: the slot of each caption's nearest key (ties to the first)."""
        return self.key_slots[(subjects.float() @ self.keys.T).argmax(dim=-1)]

    def reference(self, subjects: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
        """[b, image codes]: a drawing for each caption's subject. Without `draws`, the nearest
        key's; with one uniform number per row, a slot drawn from the memory's own weights, so a
        caption that reads several drawings («сердце», «кот») gets each in its share of images,
        while a learnt name (all its weight on its own slot) keeps its drawing."""
        if self.slot_codes is None:
            raise ValueError("this caption memory keeps no drawings")
        if draws is None:
            return self.slot_codes[self.nearest_slot(subjects)]
        cdf = self.weights(subjects).cumsum(dim=-1)
        picks = torch.searchsorted(cdf, (draws.to(cdf) * cdf[:, -1:].squeeze(1)).unsqueeze(1), right=True)
        return self.slot_codes[picks.squeeze(1).clamp(max=len(self.slot_codes) - 1)]

    def weights(self, subjects: torch.Tensor) -> torch.Tensor:
        """[b, slots]: how much a caption reads each slot."""
        similarity = subjects.float() @ self.keys.T / self.temperature
        per_key = torch.softmax(similarity, dim=-1)
        per_slot = per_key.new_zeros(len(subjects), self.slots.num_embeddings)
        return per_slot.index_add_(1, self.key_slots, per_key)

    def forward(self, subjects: torch.Tensor) -> torch.Tensor:
        """[b, hidden]: the slots a caption's subject reads."""
        return self.weights(subjects).to(self.slots.weight.dtype) @ self.slots.weight


class Dalle(nn.Module):
    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        self.config = cfg
        h = cfg.hidden_size
        self.text_embeddings = Embedding(cfg.vocab_size, h)
        self.image_embeddings = Embedding(cfg.image_vocab_size, h)
        # T + 1 rows in both formats: v2 uses all of them, v3 leaves the last one unused.
        self.text_pos_embeddings = Embedding(cfg.text_seq_length + 1, h)
        self.image_row_embeddings = Embedding(cfg.image_tokens_per_dim, h)
        self.image_col_embeddings = Embedding(cfg.image_tokens_per_dim, h)
        self.embedding_dropout = nn.Dropout(cfg.embedding_dropout)
        # Only in conditioned models, so the published files keep exactly their keys.
        self.caption_projection = CaptionProjection(cfg) if cfg.conditioned else None
        self.caption_memory = CaptionMemory(cfg) if cfg.memory_keys else None
        # Only with a caption memory to find the drawings in (a preset's memory comes from the data).
        drawing = cfg.reference_codes and cfg.memory_keys > 0
        self.reference_embeddings = Embedding(cfg.image_vocab_size, h) if drawing else None
        self.transformer = Transformer(cfg)
        self.to_logits = nn.Sequential(
            nn.LayerNorm(h, eps=cfg.layernorm_eps), nn.Linear(h, cfg.total_vocab_size)
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-style N(0, 0.02) for training from scratch (the release used it for positions);
        # pretrained weights overwrite all of this. Embeddings initialise themselves.
        if isinstance(module, nn.Linear) and not module.weight.is_meta:
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # ----- embeddings -----

    def text_tokens(self, text_ids: torch.Tensor) -> torch.Tensor:
        """Caption ids `[b, T]` -> the model's text tokens `[b, text_positions]`.

        Pad (id 0) at position i becomes its own token `vocab_size - T + i`, so the model knows
        how far into the padding it is; format v2 then prepends token 2.
        """
        cfg = self.config
        if text_ids.ndim != 2 or text_ids.shape[1] != cfg.text_seq_length:
            raise ValueError(f"text_ids must be [batch, {cfg.text_seq_length}], got {tuple(text_ids.shape)}")
        pads = torch.arange(cfg.text_seq_length, device=text_ids.device) + (
            cfg.vocab_size - cfg.text_seq_length
        )
        tokens = torch.where(text_ids == 0, pads, text_ids)
        if cfg.format == "v2":
            tokens = F.pad(tokens, (1, 0), value=_V2_LEADING_TOKEN)
        return tokens

    def _shrink_gradient(self, e: torch.Tensor) -> torch.Tensor:
        # The release scales the embeddings' gradient by 0.1 (value unchanged) to calm early
        # training; skipped without autograd, where it could only add rounding.
        if torch.is_grad_enabled():
            return e * 0.1 + e.detach() * 0.9
        return e

    def drawing_reference(
        self,
        condition: torch.Tensor | None,
        reference: torch.Tensor | None = None,
        draws: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The codes `[b, image codes]` a model that draws by reference reads: `reference` when
        given (training passes each pair's own emoji), else a drawing the caption memory finds
        for each subject (`CaptionMemory.reference`, drawn with `draws` when given); -1 rows for a
        caption-free row (zero vectors, as for guidance). None for other models."""
        if self.reference_embeddings is None:
            return None
        if reference is None:
            if condition is None or self.caption_memory is None:
                raise ValueError("a model that draws by reference needs caption vectors")
            subjects = self.caption_memory.query(condition)
            reference = self.caption_memory.reference(subjects, draws)
            reference = reference.masked_fill(~subjects.abs().sum(dim=-1).gt(0)[:, None], -1)
        return reference.long()

    def _reference_inputs(self, reference: torch.Tensor, reads: torch.Tensor) -> torch.Tensor:
        """Embeddings `[b, n, hidden]` of reference codes at `reads` (zero past the last code or for
        a -1 row): what the positions predicting those codes add to their input."""
        length = self.config.image_seq_length
        codes = reference[:, reads.clamp(max=length - 1)]
        present = (codes >= 0) & (reads < length)[None, :]
        assert self.reference_embeddings is not None
        return self.reference_embeddings(codes.clamp(min=0)) * present[..., None]

    def embed_text(
        self,
        text_tokens: torch.Tensor,
        condition: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text positions' embeddings; a conditioned model adds what it reads from the caption
        vectors `condition` `[b, 2, condition_dim]` (the caption, then its subject without colour
        words; zeros stand for "no caption", as for guidance)."""
        positions = torch.arange(text_tokens.shape[1], device=text_tokens.device)
        e = self._shrink_gradient(self.text_embeddings(text_tokens) + self.text_pos_embeddings(positions))
        if self.caption_projection is not None:
            if condition is None or condition.shape != (len(text_tokens), 2, self.config.condition_dim):
                got = None if condition is None else tuple(condition.shape)
                raise ValueError(
                    f"this model needs caption vectors [{len(text_tokens)}, 2, {self.config.condition_dim}], got {got}"
                )
            # Not under the embeddings' shrunk gradient: these are what must learn fast. In its own
            # dtype, which may be finer than the embeddings' (emojich.models.precision).
            vectors = self.attribute_vectors(condition).to(self.caption_projection.whitening.dtype)
            e = e + self.caption_projection(vectors).to(e.dtype)
            if self.caption_memory is not None:
                e = e + self.caption_memory(self.caption_memory.query(condition))[:, None, :].to(e.dtype)
            if reference is not None:  # the last text position predicts the first code
                first = self._reference_inputs(reference, torch.zeros(1, dtype=torch.long, device=e.device))
                e = torch.cat([e[:, :-1], e[:, -1:] + first.to(e.dtype)], dim=1)
        elif condition is not None:
            raise ValueError("this model reads BPE captions; it takes no caption vectors")
        return self.embedding_dropout(e)

    def attribute_vectors(self, condition: torch.Tensor) -> torch.Tensor:
        """What `CaptionProjection` reads: with a caption memory, which draws the subject, the
        caption less its subject (the colour words' direction, near zero for a plain name: «синий
        кролик» − «кролик» points the way «синий гриб» − «гриб» does); without one, the caption."""
        if self.caption_memory is None:
            return condition[:, 0]
        return condition[:, 0] - condition[:, 1]

    def guidance_counterpart(self, condition: torch.Tensor) -> torch.Tensor:
        """The caption vectors guidance moves away from. With a caption memory, the subject alone
        (its vector twice: no attribute), so that guidance strengthens what the caption says beyond
        its subject («синий» in «синий кролик») over the same drawing; the model learnt that
        counterpart from every plain name, with no caption dropout. Without one, zeros: no caption."""
        if self.caption_memory is None:
            return torch.zeros_like(condition)
        return condition[:, 1:2].expand_as(condition).clone()

    def blank_text(self, count: int, device: torch.device | str | None = None) -> torch.Tensor:
        """All-padding text ids: what a conditioned model reads beside its caption vectors."""
        return torch.zeros(count, self.config.text_seq_length, dtype=torch.long, device=device)

    def embed_image(
        self, image_ids: torch.Tensor, start: int = 0, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embed image codes `[b, n]` that sit at image positions `start .. start + n - 1`; with a
        drawing `reference`, each position also reads the reference's code it is to predict."""
        grid = self.config.image_tokens_per_dim
        positions = torch.arange(start, start + image_ids.shape[1], device=image_ids.device)
        e = (
            self.image_embeddings(image_ids)
            + self.image_row_embeddings(positions // grid)
            + self.image_col_embeddings(positions % grid)
        )
        e = self.embedding_dropout(self._shrink_gradient(e))
        if reference is not None:
            e = e + self._reference_inputs(reference, positions + 1).to(e.dtype)
        return e

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the image vocabulary only, from final hidden states (a slice of `to_logits`)."""
        norm, proj = self.to_logits[0], self.to_logits[1]
        vocab = self.config.vocab_size
        return F.linear(norm(hidden), proj.weight[vocab:], proj.bias[vocab:])

    # ----- forward -----

    def forward(
        self,
        text_ids: torch.Tensor,
        image_ids: torch.Tensor | None = None,
        return_loss: bool = False,
        condition: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits `[b, L, vocab_size + image_vocab_size]` at every position, as released.

        `image_ids` may hold any prefix of the image (0 .. G*G codes). With `return_loss=True`
        (full image required) returns `(loss, {"text": ..., "image": ...})` instead. A
        conditioned model also takes the caption vectors `condition` (see `embed_text`).
        """
        cfg = self.config
        tokens = self.text_tokens(text_ids)
        reference = self.drawing_reference(condition, reference)
        parts = [self.embed_text(tokens, condition, reference)]
        if image_ids is None:
            image_ids = text_ids.new_zeros((text_ids.shape[0], 0))
        if image_ids.ndim != 2 or image_ids.shape[1] > cfg.image_seq_length:
            raise ValueError(
                f"image_ids must be [batch, <= {cfg.image_seq_length}], got {tuple(image_ids.shape)}"
            )
        # v2's leading token pushes the last image code out of the sequence; it is only ever a label.
        usable = image_ids[:, : cfg.seq_length - cfg.text_positions]
        if usable.shape[1]:
            parts.append(self.embed_image(usable, reference=reference))
        hidden = self.transformer(torch.cat(parts, dim=1))
        logits = self.to_logits(hidden)
        if not return_loss:
            return logits
        return self.loss(logits, tokens, image_ids)

    def loss(
        self, logits: torch.Tensor, text_tokens: torch.Tensor, image_ids: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted next-token cross-entropy, with the release's label layout.

        `labels = cat(text_tokens[:, 1:], image)`: the output at position p is scored against the
        token at p + 1. The first T labels use the text logits, the rest the image logits;
        `loss = (text + w * image) / (w + 1)`. In v3 the T-th label is the first image code,
        scored against the *text* logits, exactly as released (so v3 never trains the image
        logits of the first code); v2's extra leading token makes all image codes image labels.
        """
        cfg = self.config
        if image_ids.shape[1] != cfg.image_seq_length:
            raise ValueError(
                f"the loss needs all {cfg.image_seq_length} image codes, got {image_ids.shape[1]}"
            )
        labels = torch.cat((text_tokens[:, 1:], image_ids), dim=1)
        t = cfg.text_seq_length
        text_logits = logits[:, :t, : cfg.vocab_size].float()
        image_logits = logits[:, t : labels.shape[1], cfg.vocab_size :].float()
        loss_text = F.cross_entropy(text_logits.reshape(-1, cfg.vocab_size), labels[:, :t].reshape(-1))
        loss_img = F.cross_entropy(image_logits.reshape(-1, cfg.image_vocab_size), labels[:, t:].reshape(-1))
        w = cfg.loss_img_weight
        loss = (loss_text + w * loss_img) / (w + 1)
        return loss, {"text": loss_text.detach(), "image": loss_img.detach()}

    # ----- checkpoints -----

    def load_published(self, path: str | os.PathLike[str]) -> Dalle:
        """Load a published ruDALL-E file (e.g. `pytorch_model_v3.bin`) strictly, mask buffers optional."""
        state = read_state_dict(path)
        load_state_dict_strict(self, state, optional=MASK_BUFFER_NAMES, source=str(path))
        return self

    def save(self, path: str | os.PathLike[str], extra: dict[str, str] | None = None) -> None:
        """Our own checkpoint: safetensors with the config as JSON in the metadata."""
        save_safetensors(self, path, metadata={**(extra or {}), _CONFIG_METADATA_KEY: self.config.to_json()})

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        expected: DalleConfig | None = None,
        device: torch.device | str = "cpu",
    ) -> Dalle:
        """Rebuild a model saved by `save`; `expected` guards against a checkpoint of another config."""
        from safetensors import safe_open

        stored = read_config(path)
        if expected is not None and expected != stored:
            diff = "; ".join(stored.differences(expected))
            raise CheckpointError(f"{path} was saved for another config (stored != expected: {diff})")
        # Built on `meta` and given the file's tensors: a randomly initialised copy first would
        # double the memory (10.6 GB peak for the 5.2 GB XL checkpoint) and spend a minute on
        # an initialisation that is thrown away.
        with torch.device("meta"):
            model = cls(stored)
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        load_state_dict_strict(model, state, source=str(path), assign=True)
        return model.to(device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def read_config(path: str | os.PathLike[str]) -> DalleConfig:
    """The DalleConfig stored in a checkpoint written by `Dalle.save`."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({error})") from error
    if _CONFIG_METADATA_KEY not in metadata:
        raise CheckpointError(f"{path}: no {_CONFIG_METADATA_KEY} in its metadata; not saved by Dalle.save")
    return DalleConfig.from_json(metadata[_CONFIG_METADATA_KEY])
