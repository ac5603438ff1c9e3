"""Starting and stopping the bot: worker pools, the PTB Application, long polling, and the CLI.

`run_bot` is the whole life of a bot: it is what `emojich bot` runs, and what the tests run in a
thread against a fake Bot API. Start-up order matters: the workers load their models first, so
the caption length is known before the first update is read.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telegram import BotCommand, Update
from telegram.error import InvalidToken, NetworkError
from telegram.ext import AIORateLimiter, Application

from emojich.bot.config import TELEGRAM_API_URL, BotConfig, file_url_for, load_config, read_token
from emojich.bot.dispatch import Dispatcher
from emojich.bot.handlers import COMMANDS, Handlers, add_handlers
from emojich.bot.maker import StickerMaker
from emojich.bot.persistence import StoreConversations
from emojich.bot.services import Services
from emojich.bot.store import Store
from emojich.bot.worker import ModelGenerator, ModelInfo, StickerCutter, Task, WorkerPool
from emojich.foundation.input_checks import check_output_folder

log = logging.getLogger("emojich.bot")

PUMP_INTERVAL_S = 2.0  # how often the queue is looked at besides right after a caption


@dataclass
class BotRun:
    """Knobs for one run; tests swap the tasks for fakes and shorten the polls."""

    config: BotConfig
    token: str
    api_url: str = TELEGRAM_API_URL
    generator: Task | None = None  # default: ModelGenerator on the configured checkpoint
    cutter: Task | None = None  # default: StickerCutter (U-Net + contour fallback)
    persistence_interval: float = 1.0


class RedactingFormatter(logging.Formatter):
    """Never let the token reach a log: HTTP libraries log URLs, and Bot API URLs contain it."""

    def __init__(self, fmt: str, secrets: list[str]):
        super().__init__(fmt)
        self.secrets = [secret for secret in secrets if secret]

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self.secrets:
            text = text.replace(secret, "<token>")
        return text


def setup_logging(token: str, level: str = "INFO", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", [token]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO; APScheduler logs every queue look-up. At DEBUG they
    # speak too, and the formatter keeps the token out of what they say.
    for noisy in ("httpx", "httpcore", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)


def _token_counter(info: ModelInfo) -> Callable[[str], int]:
    if info.bpe is None:
        return len
    from emojich.text.bpe import TextTokenizer

    tokenizer = TextTokenizer.load(info.bpe)
    return lambda text: len(tokenizer.tokenize(text))


def build_application(run: BotRun, store: Store) -> Application:
    return (
        Application.builder()
        .token(run.token)
        .base_url(run.api_url)
        .base_file_url(file_url_for(run.api_url))
        .rate_limiter(AIORateLimiter(max_retries=3))
        .persistence(StoreConversations(store, run.persistence_interval))
        .build()
    )


async def run_bot(run: BotRun, stop: asyncio.Event, ready: Callable[[Services], None] | None = None) -> None:
    """Serve until `stop` is set; `ready` is called once polling has started."""
    config = run.config
    store = Store(config.state_dir / "bot.sqlite3")
    requeued = store.resume_interrupted()
    if requeued:
        log.info("restart: %d interrupted job(s) queued again", requeued)
    generation = WorkerPool(run.generator or ModelGenerator(config.models, config.params), "generation")
    stickers = WorkerPool(
        run.cutter or StickerCutter(config.models, config.params.sticker_format, threads=1), "stickers"
    )
    try:
        model, cutter = await asyncio.gather(generation.start(), stickers.start())
        log.info("model: %s; backgrounds: %s", model.description, cutter)
        services = Services(config, store, generation, stickers, model, _token_counter(model))
        application = build_application(run, store)
        dispatcher, maker = Dispatcher(services), StickerMaker(services)
        add_handlers(application, Handlers(services, dispatcher, maker))
        async with application:
            services.bot_username = application.bot.username
            await application.bot.set_my_commands([BotCommand(name, text) for name, text in COMMANDS.items()])
            await application.start()
            assert application.updater is not None and application.job_queue is not None
            await application.updater.start_polling(
                timeout=config.params.poll_timeout, allowed_updates=[Update.MESSAGE, Update.CALLBACK_QUERY]
            )
            application.job_queue.run_repeating(dispatcher.pump, interval=PUMP_INTERVAL_S, first=0)
            application.create_task(maker.resume(application.bot), name="emojich-resume-stickers")
            log.info("@%s is polling %s", services.bot_username, run.api_url)
            if ready is not None:
                ready(services)
            await stop.wait()
            await application.updater.stop()
            await application.stop()
    finally:
        generation.shutdown()
        stickers.shutdown()
        store.close()


# ----- the command line -----


def check_models(config: BotConfig) -> None:
    """Missing weights are a setup mistake: say which file and how to make it, before any process starts."""
    for path in (config.models.checkpoint, config.models.bpe, config.models.vqgan):
        if not Path(path).is_file():
            raise ValueError(f"{path} does not exist: run the pipeline first (make repro)")
    # The state, candidates and stickers go there: found now, not after the workers load the models.
    check_output_folder(config.state_dir, "bot.state_dir")


def bot_command(args: Any) -> int:
    """`emojich bot`: validate everything that can be wrong before serving, then poll until stopped."""
    try:
        if not args.api_url.startswith(("http://", "https://")):
            raise ValueError(f"--api-url must be an http:// or https:// URL, got {args.api_url!r}")
        token = read_token(args.token_file)
        config = load_config(args.params)
        check_models(config)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"emojich bot: error: {error}", file=sys.stderr)
        return 2
    setup_logging(token, args.log_level)
    run = BotRun(config, token, args.api_url)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_bot(run, stop)

    try:
        asyncio.run(main())
    except InvalidToken:
        print(f"emojich bot: error: {args.api_url} refused the token", file=sys.stderr)
        return 2
    except NetworkError as error:  # the server cannot be reached at start-up
        print(f"emojich bot: error: {args.api_url}: {error}", file=sys.stderr)
        return 1
    return 0
