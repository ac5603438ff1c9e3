"""From a picked candidate to a sticker in the user's set: cut, check, upload, create or add, link.

Each step that changes something on Telegram's side is recorded in the Store as soon as it
succeeds, and the whole sequence can be re-run after a restart: finished steps are skipped, and
a create or add whose answer was lost in the crash is recognised by the set's size
(getStickerSet) instead of being sent again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from pathlib import Path

from telegram import Bot, InputFile, InputSticker
from telegram.constants import StickerFormat
from telegram.error import BadRequest, TelegramError

from emojich.bot import texts
from emojich.bot.rules import RuleError, check_set_capacity, set_name_candidates, set_name_problems
from emojich.bot.services import Services
from emojich.bot.store import Job, Pack, Sticker
from emojich.bot.worker import CutRequest, CutResult
from emojich.lineage.trace import BOT_MAKER
from emojich.segment.stickers import sticker_problems, thumbnail_problems

log = logging.getLogger("emojich.bot.maker")

MAX_NAME_TRIES = 20  # numbered suffixes tried when Telegram says a name is occupied


def _is(error: TelegramError, code: str) -> bool:
    # PTB re-cases Telegram's texts ("Pack_short_name_occupied"); the code itself is what is stable.
    return code.lower() in str(error).lower()


class StickerMaker:
    def __init__(self, services: Services):
        self.services = services
        # One sticker at a time per set: its position in the set is decided when it is cut.
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def make(self, job_id: int, bot: Bot, resuming: bool = False) -> None:
        pack_id = self.services.store.job(job_id).pack_id
        async with self._locks[pack_id]:
            await self._make(job_id, bot, resuming)

    async def _make(self, job_id: int, bot: Bot, resuming: bool) -> None:
        store = self.services.store
        job = store.job(job_id)
        pack = store.pack(job.pack_id)
        try:
            sticker = store.sticker_for(job.id)
            if sticker is None:
                check_set_capacity(pack.stickers)
                sticker = await self._cut(job, pack)
            if not sticker.added:
                await self._upload_and_add(job, pack, sticker, bot, resuming)
                sticker = store.sticker_for(job.id)
                assert sticker is not None
            if not sticker.link_sent:
                pack = store.pack(pack.id)
                await bot.send_message(
                    job.chat_id, texts.STICKER_DONE.format(title=pack.title, name=pack.name)
                )
                store.mark_link_sent(job.id)
        except RuleError as error:
            store.fail(job.id, str(error))
            message = (
                texts.SET_FULL if error.code == "set-full" else texts.STICKER_FAILED.format(reason=error)
            )
            await bot.send_message(job.chat_id, message)
        except TelegramError as error:
            log.warning("job %d: Telegram refused the sticker: %s", job.id, error)
            store.fail(job.id, str(error))
            await bot.send_message(job.chat_id, texts.STICKER_FAILED.format(reason=error))

    async def _cut(self, job: Job, pack: Pack) -> Sticker:
        candidate = job.candidates[job.choice - 1]  # type: ignore[operator]
        folder = self.services.stickers_dir / f"pack-{pack.id:06d}"
        dest = folder / f"{job.id:06d}.{self.services.config.params.sticker_format}"
        extra = {"made_by": BOT_MAKER, "job": job.id, "emoji": job.emoji, "choice": job.choice}
        result: CutResult = await self.services.stickers.run(
            CutRequest(candidate, str(dest), str(self.services.config.root), extra)
        )
        problems = sticker_problems(Path(result.sticker).read_bytes())
        problems += thumbnail_problems(Path(result.thumbnail).read_bytes())
        if problems:  # write_sticker re-encodes until the rules hold, so this would be a bug
            raise RuleError("sticker-file", "; ".join(problems))
        log.info("job %d: sticker cut by %s", job.id, result.method)
        return self.services.store.record_sticker(
            job.id, pack.id, result.sticker, job.emoji, pack.stickers + 1
        )

    async def _upload_and_add(self, job: Job, pack: Pack, sticker: Sticker, bot: Bot, resuming: bool) -> None:
        store = self.services.store
        if resuming and pack.name and await self._already_in_set(pack, sticker, bot):
            log.info("job %d: the set already holds the sticker (added before a restart)", job.id)
        else:
            if not sticker.file_id:
                path = Path(sticker.path)
                uploaded = await bot.upload_sticker_file(
                    job.user_id, InputFile(path.read_bytes(), filename=path.name), StickerFormat.STATIC
                )
                store.set_file_id(job.id, uploaded.file_id)
                sticker = store.sticker_for(job.id)  # type: ignore[assignment]
            item = InputSticker(sticker.file_id, sticker.emoji, StickerFormat.STATIC)
            if pack.created:
                check_set_capacity(pack.stickers)
                await bot.add_sticker_to_set(job.user_id, pack.name, item)  # type: ignore[arg-type]
            else:
                await self._create(job, pack, item, bot)
        pack = store.pack(pack.id)
        if sticker.position == 1:
            # Idempotent, so repeating it after a restart is harmless.
            thumbnail = Path(sticker.path).with_name(
                f"{Path(sticker.path).stem}.thumb{Path(sticker.path).suffix}"
            )
            await bot.set_sticker_set_thumbnail(
                pack.name,  # type: ignore[arg-type]
                job.user_id,
                StickerFormat.STATIC,
                InputFile(thumbnail.read_bytes(), filename=thumbnail.name),
            )
        store.mark_added(job.id)

    async def _create(self, job: Job, pack: Pack, item: InputSticker, bot: Bot) -> None:
        store = self.services.store
        username = self.services.bot_username
        names = set_name_candidates(pack.title, username, lambda name: store.name_taken(name, pack.id))
        for _, name in zip(range(MAX_NAME_TRIES), names, strict=False):
            problems = set_name_problems(name, username)
            if problems:
                raise RuleError("set-name", "; ".join(problems))
            store.reserve_name(pack.id, name)  # first, so a restart knows which set to look for
            try:
                await bot.create_new_sticker_set(job.user_id, name, pack.title, [item])
            except BadRequest as error:
                if _is(error, "PACK_SHORT_NAME_OCCUPIED"):
                    log.info("set name %s is occupied; trying the next", name)
                    continue
                raise
            store.mark_created(pack.id)
            return
        raise RuleError("set-name", f"no free set name after {MAX_NAME_TRIES} tries")

    async def _already_in_set(self, pack: Pack, sticker: Sticker, bot: Bot) -> bool:
        try:
            remote = await bot.get_sticker_set(pack.name)  # type: ignore[arg-type]
        except BadRequest:
            return False  # no such set: creation never happened
        if remote.title != pack.title or len(remote.stickers) < sticker.position:
            return False
        self.services.store.mark_created(pack.id)
        return True

    async def resume(self, bot: Bot) -> None:
        """After a restart: finish stickers cut off mid-way, send links that were not sent."""
        store = self.services.store
        for job in store.jobs_in("making"):
            await self.make(job.id, bot, resuming=True)
        for sticker in store.unsent_links():
            await self.make(sticker.job_id, bot, resuming=True)
