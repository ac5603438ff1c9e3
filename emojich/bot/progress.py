"""What a user waiting for a job sees: one status message, «Рисую «кошка»… 40 % · осталось ~12 с».

The worker reports how many sampling steps are done (worker.py relays the reports to the event
loop) and `Estimate` keeps the latest, with the time it arrived. `ProgressMessage.follow` awaits
the job and, every `bot.progress_interval_s`, shows what changed: it sends the status message at
the first look with something to say and edits it afterwards, and a look whose text is the one
shown sends nothing (Telegram refuses an identical edit). One job is drawn at a time, so this
interval per job is also the interval per chat. A job shorter than the interval shows nothing.

`close` deletes the message once the job has ended, however it ended (candidates, failure,
/cancel), so no stale percentage stays in the chat; its id is kept in the Store so that a bot
restarted mid-job reuses it and deletes it in the end too. Telegram refusing a call here never
touches the job: the refusal is logged and counted (`Services.counters`), and the next look
tries again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from telegram import Bot
from telegram.error import BadRequest, TelegramError

from emojich.bot import texts
from emojich.bot.services import Services
from emojich.bot.store import Job

log = logging.getLogger("emojich.bot.progress")

T = TypeVar("T")

REFUSED = "progress_refused"  # the counter of calls about status messages that Telegram refused


@dataclasses.dataclass
class Estimate:
    """How far one job got, from the worker's reports, and what is left at this job's own pace."""

    started: float  # when the job went to the worker (time.monotonic)
    done: int = 0
    total: int = 0
    first: tuple[int, float] | None = None  # (done, arrival) of the first report
    last_at: float = 0.0  # arrival of the latest report

    def report(self, done: int, total: int, now: float) -> None:
        if self.first is None:
            self.first = (done, now)
        self.done, self.total, self.last_at = done, total, now

    def seconds_left(self) -> float | None:
        """The steps left times this job's time per step; None before a step was timed.

        The pace is measured from the first report on: what came before it (the hop to the worker,
        reading the caption) is paid once per job, not once per step.
        """
        if self.first is None or self.done <= 0:
            return None
        first_done, first_at = self.first
        if self.done > first_done:
            per_step = (self.last_at - first_at) / (self.done - first_done)
        else:
            per_step = (self.last_at - self.started) / self.done
        return per_step * (self.total - self.done)

    def text(self, caption: str) -> str | None:
        """The status line; None while nothing is sampled (the queue's reply said it started)."""
        if self.done <= 0 or self.total <= 0:
            return None
        return texts.progress(caption, self.done, self.total, self.seconds_left())


class ProgressMessage:
    """The status message of one job (see the module's docstring)."""

    def __init__(self, services: Services, job: Job, bot: Bot):
        self.services = services
        self.job = job
        self.bot = bot
        self.message_id = job.progress_message_id  # one sent before a restart is reused
        self.shown: str | None = None
        self.estimate = Estimate(time.monotonic())

    def report(self, done: int, total: int) -> None:
        """The job's `on_progress`, called on the event loop: records, never waits."""
        self.estimate.report(done, total, time.monotonic())

    async def follow(self, work: Awaitable[T]) -> T:
        """Await `work` (the job in the worker, reporting to `report`), looking at it every interval."""
        self.estimate = Estimate(time.monotonic())
        task = asyncio.ensure_future(work)
        interval = self.services.config.params.progress_interval_s
        try:
            while True:
                # The next look waits a whole interval after the last one ended, so edits are at
                # least that far apart even when Telegram answers slowly.
                finished, _ = await asyncio.wait({task}, timeout=interval)
                if finished:
                    return task.result()
                await self.look()
        except asyncio.CancelledError:
            task.cancel()
            raise

    async def look(self) -> None:
        """Send or edit the status message if what it would say changed."""
        if self.services.store.job(self.job.id).status != "running":
            await self.close()  # cancelled meanwhile: the user asked not to hear about it
            return
        text = self.estimate.text(self.job.caption)
        if text is None or text == self.shown:
            return
        try:
            if self.message_id is None:
                # Silent: the candidates, not a percentage, are worth a notification.
                message = await self.bot.send_message(self.job.chat_id, text, disable_notification=True)
                self.message_id = message.message_id
                self.services.store.set_progress_message(self.job.id, self.message_id)
            else:
                await self.bot.edit_message_text(text, self.job.chat_id, self.message_id)
        except BadRequest as error:
            # Already saying it: an edit whose answer was lost, or the message of a restarted bot.
            if "not modified" not in str(error).lower():
                self._refused("show", error)
                return
        except TelegramError as error:
            self._refused("show", error)
            return
        self.shown = text

    async def close(self) -> None:
        """Delete the status message, if one was sent; if Telegram refuses, say the job ended in it."""
        if self.message_id is None:
            return
        try:
            await self.bot.delete_message(self.job.chat_id, self.message_id)
        except TelegramError as error:
            self._refused("delete", error)
            try:
                ended = texts.PROGRESS_ENDED.format(caption=self.job.caption)
                await self.bot.edit_message_text(ended, self.job.chat_id, self.message_id)
            except TelegramError as again:
                self._refused("end", again)
        self.message_id = None
        self.services.store.set_progress_message(self.job.id, None)

    def _refused(self, action: str, error: TelegramError) -> None:
        self.services.counters[REFUSED] += 1
        log.warning("job %d: Telegram refused to %s the progress message: %s", self.job.id, action, error)
