"""Killing the bot: queued work resumes after a restart and nothing reaches the user twice.

The bot runs as its own process (`python -m tests.bot_harness`, the fake generator) and is
killed with SIGKILL, as an out-of-memory kill or a power cut would: no clean shutdown runs.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bot_harness import TOKEN
from tests.fake_telegram import FakeTelegram
from tests.pipeline import ROOT

USER = 3001


@pytest.fixture
def fake():
    server = FakeTelegram(TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def bots():
    """Bot processes started by the test; any still running at the end (a failed test) are killed."""
    started: list[BotProcess] = []
    yield started
    for bot in started:
        if bot.process.poll() is None:
            bot.kill()


class BotProcess:
    def __init__(self, fake: FakeTelegram, root: Path, log: Path):
        self.log = log
        command = [sys.executable, "-m", "tests.bot_harness", "--api-url", fake.api_url, "--root", str(root)]
        with open(log, "ab") as out:
            # Its own session, so the kill reaches the worker processes too, as a service manager would.
            self.process = subprocess.Popen(
                [*command, "--delay", "3", "--log-level", "DEBUG"],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while b"ready" not in log.read_bytes():
            assert self.process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the bot did not start"
            time.sleep(0.1)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def terminate(self) -> int:
        self.process.terminate()
        return self.process.wait(60)


def _texts(fake, contains):
    return [t for t in fake.texts(USER) if contains in t]


def _candidates(fake):
    """Candidate keyboards still on screen (a pick replaces the keyboard with the choice)."""
    return [m for m in fake.bot_messages(USER) if "pick:" in json.dumps(m.get("reply_markup", {}))]


def _keyboards_sent(fake):
    return [
        c for c in fake.calls_named("sendMessage") if "pick:" in json.dumps(c.params.get("reply_markup", {}))
    ]


def _count(fake, method):
    return len(fake.calls_named(method))


def test_a_killed_bot_resumes_and_sends_nothing_twice(fake, bots, tmp_path):
    log = tmp_path / "bot.log"
    first = BotProcess(fake, tmp_path, log)
    bots.append(first)
    fake.send(USER, "/newpack Рестарт")
    fake.wait_for_text(USER, "начат")
    fake.send(USER, "кошка")
    fake.wait_for_text(USER, "Подпись принята")
    fake.wait_for(lambda: (tmp_path / "data/bot/jobs/000001/started").is_file(), what="the job to start")
    first.kill()  # mid-generation
    assert _count(fake, "sendMediaGroup") == 0

    second = BotProcess(fake, tmp_path, log)
    bots.append(second)
    fake.wait_for(lambda: _candidates(fake), timeout=60, what="the candidates after the restart")
    keyboard = _candidates(fake)[0]
    fake.press(USER, keyboard, keyboard["reply_markup"]["inline_keyboard"][0][0]["callback_data"])
    fake.wait_for_text(USER, "эмодзи")
    # Telegram makes the set, but the bot is killed before it hears so.
    fake.delays["createNewStickerSet"] = 60
    fake.send(USER, "😺")
    fake.wait_for(lambda: _count(fake, "createNewStickerSet"), what="the set to be created")
    second.kill()
    fake.delays.clear()

    third = BotProcess(fake, tmp_path, log)
    bots.append(third)
    fake.wait_for(lambda: _texts(fake, "Готово"), timeout=60, what="the sticker link after the restart")
    time.sleep(3)  # a few queue look-ups more: nothing else may come
    assert third.terminate() == 0  # SIGTERM is a clean stop

    assert _count(fake, "sendMediaGroup") == 1 and len(_keyboards_sent(fake)) == 1
    assert len(_texts(fake, "Подпись принята")) == 1
    assert not _texts(fake, "Ваша очередь подошла")  # the user was told "drawing now" at once
    assert _count(fake, "createNewStickerSet") == 1 and _count(fake, "addStickerToSet") == 0
    assert len(_texts(fake, "Готово")) == 1
    (name,) = fake.sets
    assert len(fake.sets[name]["stickers"]) == 1 and fake.sets[name]["thumbnail"] is not None
    assert _count(fake, "getStickerSet") == 1  # how the third bot learnt the set was made
    output = log.read_text()
    assert "restart: 1 interrupted job(s) queued again" in output
    assert TOKEN not in output and TOKEN.split(":")[1] not in output
    assert "/bot<token>/" in output  # httpx logged the URLs at DEBUG, with the token redacted
