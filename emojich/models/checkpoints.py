"""Loading weights in the published formats, strictly and with errors that name the tensor.

`torch.load(..., weights_only=True)` everywhere: a checkpoint is data, never code to execute.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save, save_file
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint does not match the model it is loaded into."""


def read_state_dict(path: str | os.PathLike[str], wrappers: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Read a `.bin`/`.pth`/`.ckpt` (torch pickle, weights only) or `.safetensors` file.

    `wrappers` are keys a published file may nest its weights under (e.g. Real-ESRGAN's
    `params_ema`/`params`, taming's `state_dict`); the first one present is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors come in many types; report them as one
        raise CheckpointError(f"{path}: not a weights-only torch checkpoint ({error})") from error
    for key in wrappers:
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    return dict(state)


def load_state_dict_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    optional: Iterable[str] = (),
    source: str = "checkpoint",
    assign: bool = False,
) -> None:
    """Load `state` into `module`, requiring every key and shape to match.

    Keys listed in `optional` (e.g. mask buffers some published files carry) may be absent
    from `state`, and may also be present in `state` while the module does not hold them.
    `assign` makes the module hold `state`'s tensors themselves (for a module built on `meta`).
    """
    optional = set(optional)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected) - optional)
    problems = []
    if missing:
        problems.append(f"missing tensor(s): {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(
            f"unexpected tensor(s): {', '.join(unexpected[:8])}{' …' if len(unexpected) > 8 else ''}"
        )
    for name, tensor in expected.items():
        if name in state and tuple(state[name].shape) != tuple(tensor.shape):
            problems.append(
                f"tensor {name} has shape {tuple(state[name].shape)}, expected {tuple(tensor.shape)}"
            )
    if problems:
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
    usable = {name: value for name, value in state.items() if name in expected}
    module.load_state_dict(usable, strict=False, assign=assign)


def save_safetensors(
    module: nn.Module, path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """Save a module's tensors atomically as safetensors, with bytes that depend on the content only.

    Written straight to the file: a 1.3B-parameter model is 5.2 GB, and building the file in
    memory first (as bytes, then re-sliced) took four more copies of it, more than a 23 GB
    machine holds. Tensors are copied only where safetensors requires it (shared storage).
    """
    from emojich.foundation.storage import atomic_path

    with atomic_path(path) as tmp:
        write_safetensors(unshared_tensors(module.state_dict()), tmp, metadata)


def unshared_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, each with its own storage (safetensors refuses shared memory)."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen:
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        elif not tensor.is_contiguous():
            tensor = tensor.contiguous()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    return tensors


def write_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """`safetensors.torch.save_file`, then its header rewritten in place with sorted keys.

    The library writes `__metadata__` from a hash map, so with two or more entries their order
    (and the file's hash) changes from call to call, and DVC would see a new output every run.
    The sorted header holds the same entries, so it is as long as the written one; the format
    allows trailing spaces in the header, which fill any difference and keep the data where it is.
    """
    save_file(tensors, str(path), metadata=metadata)
    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        text = _sorted_header(handle.read(length))
        if len(text) <= length:
            handle.seek(8)
            handle.write(text + b" " * (length - len(text)))
            return
    # Never seen in practice (the same JSON in another order); kept correct, not fast.
    raw = Path(path).read_bytes()
    Path(path).write_bytes(_with_header(raw, text))


def _sorted_header(header: bytes) -> bytes:
    parsed = json.loads(header)
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _with_header(raw: bytes, text: bytes) -> bytes:
    (length,) = struct.unpack("<Q", raw[:8])
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + memoryview(raw)[8 + length :].tobytes()


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file, in memory, whose bytes depend on its content only (see `write_safetensors`)."""
    raw = save(tensors, metadata=metadata)
    (length,) = struct.unpack("<Q", raw[:8])
    return _with_header(raw, _sorted_header(raw[8 : 8 + length]))
