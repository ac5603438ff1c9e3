"""Choosing where models run."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """`auto` picks the GPU when there is one; anything else is passed to torch as it is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
