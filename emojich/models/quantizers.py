"""The VQGAN's quantizers: map encoder latents to codebook indices and back.

Both keep the codebook as ``quantize.embed`` and decode by the same lookup, so everything after
the quantizer (decoder, transformer, sampling) is shared:

- `GumbelQuantizer`: the published taming ``GumbelQuantize`` (logits over the codebook from a 1x1
  ``proj``). Loads the Sber checkpoints key for key.
- `EMAQuantizer`: nearest-neighbour VQ with an exponential-moving-average codebook and restart of
  dead codes, for a tokenizer trained here. Trained from scratch, the hard straight-through
  Gumbel forward pass samples ``argmax(logits + noise)``; its logits stay near flat, the decoder
  sees a near-random code per position and learns the average image, which for emoji is brown.
  Nearest-neighbour assignment is deterministic, so the decoder learns each code's colour.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class QuantizerTraining:
    """Training settings of either quantizer; each reads its own."""

    # Gumbel: temperature annealed exponentially over training, KL terms against collapse.
    temperature_start: float = 1.0
    temperature_end: float = 1.0 / 16
    kl_weight: float = 5e-4
    usage_weight: float = 0.1
    # EMA: codebook decay, commitment cost, and when a code counts as dead.
    decay: float = 0.99
    commitment: float = 0.25
    # A code whose EMA usage falls below this fraction of the mean usage is moved onto a latent
    # from the current batch; without it a few hundred of 512 codes are never used.
    restart_below: float = 0.03


@dataclasses.dataclass
class QuantizedStep:
    z_q: torch.Tensor  # [B, D, h, w], carries the straight-through gradient
    codes: torch.Tensor  # [B, h, w]
    loss: torch.Tensor  # the quantizer's own training loss term (scalar)


def _init_codebook(codebook_size: int, embed_dim: int) -> nn.Embedding:
    embed = nn.Embedding(codebook_size, embed_dim, _weight=torch.empty(codebook_size, embed_dim))
    # Unit variance like nn.Embedding's default normal init, but drawn uniformly: normal_ on
    # the meta device (used to inspect full-size layouts) loads torch's slow reference kernels.
    nn.init.uniform_(embed.weight, -math.sqrt(3.0), math.sqrt(3.0))
    return embed


class GumbelQuantizer(nn.Module):
    """Logits over the codebook per position (``proj``) and the codebook itself (``embed``).

    Inference takes the argmax code. Training relaxes the choice with a straight-through
    Gumbel-softmax: the forward pass uses the hard one-hot, gradients flow through the soft one.
    """

    def __init__(self, in_channels: int, codebook_size: int, embed_dim: int) -> None:
        super().__init__()
        # The published model feeds quant_conv's output (embed_dim channels) into proj, declared
        # with z_channels inputs; the two are equal (256) there, so embed_dim is the honest width.
        self.proj = nn.Conv2d(in_channels, codebook_size, 1)
        self.embed = _init_codebook(codebook_size, embed_dim)

    @property
    def codebook_size(self) -> int:
        return self.embed.num_embeddings

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)

    def relaxed(
        self, logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Straight-through Gumbel-softmax sample: (z_q [B, D, h, w], codes [B, h, w])."""
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        exponential = (-torch.log(uniform.clamp_min(1e-20))).clamp_min(1e-20)
        gumbel = -torch.log(exponential)
        soft = F.softmax((logits + gumbel) / temperature, dim=1)
        codes = soft.argmax(dim=1)
        hard = F.one_hot(codes, self.codebook_size).permute(0, 3, 1, 2).to(soft.dtype)
        one_hot = hard - soft.detach() + soft
        return torch.einsum("bnhw,nd->bdhw", one_hot, self.embed.weight), codes

    def train_step(
        self, h: torch.Tensor, progress: float, settings: QuantizerTraining, generator: torch.Generator
    ) -> QuantizedStep:
        """One training forward at `progress` in [0, 1] of the run (drives the temperature).

        Loss: the published per-position KL to a uniform prior, plus the KL of the batch-averaged
        code distribution to uniform, which penalises a collapsed codebook directly.
        """
        s = settings
        temperature = s.temperature_start * (s.temperature_end / s.temperature_start) ** progress
        logits = self.logits(h)
        z_q, codes = self.relaxed(logits, temperature, generator)
        log_k = math.log(self.codebook_size)
        probs, log_probs = F.softmax(logits, dim=1), F.log_softmax(logits, dim=1)
        kl_position = (probs * (log_probs + log_k)).sum(dim=1).mean()
        marginal = probs.mean(dim=(0, 2, 3))
        kl_usage = (marginal * (marginal.clamp_min(1e-12).log() + log_k)).sum()
        return QuantizedStep(z_q, codes, s.kl_weight * kl_position + s.usage_weight * kl_usage)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """[B, h, w] codes -> [B, D, h, w] embeddings (equal to one-hot @ embed.weight)."""
        return self.embed(codes).permute(0, 3, 1, 2)


