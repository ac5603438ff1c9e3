"""Fidelity measures that do not ask the generator: colour error and caption retrieval."""

from __future__ import annotations

import pytest
import torch

from emojich.fidelity.colour import block_delta_e
from emojich.fidelity.retrieval import (
    Reference,
    RetrievalIndex,
    fidelity_metrics,
    summarise,
    thumbnails,
)


def _solid(colour: tuple[int, int, int], size: int = 32) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.uint8)[:, None, None].expand(3, size, size).clone()


def _emoji(colour: tuple[int, int, int], shape: str, size: int = 32) -> torch.Tensor:
    """A coloured disc or bar on white: different layouts, like different emoji."""
    image = _solid((255, 255, 255), size)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    if shape == "disc":
        inside = (ys - size // 2) ** 2 + (xs - size // 2) ** 2 <= (size // 3) ** 2
    else:
        inside = (ys > size // 3) & (ys < 2 * size // 3)
    image[:, inside] = torch.tensor(colour, dtype=torch.uint8)[:, None]
    return image


def test_delta_e_is_zero_for_equal_images_and_large_for_brown_instead_of_red() -> None:
    red = torch.stack([_emoji((220, 30, 40), "disc")])
    brown = torch.stack([_emoji((140, 100, 70), "disc")])
    assert block_delta_e(red, red) == 0.0
    assert block_delta_e(red, brown) > 10.0
    # White against black is L* 100 against 0.
    assert block_delta_e(_solid((255, 255, 255))[None], _solid((0, 0, 0))[None]) == pytest.approx(
        100.0, abs=0.1
    )
    with pytest.raises(ValueError, match="shapes differ"):
        block_delta_e(red, brown[:, :, :16])


def _reference() -> Reference:
    images = [
        _emoji((220, 30, 40), "disc"),  # «алое сердце», twice (two styles)
        _emoji((200, 40, 50), "disc"),
        _emoji((30, 160, 60), "bar"),  # «флаг Япония» (train)
        _emoji((40, 80, 220), "disc"),  # «синий круг» (validation caption)
        _emoji((40, 90, 210), "disc"),
    ]
    captions = ["алое сердце", "Алое  сердце", "флаг Япония", "синий круг", "синий круг"]
    splits = ["train", "train", "train", "val", "val"]
    return Reference.build(thumbnails(torch.stack(images)), captions, splits)


def test_a_generated_image_retrieves_the_caption_of_the_real_emoji_it_looks_like() -> None:
    reference = _reference()
    assert reference.index.captions == ["алое сердце", "синий круг", "флаг япония"]  # normalised
    looks_red = thumbnails(torch.stack([_emoji((210, 35, 45), "disc")] * 2))
    ranks = reference.prompt_ranks(["алое сердце", "флаг Япония"], [looks_red[:1], looks_red[1:]])
    assert ranks == [[1], [3]]  # right caption first; a red disc is the worst «флаг Япония»
    assert reference.prompt_ranks(["зима в горах"], [looks_red[:1]]) == [[]]  # zero-shot: no caption


def test_prompt_kinds_and_the_leave_one_out_real_baseline() -> None:
    reference = _reference()
    assert reference.prompt_kind("Алое сердце") == "train"
    assert reference.prompt_kind("синий круг") == "held-out"
    assert reference.prompt_kind("розовая альпака улыбается") == "zero-shot"
    # Each validation emoji, itself excluded, still finds its twin of the same caption.
    assert reference.real_baseline()["top1"] == 1.0
    index = reference.index
    rows = [3]
    assert index.ranks(index.features[rows], [1], exclude=rows) == [1]
    assert index.ranks(index.features[rows], [1]) == [1]


def test_fidelity_metrics_report_kinds_chance_and_baseline() -> None:
    reference = _reference()
    prompts = ["алое сердце", "синий круг", "зима в горах"]
    metrics = fidelity_metrics(reference, prompts, [[1, 2], [3], []])
    assert (
        metrics["prompts_train"] == 1
        and metrics["prompts_held_out"] == 1
        and metrics["prompts_zero_shot"] == 1
    )
    assert metrics["train_top1"] == 0.5 and metrics["train_top10"] == 1.0
    assert metrics["held_out_median_rank"] == 3.0
    assert metrics["chance_top10"] == 1.0  # only three captions: anything is top 10
    assert metrics["real_val_top1"] == 1.0


def test_summary_against_chance() -> None:
    summary = summarise([1, 5, 20, 400], caption_count=1000)
    assert summary["top1"] == 0.25 and summary["top10"] == 0.5
    assert summary["median_rank"] == 12.5
    assert summary["top10_chance"] == 0.01 and summary["median_rank_chance"] == 500.5
    assert summarise([], 10) == {}


def test_index_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="2 thumbnails but 1 captions"):
        RetrievalIndex.build(thumbnails(torch.stack([_solid((0, 0, 0))] * 2)), ["a"])
