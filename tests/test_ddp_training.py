"""Fine-tuning under DDP (2 gloo processes) equals one process with the same global batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from emojich.foundation import distributed
from emojich.models.dalle import Dalle, DalleConfig
from emojich.text.bpe import TextTokenizer
from emojich.train.finetune import allreduce_for_preset, build_pairs, freeze_for_finetune, pair_loss
from emojich.train.loop import TrainConfig, Trainer
from tests.ddp_harness import run_ranks

CAPTIONS = ["красный круг", "синий квадрат", "зелёный треугольник", "жёлтая звезда", "белое сердце"]
TOLERANCE = 1e-5


def _config(optimizer: str) -> TrainConfig:
    return TrainConfig(
        epochs=2,
        batch_size=4,
        lr_start=1e-4,
        lr_max=1e-3,
        lr_final=1e-5,
        checkpoint_every=2,
        optimizer=optimizer,
    )


def _trainer(optimizer: str) -> Trainer:
    """The tiny transformer with the report's freezing and caption dropout on 12 pairs.

    Model dropout is off: its masks are drawn per row of the local batch, so with it on a
    2-process step is a different (equally valid) random draw than a 1-process step.
    """
    tokenizer = TextTokenizer.train(CAPTIONS * 3, vocab_size=64)
    cfg = dataclasses.replace(
        DalleConfig.preset("tiny"),
        vocab_size=tokenizer.vocab_size + 8,
        layer_masks=None,
        attention_dropout=0.0,
        output_dropout=0.0,
    )
    torch.manual_seed(0)
    model = Dalle(cfg)
    freeze_for_finetune(model, "attention-and-mlp")
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, cfg.image_vocab_size, (12, cfg.image_seq_length), generator=generator)
    pairs = build_pairs(
        [CAPTIONS[i % 5] for i in range(12)], codes, tokenizer, cfg.text_seq_length, cfg.image_vocab_size
    )
    cpu = torch.device("cpu")
    return Trainer(model, pair_loss(pairs, cpu, caption_dropout=0.3), len(pairs), _config(optimizer), cpu)


def _train(optimizer: str, checkpoints: Path | None = None, stop_after: int | None = None) -> dict:
    trainer = _trainer(optimizer)
    if checkpoints is not None and stop_after is None:
        trainer.resume(checkpoints)
    losses: list[float] = []
    trainer.run(checkpoints, on_step=lambda record: losses.append(record.loss), stop_after=stop_after)
    return {"losses": losses, "weights": trainer.model.state_dict(), "step": trainer.step}


def _count_allreduced_bytes(trainer: Trainer, seen: list[int]) -> None:
    """A DDP communication hook that records each bucket's size, then all-reduces as usual."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    def hook(state, bucket):
        seen.append(bucket.buffer().numel() * bucket.buffer().element_size())
        return default_hooks.allreduce_hook(state, bucket)

    trainer.forward_model.register_comm_hook(None, hook)


def _ranks_train(out: Path) -> None:
    """On every rank: adamw uninterrupted; adam8bit uninterrupted; adam8bit killed and resumed."""
    bucket_bytes: list[int] = []
    trainer = _trainer("adamw")
    _count_allreduced_bytes(trainer, bucket_bytes)
    losses: list[float] = []
    trainer.run(on_step=lambda record: losses.append(record.loss))
    adamw = {
        "losses": losses,
        "weights": trainer.model.state_dict(),
        "bytes": sum(bucket_bytes) / trainer.step,
    }

    whole = _train("adam8bit")
    killed = _train("adam8bit", out / "checkpoints", stop_after=3)  # the last checkpoint holds step 2
    torch.manual_seed(999)  # a restarted process starts with other RNG state
    resumed = _train("adam8bit", out / "checkpoints")
    if distributed.is_main():
        torch.save({"adamw": adamw, "whole": whole, "killed": killed, "resumed": resumed}, out / "ranks.pt")


def test_two_gloo_processes_train_like_one_process_with_the_same_global_batch(tmp_path):
    run_ranks(2, _ranks_train, tmp_path)
    ranks = torch.load(tmp_path / "ranks.pt", weights_only=False)
    one = _train("adamw")

    two = ranks["adamw"]
    assert len(two["losses"]) == len(one["losses"]) == 6  # 12 pairs / global batch 4, 2 epochs
    for step, (a, b) in enumerate(zip(one["losses"], two["losses"], strict=True)):
        assert abs(a - b) <= TOLERANCE, (step, a, b)
    for name, value in one["weights"].items():
        assert torch.allclose(value, two["weights"][name], atol=TOLERANCE, rtol=0), name
    # The weights moved, so equality above says something.
    assert not torch.equal(
        one["weights"]["to_logits.1.weight"], _trainer("adamw").model.state_dict()["to_logits.1.weight"]
    )

    # Only trainable parameters were all-reduced: fp32 gradients of exactly those tensors.
    model = _trainer("adamw").model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable < model.num_parameters()
    assert two["bytes"] == trainable * 4

    # 8-bit Adam under DDP, killed after step 3 and resumed from step 2, ends where it would have.
    assert ranks["killed"]["step"] == 3 and ranks["resumed"]["step"] == 6
    assert len(ranks["resumed"]["losses"]) == 4
    assert ranks["resumed"]["losses"] == ranks["whole"]["losses"][2:]
    for name, value in ranks["whole"]["weights"].items():
        assert torch.equal(value, ranks["resumed"]["weights"][name]), name


def test_malevich_allreduce_volume_counts_only_the_unfrozen_tensors():
    frozen = allreduce_for_preset("malevich", "attention-and-mlp", world=8)
    full = allreduce_for_preset("malevich", "none", world=8)
    assert full.elements > 1_200_000_000  # the 1.3B model, counted on the meta device
    assert frozen.elements < full.elements / 3  # attention and feed-forward are most of it
    assert frozen.gradient_bytes == frozen.elements * 4
    assert frozen.ring_bytes_per_rank == 2 * 7 * frozen.gradient_bytes // 8
