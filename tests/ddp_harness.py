"""Starting real torch.distributed process groups (gloo, CPU) for tests.

Workers are spawned processes that join through the same env:// variables torchrun sets, so
they go through `emojich.foundation.distributed.init_from_env` exactly as a torchrun-started stage does.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

from emojich.foundation import distributed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
    )
    torch.set_num_threads(1)
    with distributed.process_group(torch.device("cpu")):
        target(*args)


def run_ranks(world: int, target: Callable[..., None], *args: Any) -> None:
    """Run `target(*args)` on `world` gloo ranks; raises if any rank fails."""
    mp.spawn(_worker, args=(world, free_port(), target, args), nprocs=world, join=True)
