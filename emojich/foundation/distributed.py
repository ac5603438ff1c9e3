"""torch.distributed in one place: starting under `torchrun`, who writes, and gathering results.

Stages run as one process unless their `nproc_per_node` parameter asks for more; then the
stage starts itself again under `torchrun` (`relaunch`), and every process finds its rank in
the environment torchrun sets (`init_from_env`). The backend is NCCL on GPUs and gloo on CPU.

Outside torchrun every helper answers as rank 0 of a world of one, so the same code runs in
one process without a process group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# Set by torchrun in every process it starts; their presence is what "launched" means.
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """Whether this process was started by torchrun (or an equivalent env:// launcher)."""
    return all(name in os.environ for name in _TORCHRUN_ENV)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files."""
    return rank() == 0


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device) -> torch.device:
    """The GPU of this process (one per local rank) when `device` is CUDA; CPU stays CPU."""
    if device.type != "cuda":
        return device
    index = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_from_env(device: torch.device, timeout_s: float = 1800) -> torch.device:
    """Join the process group torchrun describes (no-op outside torchrun); returns this rank's device."""
    if not launched() or active():
        return local_device(device) if launched() else device
    device = local_device(device)
    dist.init_process_group(
        backend=backend_for(device), init_method="env://", timeout=timedelta(seconds=timeout_s)
    )
    return device


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """`init_from_env` for the duration of a block, torn down afterwards even on errors."""
    started_here = launched() and not active()
    local = init_from_env(device)
    try:
        yield local
    finally:
        if started_here:
            shutdown()


def barrier() -> None:
    if active():
        dist.barrier()


def local_rows(count: int) -> slice:
    """This rank's contiguous share of a global batch of `count` rows (all of them in one process).

    Shares are equal, which DDP's gradient averaging needs to equal the one-process mean:
    `check_divisible` rejects a batch that does not split evenly.
    """
    world = world_size()
    share = count // world
    return slice(rank() * share, (rank() + 1) * share)


def check_divisible(batch_size: int, world: int) -> None:
    if batch_size % world:
        raise ValueError(
            f"batch_size {batch_size} does not split evenly over {world} processes; "
            "the global batch must be a multiple of nproc_per_node"
        )


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) tensor over ranks: per-rank mean losses become the global mean."""
    if not active():
        return values
    total = values.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size()


def gather_to_main(value: Any) -> list[Any] | None:
    """Every rank's picklable `value`, in rank order, on rank 0 (None elsewhere)."""
    if not active():
        return [value]
    gathered: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's picklable `value` on every rank (a decision only rank 0 can make, such as a failure)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def relaunch(module: str, argv: Sequence[str], nproc_per_node: int) -> int:
    """Run `python -m module argv` as `nproc_per_node` processes under torchrun; its exit code.

    `--standalone` gives a single-node rendezvous on a free port, so two stages on one machine
    do not collide. torchrun is torch's own launcher: restarts and rendezvous stay its job.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc_per_node}",
        "-m",
        module,
        *argv,
    ]
    return subprocess.run(command, check=False).returncode


def check_nproc(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class AllReduceVolume:
    """What gradient synchronisation moves per optimizer step."""

    tensors: int  # parameters DDP registers (those that require grad)
    elements: int
    gradient_bytes: int  # the all-reduced payload on each rank
    ring_bytes_per_rank: int  # sent by each rank in a ring all-reduce: 2 (W - 1) / W x payload
    world_size: int


def allreduce_volume(
    parameters: Sequence[torch.nn.Parameter], world: int, bytes_per_element: int = 4
) -> AllReduceVolume:
    """DDP all-reduces exactly the parameters that require grad; frozen ones are never bucketed."""
    trainable = [p for p in parameters if p.requires_grad]
    elements = sum(p.numel() for p in trainable)
    payload = elements * bytes_per_element
    return AllReduceVolume(
        tensors=len(trainable),
        elements=elements,
        gradient_bytes=payload,
        ring_bytes_per_rank=2 * (world - 1) * payload // world,
        world_size=world,
    )
