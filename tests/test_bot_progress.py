"""The progress message: a slow job is shown as «Рисую… 40 % · осталось ~1 с», edited at most every
`bot.progress_interval_s`, and gone once the candidates are out; a fast job shows nothing.

End to end over the fake Bot API with the fake generator, which reports 20 sampling steps over
the first 60 % of its delay and then "decodes" unreported for the rest. The estimate and the
skipping of identical texts are also checked directly, without HTTP or clocks.
"""

import asyncio
import itertools
import json
import logging
import re
import types

import pytest

from emojich.bot import texts
from emojich.bot.progress import REFUSED, Estimate, ProgressMessage
from emojich.bot.store import Store
from tests.bot_harness import BotThread, fake_run, make_config

INTERVAL = 0.4  # bot.progress_interval_s here; 3 s in params.yaml
SLOW = "медленная кошка"  # 2.4 s: about 1.4 s of reported steps, then 1 s of decoding
REFUSED_EDITS = "кошка без правок"
REFUSED_DELETE = "кошка без удаления"
DELAYS = {SLOW: 2.4, REFUSED_EDITS: 1.2, REFUSED_DELETE: 1.2}  # any other caption: at once
PERCENT = re.compile(r"(\d+) %")


@pytest.fixture(scope="module")
def bot(fake, tmp_path_factory):
    config = make_config(tmp_path_factory.mktemp("bot"), progress_interval_s=INTERVAL)
    running = BotThread(fake_run(config, fake.api_url, delays=DELAYS)).start()
    yield running
    running.stop()


def _is_progress(text):
    return text.startswith("Рисую «")


def _status_calls(fake, user, start):
    """The calls about the status message for `user` from call number `start` on, oldest first."""
    calls = []
    for call in fake.calls[start:]:
        if call.params.get("chat_id") != user:
            continue
        sent = call.method == "sendMessage" and _is_progress(call.params["text"])
        if sent or call.method in ("editMessageText", "deleteMessage"):
            calls.append(call)
    return calls


def _draw(fake, user, caption):
    """A caption drawn to its candidates; returns the number of the first call it caused."""
    fake.say(user, "/newpack Прогресс", "начат")
    start = len(fake.calls)
    after = fake.last_id(user)
    fake.say(user, caption, "Подпись принята")
    fake.wait_for_message(user, lambda m: "pick:" in json.dumps(m.get("reply_markup", {})), after=after)
    return start


def _wait_for_call(fake, user, start, method):
    return fake.wait_for(
        lambda: [c for c in _status_calls(fake, user, start) if c.method == method], 10, method
    )


def test_a_slow_job_edits_one_status_message_then_deletes_it(fake, bot):
    user = 3001
    refused = bot.services.counters[REFUSED]
    start = _draw(fake, user, SLOW)
    _wait_for_call(fake, user, start, "deleteMessage")
    calls = _status_calls(fake, user, start)
    shown, deleted = calls[:-1], calls[-1]
    assert deleted.method == "deleteMessage" and deleted.error is None

    # One message: sent silently at the first look with something to show, then only edited.
    assert shown[0].method == "sendMessage" and shown[0].params["disable_notification"] is True
    assert all(c.method == "editMessageText" for c in shown[1:]) and len(shown) >= 3
    assert {c.params["message_id"] for c in shown[1:]} == {deleted.params["message_id"]}

    lines = [c.params["text"] for c in shown]
    percents = [int(PERCENT.search(line).group(1)) for line in lines if PERCENT.search(line)]
    assert len(set(percents)) >= 2 and percents == sorted(percents), lines
    assert all(0 < p < 100 for p in percents)
    # What is left comes from this job's pace: 20 steps in about 1.4 s.
    lefts = [int(m.group(1)) for line in lines if (m := re.search(r"осталось ~(\d+) с", line))]
    assert lefts and all(1 <= left <= 3 for left in lefts), lines
    # Sampled, the job decodes for about 1 s (two or three looks): "almost done" is said once.
    assert lines[-1] == texts.PROGRESS_FINISHING.format(caption=SLOW)
    assert all(a != b for a, b in itertools.pairwise(lines)), lines
    assert not [c for c in calls if c.error], [c.error for c in calls]

    # At most one call per interval: each look waits a whole interval after the previous ended.
    gaps = [b.at - a.at for a, b in itertools.pairwise(shown)]
    assert min(gaps) >= INTERVAL, gaps

    # Deleted after the candidates are out: nothing stale remains, and no moment shows neither.
    media = max(
        i for i, c in enumerate(fake.calls) if c.method == "sendMediaGroup" and c.params["chat_id"] == user
    )
    assert fake.calls.index(deleted) > media
    assert not [t for t in fake.texts(user) if _is_progress(t) or PERCENT.search(t)]
    assert bot.services.store.latest_job(user, ("delivered",)).progress_message_id is None
    assert bot.services.counters[REFUSED] == refused


