"""The report's fine-tuning recipe as reusable parts: optimizer, one-cycle schedule, exact resume.

The loop is deliberately small. What matters for reproducibility is that a run killed mid-way and
started again produces the same weights as an uninterrupted one, so nothing here keeps hidden
state: the data order of an epoch is a pure function of (seed, epoch), and the checkpoint carries
the model, optimizer, schedule, loss scaler and RNG state together, written atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from emojich.foundation import distributed
from emojich.foundation.storage import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"


@dataclasses.dataclass
class TrainConfig:
    """Defaults are the report's recipe (batch 2, 40 epochs, 8-bit Adam, one-cycle 4e-7 → 1e-5 → 2e-8)."""

    epochs: int = 40
    batch_size: int = 2
    max_steps: int = 0  # 0 = epochs × batches per epoch; else a cap (smoke runs)
    optimizer: str = "adam8bit"  # adam8bit (bitsandbytes) | adamw (32-bit states)
    lr_start: float = 4e-7
    lr_max: float = 1e-5
    lr_final: float = 2e-8
    warmup: float = 0.1  # fraction of the steps spent rising to lr_max
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 uses loss scaling and needs a GPU)
    checkpoint_every: int = 0  # steps; 0 = only at the end
    seed: int = 42

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam8bit", "adamw"):
            raise ValueError(f"optimizer must be 'adam8bit' or 'adamw', got {self.optimizer!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if not 0 < self.lr_final <= self.lr_start <= self.lr_max:
            raise ValueError("learning rates must satisfy 0 < lr_final <= lr_start <= lr_max")
        if not 0 < self.warmup < 1:
            raise ValueError(f"warmup must be a fraction in (0, 1), got {self.warmup}")
        self.betas = tuple(self.betas)  # YAML gives a list


def build_optimizer(parameters: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam8bit":
        # Imported here: bitsandbytes probes for GPU kernels at import time and logs about it.
        import bitsandbytes as bnb

        return bnb.optim.Adam8bit(
            parameters, lr=config.lr_start, betas=config.betas, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(
        parameters, lr=config.lr_start, betas=config.betas, weight_decay=config.weight_decay
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """One-cycle cosine schedule expressed with the report's three learning rates.

    A warm-up shorter than two steps makes OneCycleLR divide by zero, so very short (smoke)
    runs get the shortest warm-up it accepts; at realistic lengths the fraction is exact.
    """
    total_steps = max(total_steps, 4)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.lr_max,
        total_steps=total_steps,
        pct_start=max(config.warmup, 2 / total_steps),
        anneal_strategy="cos",
        cycle_momentum=False,
        div_factor=config.lr_max / config.lr_start,  # initial lr = lr_max / div_factor = lr_start
        final_div_factor=config.lr_start / config.lr_final,  # final lr = lr_start / this = lr_final
    )


def epoch_order(size: int, seed: int, epoch: int) -> torch.Tensor:
    """The example order of one epoch: a pure function of (seed, epoch), so resuming needs no loader state."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator)


def batch_schedule(size: int, config: TrainConfig) -> tuple[int, int]:
    """(batches per epoch, total steps). The last partial batch of an epoch is dropped, as is usual."""
    if size < 1:
        raise ValueError("the training set is empty")
    per_epoch = max(size // config.batch_size, 1)
    total = per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    return per_epoch, total


def batches_from(step: int, size: int, config: TrainConfig) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (step, example indices) from `step` on, in the same order an uninterrupted run would."""
    per_epoch, total = batch_schedule(size, config)
    batch = min(config.batch_size, size)
    while step < total:
        epoch, position = divmod(step, per_epoch)
        order = epoch_order(size, config.seed, epoch)
        yield step, order[position * batch : (position + 1) * batch]
        step += 1


@dataclasses.dataclass
class StepLog:
    step: int
    loss: float
    lr: float
    parts: dict[str, float]


LossFn = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class Trainer:
    """Runs the recipe over a fixed-size dataset addressed by example index.

    Under torch.distributed (`emojich.foundation.distributed`) it trains with DDP: every rank walks the same
    global batches, `loss_fn` computes the mean loss of its `distributed.local_rows` share (a
    loss that ignores sharding is still correct, only redundant), DDP averages the gradients,
    and so each step equals one process's step on the whole global batch. DDP registers only
    the parameters that require grad, so frozen ones are never all-reduced. Every rank keeps
    identical weights, optimizer state and RNG state; only rank 0 writes checkpoints.
    """

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, size: int, config: TrainConfig, device: torch.device
    ):
        self.model, self.loss_fn, self.size, self.config, self.device = model, loss_fn, size, config, device
        self.per_epoch, self.total_steps = batch_schedule(size, config)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("no trainable parameters: everything is frozen")
        self.trainable = trainable
        distributed.check_divisible(min(config.batch_size, size), distributed.world_size())
        # What the loss sees: the model itself, or its DDP wrapper whose backward all-reduces.
        self.forward_model: nn.Module = model
        if distributed.world_size() > 1:
            self.forward_model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.optimizer = build_optimizer(trainable, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.total_steps)
        use_fp16 = config.precision == "fp16"
        if use_fp16 and device.type != "cuda":
            raise ValueError("fp16 training needs a GPU; use bf16 or fp32 on CPU")
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_fp16)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        self.step = 0

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def save(self, folder: Path) -> Path:
        """Rank 0 writes (every rank holds the same state); the others wait until it is in place."""
        dest = Path(folder) / CHECKPOINT_FILE
        if distributed.is_main():
            with atomic_path(dest) as tmp:
                torch.save(self.state_dict(), tmp)
        distributed.barrier()
        return dest

    def resume(self, folder: Path) -> bool:
        """Continue from `folder/last.pt` if present. Returns whether a checkpoint was loaded."""
        path = Path(folder) / CHECKPOINT_FILE
        if not path.is_file():
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["step"] > self.total_steps:
            raise ValueError(f"{path} is at step {state['step']}, beyond this run's {self.total_steps} steps")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.step = int(state["step"])
        log.info("resumed from %s at step %d of %d", path, self.step, self.total_steps)
        return True

    # -- the loop ----------------------------------------------------------------------------------
    def train_step(self, indices: torch.Tensor) -> StepLog:
        self.model.train()
        with torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        ):
            loss, parts = self.loss_fn(self.forward_model, indices)
        # Logged values are global-batch means: with equal shares, the mean of the ranks' means.
        logged = distributed.mean_over_ranks(torch.stack([loss.detach().float(), *parts.values()]).float())
        if not torch.isfinite(logged[0]):  # the same verdict on every rank
            raise FloatingPointError(f"loss is {logged[0].item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.scheduler.get_last_lr()[0]
        if self.step + 1 < self.total_steps:  # OneCycleLR refuses a step past its last one
            self.scheduler.step()
        values = logged.tolist()
        return StepLog(self.step, values[0], lr, dict(zip(parts, values[1:], strict=True)))

    def run(
        self,
        checkpoint_dir: Path | None = None,
        on_step: Callable[[StepLog], None] | None = None,
        stop_after: int | None = None,
    ) -> None:
        """Train to the end (or until `stop_after` steps in this call, which tests use to simulate a kill)."""
        for done_here, (step, indices) in enumerate(batches_from(self.step, self.size, self.config), start=1):
            self.step = step
            record = self.train_step(indices)
            self.step = step + 1
            if on_step:
                on_step(record)
            every = self.config.checkpoint_every
            if checkpoint_dir and every and self.step % every == 0:
                self.save(checkpoint_dir)
            if stop_after is not None and done_here >= stop_after:
                return
        if checkpoint_dir:
            self.save(checkpoint_dir)


def lr_at(config: TrainConfig, total_steps: int, step: int) -> float:
    """The one-cycle learning rate at `step` in closed form (for plots and tests)."""
    warm = config.warmup * total_steps - 1
    if step <= warm:
        frac = step / warm if warm > 0 else 1.0
        return _cos(config.lr_start, config.lr_max, frac)
    frac = (step - warm) / (total_steps - 1 - warm)
    return _cos(config.lr_max, config.lr_final, frac)


def _cos(start: float, end: float, frac: float) -> float:
    return end + (start - end) / 2 * (1 + math.cos(math.pi * frac))
