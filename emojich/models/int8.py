"""Weight-only int8 for the transformer's linear layers, with torch's own CPU kernel.

A decode step of the cached sampler multiplies one token per image by every weight matrix of the
transformer: at small batches it reads all the weights and does little else, so it runs at the
machine's memory bandwidth. Int8 weights are half the bytes of bf16 ones.

Each output channel (a row of the weight) gets one symmetric scale, `max |w| / 127`, rounded to
the activations' dtype first so the stored codes are exact multiples of the scale the kernel
uses. On the CPU, `torch.ops.aten._weight_int8pack_mm(x[M, K], codes[N, K], scales[N])` computes
`x @ (codes * scales[:, None]).T` without dequantising the matrix in memory; elsewhere the matrix
is dequantised for each call (correct, and no faster than the float weights).

The kernel widens the codes to fp32 and multiplies with AVX-512 FMAs: on 2 cores it reads weights
at about 12 GB/s, under half the machine's bandwidth, limited by each core's work (it is twice as
fast with 2 threads as with 1), and its cost grows with the input rows. So int8 pays at batch 1
only (Malevich shape: 97 ms a step vs bf16's 118) and is far slower than bf16 at batch 16
(benchmarks/cpu_decode.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_QMAX = 127  # symmetric: -128 is never used, so w and -w quantise alike


def quantize_rows(weight: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """`[N, K]` float weight -> int8 codes `[N, K]` and per-row scales `[N]` in `scale_dtype`."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    # An all-zero row keeps a tiny non-zero scale: its codes are 0 either way.
    scales = (amax / _QMAX).clamp(min=torch.finfo(torch.float32).tiny).to(scale_dtype)
    codes = torch.round(w / scales.float()[:, None]).clamp_(-_QMAX, _QMAX).to(torch.int8)
    return codes, scales


class Int8Linear(nn.Module):
    """`nn.Linear` with int8 weights and per-output-channel scales; the bias stays a float.

    Inputs may have any leading dimensions; the output has the input's dtype. Codes and scales
    are buffers, not parameters: nothing here is trained.
    """

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        if codes.dtype != torch.int8 or codes.ndim != 2 or scales.shape != codes.shape[:1]:
            raise ValueError(f"expected int8 codes [N, K] and scales [N], got {codes.shape}, {scales.shape}")
        self.in_features, self.out_features = codes.shape[1], codes.shape[0]
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> Int8Linear:
        """Quantise `linear`'s weight; the scales and bias are kept in `dtype` (the activations')."""
        codes, scales = quantize_rows(linear.weight, dtype)
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        return cls(codes, scales, bias)

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight `[N, K]` these codes stand for."""
        dtype = dtype or self.scales.dtype
        return self.codes.to(dtype) * self.scales.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return F.linear(
                x, self.dequantized(x.dtype), None if self.bias is None else self.bias.to(x.dtype)
            )
        flat = x.reshape(-1, self.in_features)  # the kernel takes a matrix
        if not flat.is_contiguous():
            flat = flat.contiguous()
        out = torch.ops.aten._weight_int8pack_mm(flat, self.codes, self.scales.to(x.dtype))
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


def quantize_linears(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace every `nn.Linear` inside `module` by an `Int8Linear`, in place; returns how many.

    Only linear layers change: layer norms, embeddings and anything else keep their weights."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:  # exactly Linear: subclasses may compute something else
                setattr(parent, name, Int8Linear.from_linear(child, dtype))
                replaced += 1
    return replaced
