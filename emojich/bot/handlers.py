"""The conversation: /newpack, a caption, a pick, an emoji; plus the commands that work at any time.

Handlers only check input, touch the Store and reply: drawing and cutting happen in the worker
processes (dispatch.py, maker.py), so every handler returns within milliseconds and the bot
keeps answering while a job runs.

Handler order matters (group 0, first match wins): the always-available commands, then the
conversation, then the catch-alls for stale buttons, unknown commands and files.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    ConversationHandler,
    MessageHandler,
    filters,
)
from telegram.warnings import PTBUserWarning

from emojich.bot import texts
from emojich.bot.dispatch import Dispatcher, candidates_keyboard
from emojich.bot.maker import StickerMaker
from emojich.bot.rules import RuleError, check_caption, check_title, parse_emoji_list, propose_emoji
from emojich.bot.services import Services
from emojich.bot.store import Job, LimitReached

log = logging.getLogger("emojich.bot.handlers")

TITLE, CAPTION, EMOJI = range(3)
END = ConversationHandler.END
CONVERSATION = "pack-flow"

COMMANDS = {
    "start": "начать",
    "help": "справка",
    "newpack": "новый набор стикеров",
    "status": "место в очереди",
    "mypacks": "мои наборы",
    "cancel": "отменить",
}

_CAPTION_ERRORS = {
    "caption-empty": texts.CAPTION_EMPTY,
    "caption-only-emoji": texts.CAPTION_ONLY_EMOJI,
}

Context = ContextTypes.DEFAULT_TYPE


class Handlers:
    def __init__(self, services: Services, dispatcher: Dispatcher, maker: StickerMaker):
        self.services = services
        self.store = services.store
        self.dispatcher = dispatcher
        self.maker = maker

    # ----- any time -----

    async def start(self, update: Update, context: Context) -> None:
        self._touch(update)
        await update.effective_message.reply_text(texts.START)

    async def help(self, update: Update, context: Context) -> None:
        await update.effective_message.reply_text(texts.HELP)

    async def status(self, update: Update, context: Context) -> None:
        user_id = update.effective_user.id
        job = self.store.active_job(user_id) or self.store.latest_job(user_id, ("delivered",))
        if job is None:
            line = texts.STATUS_NONE.format(waiting=self.store.waiting_count())
        elif job.status == "running":
            line = texts.STATUS_RUNNING.format(caption=job.caption)
        elif job.status == "queued":
            place = self.store.place(job.id)
            eta = texts.eta(self.services.eta_seconds(place))
            line = texts.STATUS_QUEUED.format(caption=job.caption, place=place, eta=eta)
        else:
            line = texts.STATUS_READY.format(caption=job.caption)
        quota = texts.STATUS_QUOTA.format(
            used=self.store.jobs_today(user_id), quota=self.services.config.params.daily_quota
        )
        await update.effective_message.reply_text(f"{line}\n{quota}")

    async def mypacks(self, update: Update, context: Context) -> None:
        packs = self.store.packs_of(update.effective_user.id)
        lines = [
            texts.MYPACK_LINE.format(title=pack.title, count=pack.stickers, name=pack.name)
            if pack.created
            else texts.MYPACK_EMPTY_LINE.format(title=pack.title)
            for pack in packs
        ]
        await update.effective_message.reply_text(
            "\n".join([texts.MYPACKS_HEAD, *lines]) if lines else texts.MYPACKS_NONE
        )

    async def cancel(self, update: Update, context: Context) -> int:
        user_id = update.effective_user.id
        self.store.set_pending_caption(user_id, None)
        job = self.store.cancel(user_id)
        had_pack = self.store.open_pack(user_id) is not None
        self.store.close_pack(user_id)
        if job is not None and job.keyboard_message_id:
            await self._drop_keyboard(update.effective_chat.id, job.keyboard_message_id, context)
        await update.effective_message.reply_text(
            texts.CANCELLED if job or had_pack else texts.NOTHING_TO_CANCEL
        )
        return END

    # ----- the conversation -----

    async def newpack(self, update: Update, context: Context) -> int:
        self._touch(update)
        if not context.args:
            await update.effective_message.reply_text(texts.ASK_TITLE)
            return TITLE
        return await self._start_pack(update, " ".join(context.args))

    async def title(self, update: Update, context: Context) -> int:
        return await self._start_pack(update, update.effective_message.text)

    async def _start_pack(self, update: Update, text: str) -> int:
        try:
            title = check_title(text)
        except RuleError as error:
            reply = texts.TITLE_LONG if error.code == "title-long" else texts.TITLE_EMPTY
            await update.effective_message.reply_text(reply)
            return TITLE
        user, chat = update.effective_user.id, update.effective_chat.id
        self.store.cancel(user)  # a new set replaces whatever the user was doing
        self.store.new_pack(user, chat, title)
        await update.effective_message.reply_text(texts.PACK_STARTED.format(title=title))
        return CAPTION

    async def resume(self, update: Update, context: Context) -> int:
        """Text outside any state: an emoji for a picked candidate, a caption for an open set, or a hint."""
        user = update.effective_user.id
        if self.store.latest_job(user, ("picked",)) is not None:
            return await self.emoji_text(update, context)
        if self.store.open_pack(user) is not None:
            return await self.caption(update, context)
        await update.effective_message.reply_text(texts.NO_PACK)
        return END

    async def caption(self, update: Update, context: Context) -> int:
        user = update.effective_user.id
        message = update.effective_message
        pack = self.store.open_pack(user)
        if pack is None:
            await message.reply_text(texts.NO_PACK)
            return END
        try:
            check = check_caption(message.text, self.services.count_tokens, self.services.model.text_tokens)
        except RuleError as error:
            if error.code == "caption-long":
                reply = texts.CAPTION_LONG.format(
                    tokens=self.services.count_tokens(message.text),
                    max_tokens=self.services.model.text_tokens,
                )
            else:
                reply = _CAPTION_ERRORS[error.code]
            await message.reply_text(reply)
            return CAPTION
        waiting = self.store.latest_job(user, ("delivered",))
        quota = self.services.config.params.daily_quota
        if waiting is not None and self.store.jobs_today(user) >= quota:
            # The new caption could not be drawn today anyway: say that, and keep the candidates.
            await message.reply_text(texts.QUOTA.format(quota=quota))
            return CAPTION
        if waiting is not None:
            # A new caption would make the waiting candidates unpickable: ask first, and keep
            # the caption until the answer (its buttons carry only the job's id).
            self.store.set_pending_caption(user, check.text)
            keyboard = InlineKeyboardMarkup(
                [
                    [
                        InlineKeyboardButton(texts.KEEP_CANDIDATES, callback_data=f"keep:{waiting.id}"),
                        InlineKeyboardButton(texts.DRAW_NEW, callback_data=f"draw:{waiting.id}"),
                    ]
                ]
            )
            await message.reply_text(
                texts.DROP_ASK.format(old=waiting.caption, new=check.text), reply_markup=keyboard
            )
            return CAPTION
        await self._enqueue(update, context, pack.id, check.text, check.latin_only)
        return CAPTION

    async def drop_button(self, update: Update, context: Context) -> int | None:
        """The answer to "draw the new caption instead of the waiting candidates?"."""
        query = update.callback_query
        action, job_id, _ = _button_data(query.data)
        user = update.effective_user.id
        job = self._live_job(update, job_id, "delivered")
        caption = self.store.pending_caption(user)
        pack = self.store.open_pack(user)
        if job is None or caption is None or pack is None:
            return await self._stale(update, context)
        self.store.set_pending_caption(user, None)
        await query.answer()
        await query.edit_message_reply_markup(None)
        if action == "keep":
            await query.message.reply_text(texts.KEPT.format(new=caption, old=job.caption))
            return CAPTION
        check = check_caption(caption, self.services.count_tokens, self.services.model.text_tokens)
        # Queuing retires the waiting candidates in the same transaction; refused (a full queue),
        # it leaves them pickable.
        await self._enqueue(update, context, pack.id, check.text, check.latin_only)
        if self.store.job(job.id).status == "expired" and job.keyboard_message_id:
            await self._drop_keyboard(update.effective_chat.id, job.keyboard_message_id, context)
        return CAPTION

    async def _enqueue(
        self, update: Update, context: Context, pack_id: int, caption: str, latin_only: bool
    ) -> None:
        params = self.services.config.params
        user, chat = update.effective_user.id, update.effective_chat.id
        message = update.effective_message
        try:
            job = self.store.enqueue(
                user, chat, pack_id, caption, latin_only, params.seed, params.daily_quota, params.max_queue
            )
        except LimitReached as limit:
            if limit.kind == "busy":
                active = self.store.active_job(user)
                reply = texts.BUSY.format(caption=active.caption if active else caption)
            elif limit.kind == "quota":
                reply = texts.QUOTA.format(quota=limit.detail)
            else:
                reply = texts.QUEUE_FULL.format(waiting=limit.detail)
            await message.reply_text(reply)
            return
        place = self.store.place(job.id)
        eta = texts.eta(self.services.eta_seconds(place))
        if place == 1:
            self.store.mark_start_notice(job.id)  # "drawing now" is said here, not again at the start
            reply = texts.QUEUED_NOW.format(caption=caption, eta=eta)
        else:
            reply = texts.QUEUED.format(caption=caption, place=place, eta=eta)
        if latin_only:
            reply += "\n" + texts.LATIN_NOTE
        await message.reply_text(reply)
        context.job_queue.run_once(self.dispatcher.pump, 0)

    async def candidate_button(self, update: Update, context: Context) -> int | None:
        query = update.callback_query
        action, job_id, number = _button_data(query.data)
        job = self._live_job(update, job_id, "delivered")
        if job is None or (action == "pick" and not 1 <= number <= len(job.candidates)):
            return await self._stale(update, context)
        if action == "pick":
            if not self.store.pick(job.id, number):
                return await self._stale(update, context)
            await query.answer()
            await query.edit_message_text(texts.PICKED.format(number=number))
            proposals = propose_emoji(job.caption)
            keyboard = InlineKeyboardMarkup(
                [[InlineKeyboardButton(char, callback_data=f"emoji:{job.id}:{char}") for char in proposals]]
            )
            await query.message.reply_text(texts.ASK_EMOJI, reply_markup=keyboard)
            return EMOJI
        if action == "regen" and job.new_image_chance == 0:
            # Every attempt drew an image another attempt drew too: new seeds would give these
            # same images again, so nothing is drawn and nothing counts against the quota.
            await query.answer()
            await query.edit_message_reply_markup(
                candidates_keyboard(job.id, len(job.candidates), regenerate=False)
            )
            await query.message.reply_text(texts.SAME_AGAIN.format(caption=job.caption))
            return CAPTION
        if not self.store.set_status(job.id, "skipped", only_from=("delivered",)):
            return await self._stale(update, context)
        await query.answer()
        await query.edit_message_reply_markup(None)
        if action == "regen":
            await self._enqueue(update, context, job.pack_id, job.caption, job.latin_only)
        else:
            await query.message.reply_text(texts.SKIPPED)
        return CAPTION

    async def emoji_text(self, update: Update, context: Context) -> int:
        job = self.store.latest_job(update.effective_user.id, ("picked",))
        if job is None:
            return await self.caption(update, context)
        try:
            emoji = parse_emoji_list(update.effective_message.text)
        except RuleError as error:
            await update.effective_message.reply_text(
                texts.EMOJI_COUNT if error.code == "emoji-count" else texts.EMOJI_TEXT
            )
            return EMOJI
        return await self._make(update, context, job, emoji)

    async def emoji_button(self, update: Update, context: Context) -> int | None:
        _, job_id, char = [*update.callback_query.data.split(":", 2), "", ""][:3]
        job = self._live_job(update, job_id, "picked")
        try:
            parse_emoji_list(char)
        except RuleError:
            job = None
        if job is None:
            return await self._stale(update, context)
        await update.callback_query.answer()
        await update.callback_query.edit_message_reply_markup(None)
        return await self._make(update, context, job, [char])

    async def _make(self, update: Update, context: Context, job: Job, emoji: list[str]) -> int | None:
        if not self.store.start_making(job.id, emoji):
            return await self._stale(update, context)
        await update.effective_message.reply_text(texts.MAKING)
        context.application.create_task(
            self.maker.make(job.id, context.bot), name=f"emojich-sticker-{job.id}"
        )
        return CAPTION

    # ----- catch-alls -----

    async def stale_button(self, update: Update, context: Context) -> None:
        await self._stale(update, context)

    async def unknown_command(self, update: Update, context: Context) -> None:
        await update.effective_message.reply_text(texts.UNKNOWN_COMMAND)

    async def not_text(self, update: Update, context: Context) -> None:
        await update.effective_message.reply_text(texts.NOT_TEXT)

    async def on_error(self, update: object, context: Context) -> None:
        log.error("handler failed", exc_info=context.error)
        if isinstance(update, Update) and update.effective_message is not None:
            with contextlib.suppress(TelegramError):  # never silence, but never an error loop either
                await update.effective_message.reply_text(texts.INTERNAL_ERROR)

    # ----- helpers -----

    def _touch(self, update: Update) -> None:
        self.store.touch_user(update.effective_user.id, update.effective_chat.id)

    def _live_job(self, update: Update, job_id: str, status: str) -> Job | None:
        """The job a button names, if it is the user's and still waiting for this button."""
        try:
            job = self.store.job(int(job_id))
        except (KeyError, ValueError):
            return None
        if job.user_id != update.effective_user.id or job.status != status:
            return None
        return job

    async def _stale(self, update: Update, context: Context) -> int | None:
        query = update.callback_query
        if query is not None:
            await query.answer(texts.STALE_BUTTON, show_alert=True)
            with contextlib.suppress(BadRequest):  # already without a keyboard
                await query.edit_message_reply_markup(None)
        return None  # stay in the current state

    async def _drop_keyboard(self, chat_id: int, message_id: int, context: Context) -> None:
        with contextlib.suppress(BadRequest):  # already without a keyboard
            await context.bot.edit_message_reply_markup(chat_id, message_id, reply_markup=None)