def test_a_job_shorter_than_the_interval_shows_no_progress(fake, bot):
    user = 3002
    start = _draw(fake, user, "кошка")
    assert _status_calls(fake, user, start) == []
    assert [t for t in fake.texts(user) if "Подпись принята" in t]  # the queue's reply stays as it was


def test_refused_edits_are_logged_and_counted_and_the_job_is_delivered(fake, bot, caplog):
    user = 3003
    refused = bot.services.counters[REFUSED]
    fake.refuse["editMessageText"] = "Bad Request: message can't be edited"
    try:
        with caplog.at_level(logging.WARNING, logger="emojich.bot.progress"):
            start = _draw(fake, user, REFUSED_EDITS)
            _wait_for_call(fake, user, start, "deleteMessage")
    finally:
        fake.refuse.clear()
    edits = [c for c in _status_calls(fake, user, start) if c.method == "editMessageText"]
    assert edits and all(c.error for c in edits)
    assert bot.services.counters[REFUSED] - refused == len(edits)
    assert "refused to show the progress message" in caplog.text
    assert not [t for t in fake.texts(user) if _is_progress(t)]  # deleted all the same


def test_a_status_message_that_cannot_be_deleted_says_the_job_ended(fake, bot):
    user = 3004
    refused = bot.services.counters[REFUSED]
    fake.refuse["deleteMessage"] = "Bad Request: message can't be deleted"
    try:
        start = _draw(fake, user, REFUSED_DELETE)
        _wait_for_call(fake, user, start, "deleteMessage")
        ended = texts.PROGRESS_ENDED.format(caption=REFUSED_DELETE)
        fake.wait_for(lambda: ended in fake.texts(user), 10, "the ended text")
    finally:
        fake.refuse.clear()
    assert bot.services.counters[REFUSED] == refused + 1
    assert not [t for t in fake.texts(user) if _is_progress(t) or PERCENT.search(t)]


# ----- without HTTP -----


def test_what_is_left_is_this_jobs_time_per_step_from_its_first_report():
    estimate = Estimate(started=100.0)
    assert estimate.seconds_left() is None and estimate.text("кошка") is None
    estimate.report(10, 1000, now=105.0)  # 5 s to the first report: the hop and the caption, once
    assert estimate.seconds_left() == pytest.approx(5.0 / 10 * 990)  # one report: all it knows
    estimate.report(410, 1000, now=109.0)  # then 400 steps in 4 s
    assert estimate.seconds_left() == pytest.approx(0.01 * 590)
    assert estimate.text("кошка") == "Рисую «кошка»… 41 % · осталось ~6 с"
    estimate.report(1000, 1000, now=115.0)
    assert estimate.text("кошка") == texts.PROGRESS_FINISHING.format(caption="кошка")


def test_the_progress_line_never_says_100_percent_before_the_end():
    assert texts.progress("кошка", 999, 1000, 0.2) == "Рисую «кошка»… 99 % · осталось ~1 с"
    assert texts.left(33) == "~35 с" and texts.left(150) == "~2 мин"


class _RecordingBot:
    def __init__(self):
        self.calls = []

    async def send_message(self, chat_id, text, **kwargs):
        self.calls.append(("send", text))
        return types.SimpleNamespace(message_id=77)

    async def edit_message_text(self, text, chat_id, message_id):
        self.calls.append(("edit", text))

    async def delete_message(self, chat_id, message_id):
        self.calls.append(("delete", message_id))


def test_a_look_with_nothing_new_sends_nothing_and_a_cancelled_job_loses_its_message(tmp_path):
    store = Store(tmp_path / "bot.sqlite3")
    job = store.enqueue(1, 1, 1, "кошка", False, 42, 20, 20)
    job = store.claim_next()
    services = types.SimpleNamespace(store=store, counters={REFUSED: 0})
    recorder = _RecordingBot()
    progress = ProgressMessage(services, job, recorder)

    async def looks():
        await progress.look()  # nothing reported yet: nothing to say
        progress.report(5, 20)
        await progress.look()
        await progress.look()  # the same line: not sent again
        progress.report(6, 20)
        await progress.look()
        store.cancel(1)
        await progress.look()  # cancelled meanwhile: the message goes
        await progress.look()

    asyncio.run(looks())
    assert [kind for kind, _ in recorder.calls] == ["send", "edit", "delete"]
    assert recorder.calls[0][1].startswith("Рисую «кошка»… 25 %")
    assert store.job(job.id).progress_message_id is None
    store.close()
