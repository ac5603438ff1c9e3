"""Choosing where models run."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """`auto` picks the GPU when there is one; anything else is passed to torch as it is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# What a convolutional network may run in where a stage offers the choice (upscale.precision).
PRECISIONS = ("fp32", "bf16")


def check_precision(value: object, where: str = "precision") -> str:
    """`value` if it names a precision, else a one-line ValueError naming `where`."""
    if value not in PRECISIONS:
        raise ValueError(f"{where} must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return str(value)


def autocast(precision: str, device: torch.device | str = "cpu") -> torch.autocast:
    """bf16 autocast on `device` for ``precision="bf16"``, a no-op context for fp32.

    On a CPU with AMX (Sapphire Rapids and later) oneDNN runs bf16 convolutions faster than fp32
    ones (the demo's RRDBNet: 1.9x the images a second on 2 cores); on one without bf16
    instructions they are emulated and slower, so the precision is a setting, never a guess made
    from the CPU."""
    check_precision(precision)
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
