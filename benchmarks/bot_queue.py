"""How long a bot user waits: caption to candidates for one user, then for several at once.

The real bot (`emojich.bot.app.run_bot`, the installed checkpoint and U-Net of this checkout, as
`emojich bot` would load them) polls the fake Bot API of the tests on 127.0.0.1; simulated users
send `/newpack` and a caption. Its state goes to a temporary folder, so the checkout's
data/bot is untouched. The JSON gives caption to candidates for one user (twice: the first
includes warming up), pick to sticker link, and for several users captioning at once, the place
the bot announced to each, the seconds until that reply and until their candidates arrived.

Needs the pipeline's outputs (`make repro`). Run from the project root:
`.venv/bin/python benchmarks/bot_queue.py [--users 3]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' fake Bot API

from emojich.bot.app import BotRun
from emojich.bot.config import load_config
from tests.bot_harness import TOKEN, BotThread
from tests.fake_telegram import FakeTelegram

CAPTIONS = ("кошка улыбается", "красное сердце", "розовая альпака", "зима в горах", "кролик синего цвета")


def _has_candidates(message: dict) -> bool:
    return "pick:" in json.dumps(message.get("reply_markup", {}))


def _round(fake: FakeTelegram, users: list[int], captions: list[str]) -> list[dict]:
    """All `users` send a caption in one burst; when did each hear back, and get candidates?"""
    marks = {user: fake.last_id(user) for user in users}
    sent = time.monotonic()
    for index, user in enumerate(users):
        fake.send(user, captions[index % len(captions)])
    replies = {}
    for user in users:
        reply = fake.wait_for_message(user, lambda message: "text" in message, timeout=600, after=marks[user])
        if "draw:" in json.dumps(reply.get("reply_markup", {})):
            # The user's earlier candidates still wait: the bot asks first; draw the new caption.
            buttons = [b["callback_data"] for row in reply["reply_markup"]["inline_keyboard"] for b in row]
            data = next(data for data in buttons if data.startswith("draw:"))
            mark = fake.last_id(user)
            fake.press(user, reply, data)
            reply = fake.wait_for_text(user, "Подпись принята", timeout=600, after=mark)
        replies[user] = (reply["text"], time.monotonic() - sent)
        if "Подпись принята" not in reply["text"]:
            raise SystemExit(f"the bot refused the caption: {reply['text']}")
    rows = []
    for user in users:
        fake.wait_for_message(user, _has_candidates, timeout=600, after=marks[user])
        text, replied = replies[user]
        place = re.search(r"Вы (\d+)-й в очереди", text)
        rows.append(
            {
                "user": user,
                "place": int(place.group(1)) if place else 1,
                "reply_s": round(replied, 2),
                "candidates_s": round(time.monotonic() - sent, 2),
            }
        )
    return rows


def _sticker(fake: FakeTelegram, user: int) -> float:
    """Pick the first candidate, send an emoji: seconds until the set's link arrives."""
    keyboard = [m for m in fake.bot_messages(user) if _has_candidates(m)][-1]
    mark = fake.last_id(user)
    started = time.monotonic()
    fake.press(user, keyboard, keyboard["reply_markup"]["inline_keyboard"][0][0]["callback_data"])
    fake.wait_for_text(user, "эмодзи", after=mark)
    fake.send(user, "😺")
    fake.wait_for_text(user, "t.me/addstickers/", timeout=600, after=mark)
    return round(time.monotonic() - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--captions", nargs="+", default=list(CAPTIONS), help="one per user, in turn")
    args = parser.parse_args()
    config = load_config(args.params)
    with tempfile.TemporaryDirectory(prefix="emojich-bot-bench-") as state:
        config = dataclasses.replace(
            config, params=dataclasses.replace(config.params, state_dir=state, poll_timeout=1)
        )
        fake = FakeTelegram(TOKEN).start()
        started = time.monotonic()
        bot = BotThread(BotRun(config, TOKEN, fake.api_url)).start(timeout=600)
        startup = time.monotonic() - started
        try:
            users = list(range(5001, 5001 + args.users))
            for user in users:
                fake.send(user, "/newpack Замер")
                fake.wait_for_text(user, "начат")
            single = [_round(fake, users[:1], args.captions)[0] for _ in range(2)]  # the first warms up
            sticker = _sticker(fake, users[0])
            together = _round(fake, users, args.captions)
            model = bot.services.model.description if bot.services else ""
        finally:
            bot.stop()
            fake.stop()
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "model": model,
        "candidates": config.params.candidates,
        "attempts": config.params.attempts,
        "startup_s": round(startup, 2),
        "one_user_s": [row["candidates_s"] for row in single],
        "pick_to_link_s": sticker,  # background removal, upload, createNewStickerSet, thumbnail
        "users_at_once": together,
    }
    print(json.dumps(report, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