def _button_data(data: str) -> tuple[str, str, int]:
    """`pick:12:3` -> ("pick", "12", 3); missing or malformed parts come back empty or 0."""
    action, job_id, number = [*data.split(":"), "", ""][:3]
    return action, job_id, int(number) if number.isdigit() else 0


def add_handlers(application: Application, handlers: Handlers) -> None:
    text = filters.TEXT & ~filters.COMMAND
    for name, callback in (
        ("start", handlers.start),
        ("help", handlers.help),
        ("status", handlers.status),
        ("mypacks", handlers.mypacks),
    ):
        application.add_handler(CommandHandler(name, callback))
    buttons = [
        CallbackQueryHandler(handlers.candidate_button, pattern=r"^(pick|regen|skip):"),
        CallbackQueryHandler(handlers.emoji_button, pattern=r"^emoji:"),
        CallbackQueryHandler(handlers.drop_button, pattern=r"^(keep|draw):"),
    ]
    with warnings.catch_warnings():
        # PTB warns that with per_message=False a CallbackQueryHandler is tracked per chat, not per
        # message: intended here, as buttons carry their job id and are checked against the Store.
        warnings.filterwarnings("ignore", category=PTBUserWarning, message=".*per_message.*")
        conversation = ConversationHandler(
            # Buttons and text also *enter* the conversation: a state lost in a crash (states are
            # saved every second) is then rebuilt from the Store, which is saved at once.
            entry_points=[
                CommandHandler("newpack", handlers.newpack),
                *buttons,
                MessageHandler(text, handlers.resume),
            ],
            states={
                TITLE: [MessageHandler(text, handlers.title)],
                CAPTION: [MessageHandler(text, handlers.caption)],
                EMOJI: [MessageHandler(text, handlers.emoji_text)],
            },
            fallbacks=[
                CommandHandler("cancel", handlers.cancel),
                CommandHandler("newpack", handlers.newpack),
                *buttons,
            ],
            name=CONVERSATION,
            persistent=True,
        )
    application.add_handler(conversation)
    application.add_handler(CommandHandler("cancel", handlers.cancel))
    application.add_handler(CallbackQueryHandler(handlers.stale_button))
    application.add_handler(
        MessageHandler(filters.UpdateType.MESSAGE & filters.COMMAND, handlers.unknown_command)
    )
    application.add_handler(MessageHandler(filters.UpdateType.MESSAGE & ~filters.TEXT, handlers.not_text))
    application.add_error_handler(handlers.on_error)
