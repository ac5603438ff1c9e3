"""What the bot says about waits and captions: examples it can draw, waits it measured."""

from __future__ import annotations

import argparse
import re

import pytest

from emojich.bot import texts
from emojich.bot.config import BotParams
from emojich.bot.services import Services
from emojich.bot.store import Store
from emojich.cli import build_parser

SUGGESTING = {
    "START": texts.START,
    "HELP": texts.HELP,
    "PACK_STARTED": texts.PACK_STARTED.format(title="Набор"),
    "CAPTION_EMPTY": texts.CAPTION_EMPTY,
    "CAPTION_ONLY_EMOJI": texts.CAPTION_ONLY_EMOJI,
}


def test_every_suggested_caption_is_one_of_the_examples():
    for name, text in SUGGESTING.items():
        quoted = [q for q in re.findall(r"«([^»]+)»", text) if q != "Набор"]
        assert quoted, f"{name} suggests no caption"
        assert set(quoted) <= set(texts.EXAMPLE_CAPTIONS), f"{name} suggests {quoted}"
    # `emojich generate --help` names the same ones.
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    generate = " ".join(commands.choices["generate"].format_help().split())  # unwrapped
    assert all(caption in generate for caption in texts.EXAMPLE_CAPTIONS)
    assert not re.search(r"альпака|улыбается", generate + "".join(SUGGESTING.values()))


def test_a_wait_is_said_to_the_second_while_short():
    assert texts.eta(0.4) == texts.eta(1.2) == "около секунды"
    assert texts.eta(2.6) == "около 3 с" and texts.eta(9.4) == "около 9 с"
    assert texts.eta(33) == "около 35 с" and texts.eta(150) == "около 2 мин"


def _timed_jobs(store: Store, seconds: list[float]) -> None:
    for number, duration in enumerate(seconds):
        job = store.enqueue(number + 1, number + 1, 1, "кошка", False, 42, 20, 20)
        assert store.claim_next().id == job.id
        assert store.finish_generation(job.id, [], [], duration)
        store.set_status(job.id, "done")  # out of the way of the next claim


def test_the_estimate_is_the_median_of_the_last_jobs_else_a_first_guess(tmp_path):
    store = Store(tmp_path / "bot.sqlite3")
    params = BotParams(first_guess_s=3.0)
    services = Services(
        config=type("Config", (), {"params": params})(),  # only the params are read
        store=store,
        generation=None,  # type: ignore[arg-type]
        stickers=None,  # type: ignore[arg-type]
        model=None,  # type: ignore[arg-type]
        count_tokens=len,
    )
    assert services.eta_seconds(1) == 3.0 and services.eta_seconds(2) == 6.0
    _timed_jobs(store, [1.0, 1.2, 40.0])  # one slow job (the first after start-up, say)
    assert services.eta_seconds(1) == 1.2 and services.eta_seconds(3) == pytest.approx(3.6)
    store.close()
