"""The bot's state and what a job knows about itself, without a bot running."""

from __future__ import annotations

import sqlite3

import torch

from emojich.bot.store import Store
from emojich.bot.worker import new_image_chance


def test_new_image_chance_is_zero_when_every_image_came_up_twice():
    same = torch.zeros(8, 16, dtype=torch.long)  # a caption drawn alike whatever the seed
    distinct = torch.arange(8 * 16).reshape(8, 16)
    pairs = torch.cat([distinct[:4], distinct[:4]])  # four images, each drawn twice
    assert new_image_chance(same) == 0.0 and new_image_chance(pairs) == 0.0
    assert new_image_chance(distinct) == 1.0
    assert new_image_chance(torch.cat([distinct[:6], distinct[:2]])) == 0.5  # 4 of 8 seen once


def test_a_state_file_from_before_gains_the_new_columns(tmp_path):
    path = tmp_path / "bot.sqlite3"
    Store(path).close()
    with sqlite3.connect(path) as db:  # as an older bot left it
        db.execute("ALTER TABLE jobs DROP COLUMN new_image_chance")
    store = Store(path)
    job = store.enqueue(1, 1, 1, "кошка", False, 42, 20, 20)
    store.claim_next()
    assert store.finish_generation(job.id, [], [], 1.0, 0.0)
    assert store.job(job.id).new_image_chance == 0.0
    store.close()
