"""The bot's settings: the `bot` section of params.yaml, plus the model paths `emojich generate` uses.

The checkpoint, tokenizers, upscaler and device come from the `generate` section, and the U-Net
preset and confidence threshold from `segment`, so the bot draws with whatever the pipeline
installed (demo or paper weights) and cuts backgrounds as the `stickers` stage does.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from emojich.foundation.params import from_dict, load_params
from emojich.segment.stickers import FORMATS

TELEGRAM_API_URL = "https://api.telegram.org/bot"
TOKEN_ENV = "EMOJICH_BOT_TOKEN"
# Telegram's tokens look like 123456789:AAE...; checking the shape catches a wrong file early
# without ever echoing the token itself.
_TOKEN = re.compile(r"\d+:[A-Za-z0-9_-]{20,}")


@dataclasses.dataclass
class BotParams:
    candidates: int = 4  # images shown per caption (a media group holds 2-10)
    attempts: int = 8  # images sampled per caption; the best `candidates` by score are shown
    top_k: int = 2048  # clamped to the image vocabulary, as in `emojich generate`
    top_p: float = 0.995
    temperature: float = 1.0
    guidance: float = 1.0  # classifier-free guidance scale, as generate.guidance; 1 = off
    seed: int = 42  # job N samples with seed + N: a regenerated caption differs, a resumed job repeats
    daily_quota: int = 20  # captions (regenerations included) per user per UTC day
    max_queue: int = 20  # captions waiting or being drawn, all users together
    sticker_format: str = "webp"  # webp | png
    state_dir: str = "data/bot"  # SQLite state, candidates and stickers with their sidecars
    segment_weights: str | None = "data/segment/unet.safetensors"  # null or missing: contour only
    threads: int = 1  # torch threads in each worker process; 0 = torch default
    poll_timeout: int = 10  # seconds a getUpdates long poll waits
    # The wait a caption is assumed to take until the worker has timed one (then the median of the
    # last jobs is used). The demo model on 2 CPU cores draws 8 attempts in about 0.5 s; a larger
    # model (the paper profile's) should say its own.
    first_guess_s: float = 1.0
    # Seconds between edits of a job's progress message («Рисую… 40 %»). Telegram allows a chat
    # about one message a second, edits included, and answers faster bots with flood waits that
    # hold every call; 3 s keeps well clear. A job shorter than this shows no progress at all.
    progress_interval_s: float = 3.0

    def __post_init__(self) -> None:
        for name in ("attempts", "daily_quota", "max_queue", "poll_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"bot.{name} must be an integer >= 1, got {value!r}")
        if not 2 <= self.candidates <= min(10, self.attempts):
            raise ValueError(f"bot.candidates must be 2-10 and at most bot.attempts, got {self.candidates}")
        for name in ("first_guess_s", "progress_interval_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, int | float) and value > 0):
                raise ValueError(f"bot.{name} must be a number > 0, got {value!r}")
        if self.sticker_format not in FORMATS:
            raise ValueError(f"bot.sticker_format must be one of {', '.join(FORMATS)}")


@dataclasses.dataclass(frozen=True)
class ModelPaths:
    """What the generation and sticker workers load, resolved against the project root."""

    checkpoint: str
    bpe: str
    vqgan: str
    upscaler: str | None
    device: str
    batch_size: int
    segment_weights: str | None
    segment_preset: str
    segment_threshold: float


@dataclasses.dataclass(frozen=True)
class BotConfig:
    params: BotParams
    models: ModelPaths
    root: Path  # the project checkout: sidecars name files relative to it, as lineage expects

    @property
    def state_dir(self) -> Path:
        return self.root / self.params.state_dir


def load_config(params_path: str | Path = "params.yaml", root: str | Path | None = None) -> BotConfig:
    params_path = Path(params_path)
    root = Path(root) if root is not None else params_path.resolve().parent
    params = load_params(params_path)
    bot = from_dict(BotParams, params.get("bot"), "bot")
    generate: dict[str, Any] = params.get("generate") or {}
    segment: dict[str, Any] = params.get("segment") or {}
    tokens = Path(generate.get("tokens", "data/tokens"))
    upscaler = generate.get("upscaler", "data/upscaled/rrdbnet.safetensors")
    models = ModelPaths(
        checkpoint=str(root / generate.get("checkpoint", "data/finetune/model.safetensors")),
        bpe=str(root / tokens / "bpe.json"),
        vqgan=str(root / tokens / "vqgan.safetensors"),
        upscaler=str(root / upscaler) if upscaler else None,
        device=generate.get("device", "auto"),
        batch_size=int(generate.get("batch_size", 16)),
        segment_weights=str(root / bot.segment_weights) if bot.segment_weights else None,
        segment_preset=segment.get("preset", "demo"),
        segment_threshold=float((segment.get("pseudolabel") or {}).get("threshold", 0.99)),
    )
    return BotConfig(bot, models, root.resolve())


def read_token(token_file: str | None, environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The bot token from `token_file`, else from $EMOJICH_BOT_TOKEN; errors never contain it."""
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise ValueError(f"token file {token_file} does not exist")
        token = path.read_text(encoding="utf-8").strip()
        where = f"token file {token_file}"
    else:
        token = environ.get(TOKEN_ENV, "").strip()
        where = f"${TOKEN_ENV}"
        if not token:
            raise ValueError(f"no bot token: give --token-file PATH or set ${TOKEN_ENV}")
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"{where} does not hold a bot token (digits, a colon, then the key from @BotFather)")
    return token


def file_url_for(api_url: str) -> str:
    """Telegram serves files under /file/bot<token>/ beside /bot<token>/; local servers do the same."""
    head, sep, tail = api_url.rstrip("/").rpartition("/")
    if sep and tail.startswith("bot"):
        return f"{head}/file/{tail}"
    return api_url.rstrip("/") + "/file/bot"
