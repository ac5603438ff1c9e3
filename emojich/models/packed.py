"""bf16 linear layers with their weights laid out once for oneDNN, for sampling on the CPU.

torch hands a bf16 `nn.Linear` on the CPU to oneDNN, which for more than one input row reorders the
plain `[out, in]` weight into its blocked layout on every call: one more pass over the weights each
step. Packing them once, as torch's own compiler does when it freezes a model for the CPU, saves it:
an MLP matrix of the Malevich shape at batch 16 takes 1.6 ms instead of 1.9, a decode step 160 ms
instead of 183 (benchmarks/cpu_decode.py). At batch 1 the plain layout is read faster (a step: 106 ms
plain, 118 packed), which is why a batch of one does better with int8 weights.

The packed weight is a oneDNN tensor: it cannot move to another device, be saved or be trained,
so this is for sampling only, after the model is where it will run.
"""

from __future__ import annotations

import torch
from torch import nn


def packing_supported() -> bool:
    """oneDNN with bf16 instructions (AVX512-BF16 or AMX); elsewhere the plain layers stay."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedLinear(nn.Module):
    """A bf16 `nn.Linear` whose weight oneDNN has reordered once. Inputs: any leading dimensions, bf16."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.weight.dtype != torch.bfloat16 or linear.weight.device.type != "cpu":
            raise ValueError("PackedLinear packs bf16 weights on the CPU")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # Not a parameter or buffer: a oneDNN tensor takes no part in .to(), state_dict or autograd.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


def pack_linears(module: nn.Module) -> int:
    """Replace every bf16 CPU `nn.Linear` inside `module` by a `PackedLinear`, in place; returns how
    many (0 where oneDNN has no bf16 support)."""
    if not packing_supported():
        return 0
    packed = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (
                type(child) is nn.Linear
                and child.weight.dtype == torch.bfloat16
                and child.weight.device.type == "cpu"
            ):
                setattr(parent, name, PackedLinear(child))
                packed += 1
    return packed