class EMAQuantizer(nn.Module):
    """Nearest codebook entry per position; the codebook follows its assigned latents by EMA.

    ``embed`` is the only persistent tensor, so a checkpoint holds what decoding needs and no
    training state. The EMA statistics are buffers rebuilt on the first training step, which
    also seeds the codebook from that batch's latents (every code starts "dead").
    """

    def __init__(self, codebook_size: int, embed_dim: int) -> None:
        super().__init__()
        self.embed = _init_codebook(codebook_size, embed_dim)
        self.embed.weight.requires_grad_(False)  # moved by EMA, never by the optimiser
        self.register_buffer("cluster_size", torch.zeros(codebook_size), persistent=False)
        self.register_buffer("embed_sum", torch.zeros(codebook_size, embed_dim), persistent=False)

    @property
    def codebook_size(self) -> int:
        return self.embed.num_embeddings

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Negative squared distance to every entry, [B, K, h, w]: the argmax is the nearest code."""
        weight = self.embed.weight
        flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
        distance = flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ weight.t() + weight.pow(2).sum(1)[None, :]
        batch, _, height, width = h.shape
        return (-distance).reshape(batch, height, width, -1).permute(0, 3, 1, 2)

    def train_step(
        self, h: torch.Tensor, progress: float, settings: QuantizerTraining, generator: torch.Generator
    ) -> QuantizedStep:
        """Assign, update the codebook by EMA, restart dead codes; straight-through gradient to h."""
        codes = self.logits(h.detach()).argmax(dim=1)
        with torch.no_grad():
            self._ema_update(h.detach(), codes, settings, generator)
        quantized = self.lookup(codes)
        # Commitment only: the codebook is not trained by gradient, so no codebook loss term.
        loss = settings.commitment * F.mse_loss(h, quantized)
        z_q = h + (quantized - h).detach()
        return QuantizedStep(z_q, codes, loss)

    def _ema_update(
        self, h: torch.Tensor, codes: torch.Tensor, settings: QuantizerTraining, generator: torch.Generator
    ) -> None:
        flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
        one_hot = F.one_hot(codes.flatten(), self.codebook_size).to(flat.dtype)
        decay = settings.decay
        self.cluster_size.mul_(decay).add_(one_hot.sum(0), alpha=1.0 - decay)
        self.embed_sum.mul_(decay).add_(one_hot.t() @ flat, alpha=1.0 - decay)
        # Laplace smoothing keeps an unused entry's denominator away from zero.
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (total + self.codebook_size * 1e-5) * total
        self.embed.weight.copy_(self.embed_sum / smoothed[:, None])

        dead = self.cluster_size < settings.restart_below * len(flat) / self.codebook_size
        if dead.any():
            count = int(dead.sum())
            picks = torch.randint(len(flat), (count,), generator=generator, device=flat.device)
            self.embed.weight[dead] = flat[picks]
            # Restarted entries start with one latent's worth of history, at their new place.
            self.embed_sum[dead] = flat[picks]
            self.cluster_size[dead] = 1.0

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """[B, h, w] codes -> [B, D, h, w] embeddings."""
        return self.embed(codes).permute(0, 3, 1, 2)


def build_quantizer(kind: str, codebook_size: int, embed_dim: int) -> GumbelQuantizer | EMAQuantizer:
    if kind == "gumbel":
        return GumbelQuantizer(embed_dim, codebook_size, embed_dim)
    if kind == "ema":
        return EMAQuantizer(codebook_size, embed_dim)
    raise ValueError(f"unknown quantizer {kind!r}")
