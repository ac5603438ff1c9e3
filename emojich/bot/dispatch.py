"""The generation queue: one job at a time from SQLite to the worker, then the candidates to the user.

`pump` is a JobQueue callback: it runs every few seconds (so jobs left by a restart start on
their own) and right after a caption is queued. It only claims a job and hands it to a task,
so the event loop is never held while the worker draws. While it draws, the user sees how far
it got (progress.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, InputMediaPhoto
from telegram.ext import Application, CallbackContext

from emojich.bot import texts
from emojich.bot.progress import ProgressMessage
from emojich.bot.services import Services
from emojich.bot.store import Job
from emojich.bot.worker import GenerationRequest, GenerationResult

log = logging.getLogger("emojich.bot.dispatch")


def candidates_keyboard(job_id: int, count: int, regenerate: bool = True) -> InlineKeyboardMarkup:
    """Pick 1..count, then "more" (left out once it is known to draw the same again) and "skip"."""
    picks = [
        InlineKeyboardButton(str(number), callback_data=f"pick:{job_id}:{number}")
        for number in range(1, count + 1)
    ]
    more = [InlineKeyboardButton(texts.REGENERATE, callback_data=f"regen:{job_id}")] if regenerate else []
    return InlineKeyboardMarkup(
        [picks, [*more, InlineKeyboardButton(texts.SKIP, callback_data=f"skip:{job_id}")]]
    )


class Dispatcher:
    def __init__(self, services: Services):
        self.services = services
        self.busy = False  # the event loop is single-threaded: no lock needed around this flag

    async def pump(self, context: CallbackContext) -> None:
        if self.busy:
            return
        job = self.services.store.claim_next()
        if job is None:
            return
        self.busy = True
        context.application.create_task(self._work(job, context.application), name=f"emojich-job-{job.id}")

    async def _work(self, job: Job, application: Application) -> None:
        store = self.services.store
        progress = ProgressMessage(self.services, job, application.bot)
        try:
            if job.status == "running":
                await self._announce_start(job, application.bot)
                started = time.monotonic()
                request = GenerationRequest(
                    job.id, job.caption, job.seed, str(self.services.jobs_dir / f"{job.id:06d}")
                )
                result: GenerationResult = await progress.follow(
                    self.services.generation.run(request, on_progress=progress.report)
                )
                # What the user waits for is the whole job (sampling, decoding, upscaling, files and
                # the hop to the worker), not the sampling alone: that is what the estimates use.
                seconds = time.monotonic() - started
                log.info(
                    "job %d: %d candidates in %.2f s (sampling %.2f s)",
                    job.id,
                    len(result.images),
                    seconds,
                    result.seconds,
                )
                if not store.finish_generation(
                    job.id, result.images, result.notes, seconds, result.new_image_chance, result.read_as
                ):
                    return  # cancelled while it was drawn: the user asked not to hear about it
            await self.deliver(store.job(job.id), application.bot)
        except Exception as error:
            log.exception("job %d failed", job.id)
            store.fail(job.id, f"{type(error).__name__}: {error}")
            await application.bot.send_message(job.chat_id, texts.FAILED.format(caption=job.caption))
        finally:
            self.busy = False
            # Deleted only once the candidates or the failure notice are out, so the chat always
            # shows the one or the other.
            await progress.close()
            if application.job_queue is not None:
                application.job_queue.run_once(self.pump, 0)

    async def _announce_start(self, job: Job, bot: Bot) -> None:
        if job.start_notice_sent:
            return
        await bot.send_message(job.chat_id, texts.YOUR_TURN.format(caption=job.caption))
        self.services.store.mark_start_notice(job.id)

    async def deliver(self, job: Job, bot: Bot) -> None:
        """The media group, then the keyboard; each recorded once Telegram took it, so a restart
        between the two sends only what is missing."""
        store = self.services.store
        if job.status != "generated":
            return
        if not job.media_sent:
            media = [
                InputMediaPhoto(Path(path).read_bytes(), filename=Path(path).name) for path in job.candidates
            ]
            await bot.send_media_group(job.chat_id, media)
            store.mark_media_sent(job.id)
        if store.job(job.id).status != "generated":
            return  # cancelled between the two sends
        text = texts.CANDIDATES.format(caption=job.caption)
        if job.read_as:
            text = f"{job.read_as}\n{text}"
        message = await bot.send_message(
            job.chat_id,
            text,
            reply_markup=candidates_keyboard(job.id, len(job.candidates)),
        )
        store.mark_delivered(job.id, message.message_id)
