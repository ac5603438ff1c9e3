"""Queue and limits with a slow generator: the bot keeps answering, users wait their turn politely."""

import json
import re
import time

import pytest

from emojich.bot import texts
from tests.bot_harness import BotThread, fake_run, make_config

DELAY = 2.0  # seconds the fake generator takes per job


@pytest.fixture(scope="module")
def bot(fake, tmp_path_factory):
    config = make_config(tmp_path_factory.mktemp("bot"), daily_quota=3, max_queue=3)
    running = BotThread(fake_run(config, fake.api_url, delay=DELAY)).start()
    yield running
    running.stop()


def _has_candidates(message):
    return "pick:" in json.dumps(message.get("reply_markup", {}))


def test_three_users_at_once_wait_their_turn_and_the_bot_keeps_answering(fake, bot):
    users = (2001, 2002, 2003)
    for user in users:
        fake.say(user, "/newpack Очередь", "начат")
    marks = {user: fake.last_id(user) for user in users}
    sent = time.monotonic()
    for user in users:  # three captions in one burst, as if sent together
        fake.send(user, f"кошка номер {user}")
    replies = {user: fake.wait_for_text(user, "Подпись принята", after=marks[user])["text"] for user in users}
    assert "Уже рисую" in replies[2001]
    assert "Вы 2-й в очереди" in replies[2002]
    assert "Вы 3-й в очереди" in replies[2003]

    # While the first job is drawn: the queue is full, a second caption is refused, the bot answers.
    asked = time.monotonic()
    fake.say(2004, "/newpack Лишний", "начат")
    assert "в очереди 3 подписей" in fake.say(2004, "кошка", "очень много желающих")["text"]
    assert "Я ещё рисую вашу прошлую подпись" in fake.say(2001, "собака", "прошлую подпись")["text"]
    assert "3-я в очереди" in fake.say(2003, "/status", "в очереди")["text"]
    assert "/newpack" in fake.say(2002, "/help", "/mypacks")["text"]
    answered = time.monotonic() - asked
    assert not any(_has_candidates(m) for m in fake.bot_messages(2001)), "answers came only after the job"
    assert answered < DELAY, f"five replies took {answered:.2f} s while a {DELAY} s job ran"

    arrived = {}
    for user in users:
        fake.wait_for_message(user, _has_candidates, timeout=60, after=marks[user])
        arrived[user] = time.monotonic() - sent
    # One worker: the candidates come one job after another, in queue order.
    assert arrived[2001] < arrived[2002] < arrived[2003]
    assert arrived[2002] - arrived[2001] >= 0.8 * DELAY and arrived[2003] - arrived[2002] >= 0.8 * DELAY
    print("caption -> candidates with 3 users at once (s):", {u: round(t, 2) for u, t in arrived.items()})
    # Those who waited hear when their turn comes; the first was told at once.
    assert not [t for t in fake.texts(2001) if "Ваша очередь подошла" in t]
    for user in (2002, 2003):
        assert len([t for t in fake.texts(user) if "Ваша очередь подошла" in t]) == 1


def test_the_daily_quota_counts_regenerations(fake, bot):
    user = 2010
    fake.say(user, "/newpack Квота", "начат")
    after = fake.last_id(user)
    fake.say(user, "кошка", "Подпись принята")
    for _ in range(2):  # captions 2 and 3 of today: regenerations
        keyboard = fake.wait_for_message(user, _has_candidates, timeout=60, after=after)
        after = fake.last_id(user)
        regen = next(
            b["callback_data"]
            for row in keyboard["reply_markup"]["inline_keyboard"]
            for b in row
            if b["callback_data"].startswith("regen:")
        )
        fake.press(user, keyboard, regen)
        fake.wait_for_text(user, "Подпись принята", after=after)
    fake.wait_for_message(user, _has_candidates, timeout=60, after=after)
    assert fake.say(user, "собака", "лимит исчерпан")["text"] == texts.QUOTA.format(quota=3)
    assert "Сегодня использовано 3 из 3" in fake.say(user, "/status", "Сегодня")["text"]


def test_wait_estimates_come_from_the_jobs_the_worker_timed(fake, bot):
    user = 2020
    fake.say(user, "/newpack Время", "начат")
    after = fake.last_id(user)
    first = fake.say(user, "кошка", "Подпись принята")["text"]
    # Before a job is timed: a first guess, not "about a minute" for a job of seconds.
    assert "минут" not in first and re.search(r"займёт около (секунды|\d+ с)", first), first
    keyboard = fake.wait_for_message(user, _has_candidates, timeout=60, after=after)
    skip = next(
        b["callback_data"]
        for row in keyboard["reply_markup"]["inline_keyboard"]
        for b in row
        if b["callback_data"].startswith("skip:")
    )
    fake.press(user, keyboard, skip)
    fake.wait_for_text(user, "Пропустили", after=after)
    # Every job here takes DELAY (2 s) and a little more: the estimate says so, not "about 5 s".
    second = fake.say(user, "собака", "Подпись принята")["text"]
    assert re.search(r"займёт около [23] с", second), second
    status = fake.say(user, "/status", "Сегодня")["text"]
    assert "Рисую" in status or "готовы" in status
