"""Running the bot in tests: a fast fake generator, configs, and the bot in a thread or a process.

The fake generator draws a coloured disc per candidate on white (so the contour cut has
something to cut) and writes the same files and sidecar keys as the real one, without torch; an
optional delay (per caption, if wanted) makes a slow job, which reports its progress as the real
one does: sampling steps, then a last stretch without reports (decoding). Background removal is
the real StickerCutter (contour method).

`python -m tests.bot_harness --api-url URL --token T --root DIR` serves a bot with the fake
generator as its own process, for the test that kills the bot mid-job.
"""

from __future__ import annotations

import argparse
import asyncio
import colorsys
import dataclasses
import io
import json
import signal
import threading
import time
from pathlib import Path

from PIL import Image, ImageDraw

from emojich.bot.app import BotRun, run_bot, setup_logging
from emojich.bot.config import BotConfig, BotParams, ModelPaths
from emojich.bot.services import Services
from emojich.bot.worker import GenerationRequest, GenerationResult, ModelInfo, StickerCutter
from emojich.foundation.progress import OnProgress
from emojich.foundation.storage import sha256_bytes, write_bytes_atomic, write_json_atomic

TOKEN = "123456789:TEST-token-never-logged_abcdefghij"
FAKE_CHECKPOINT_SHA = "f" * 64


# Captions the fake draws the same whatever the seed, as the demo model draws the captions it
# learnt by heart: regenerating them cannot give anything new.
SAME_EVERY_TIME = ("снеговик",)
# How the fake "reads" captions, as a model on a text encoder says it (`Reading.line`).
READINGS = {"синий кролик": "Понял как: кролик · синий"}


@dataclasses.dataclass
class FakeGenerator:
    candidates: int = 4
    delay: float = 0.0  # seconds per job, slept in the worker process
    text_tokens: int = 40  # caption length limit, counted in characters (no tokenizer)
    delays: dict[str, float] = dataclasses.field(default_factory=dict)  # per caption, instead of `delay`
    steps: int = 20  # progress reports per job, spread over its first `sampling_share` of the delay
    sampling_share: float = 0.6

    def load(self) -> ModelInfo:
        return ModelInfo(self.text_tokens, None, "fake generator")

    def __call__(
        self, request: GenerationRequest, /, on_progress: OnProgress | None = None
    ) -> GenerationResult:
        started = time.perf_counter()
        out = Path(request.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "started").write_text("", encoding="utf-8")  # lets a test kill the bot mid-job
        self._draw(self.delays.get(request.caption, self.delay), on_progress)
        images = []
        fixed = request.caption in SAME_EVERY_TIME
        for rank in range(self.candidates):
            hue = ((0 if fixed else request.seed * 7) + rank) % 12 / 12
            colour = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.8, 0.8))
            image = Image.new("RGB", (512, 512), "white")
            ImageDraw.Draw(image).ellipse((96, 96, 416, 416), fill=colour)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            path = out / f"p000-r{rank:04d}-i{rank:04d}.png"
            write_bytes_atomic(path, buffer.getvalue())
            sidecar = {
                "prompt": request.caption,
                "seed": request.seed,
                "image_index": rank,
                "rank": rank,
                "top_k": 2048,
                "top_p": 0.995,
                "temperature": 1.0,
                "score": float(rank),
                "png_sha256": sha256_bytes(buffer.getvalue()),
                "checkpoint_sha256": FAKE_CHECKPOINT_SHA,
            }
            write_json_atomic(path.with_suffix(".json"), sidecar)
            images.append(str(path))
        # Like ModelGenerator's: 0 when every attempt's image came up again, here by construction.
        chance = 0.0 if fixed else 1.0
        return GenerationResult(
            images, [], time.perf_counter() - started, chance, READINGS.get(request.caption)
        )

    def _draw(self, delay: float, on_progress: OnProgress | None) -> None:
        """Sleep `delay` like a model: steps at an even pace, reported, then decoding unreported."""
        step = delay * self.sampling_share / self.steps
        for done in range(1, self.steps + 1):
            time.sleep(step)
            if on_progress is not None:
                on_progress(done, self.steps)
        time.sleep(delay * (1 - self.sampling_share))


def make_config(root: Path, **params: object) -> BotConfig:
    """Settings for a test bot under `root`: short polls, no U-Net (the contour method cuts)."""
    values = {"poll_timeout": 1, "segment_weights": None, "attempts": 4, "threads": 1, **params}
    paths = ModelPaths(
        checkpoint="unused",
        bpe="unused",
        vqgan="unused",
        upscaler=None,
        device="cpu",
        batch_size=4,
        segment_weights=None,
        segment_preset="demo",
        segment_threshold=0.99,
    )
    return BotConfig(BotParams(**values), paths, root.resolve())  # type: ignore[arg-type]


def fake_run(
    config: BotConfig,
    api_url: str,
    delay: float = 0.0,
    token: str = TOKEN,
    delays: dict[str, float] | None = None,
) -> BotRun:
    return BotRun(
        config,
        token,
        api_url,
        generator=FakeGenerator(config.params.candidates, delay, delays=delays or {}),
        cutter=StickerCutter(config.models, config.params.sticker_format, threads=1),
    )


class BotThread:
    """`run_bot` on its own event loop in a thread; `start()` returns once it polls."""

    def __init__(self, run: BotRun):
        self.run = run
        self.services: Services | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="bot", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await run_bot(self.run, self._stop, ready=self._on_ready)

        try:
            asyncio.run(main())
        except BaseException as error:
            self._error = error
            self._ready.set()

    def _on_ready(self, services: Services) -> None:
        self.services = services
        self._ready.set()

    def start(self, timeout: float = 120) -> BotThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise AssertionError("the bot did not start")
        if self._error is not None:
            raise AssertionError("the bot failed to start") from self._error
        return self

    def stop(self, timeout: float = 60) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._error is not None:
            raise AssertionError("the bot failed") from self._error


def main() -> None:
    parser = argparse.ArgumentParser(description="A bot with the fake generator, as its own process.")
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--token", default=TOKEN)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--params", default="{}", help="JSON object of BotParams overrides")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    setup_logging(args.token, args.log_level)
    config = make_config(args.root, **json.loads(args.params))
    run = fake_run(config, args.api_url, args.delay, args.token)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_bot(run, stop, ready=lambda _: print("ready", flush=True))

    asyncio.run(serve())


if __name__ == "__main__":
    main()
