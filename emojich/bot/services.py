"""What every handler needs: settings, state, the two worker pools and facts learnt at start-up."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from emojich.bot.config import BotConfig
from emojich.bot.store import Store
from emojich.bot.worker import ModelInfo, WorkerPool


@dataclasses.dataclass
class Services:
    config: BotConfig
    store: Store
    generation: WorkerPool  # draws candidates
    stickers: WorkerPool  # cuts backgrounds
    model: ModelInfo
    count_tokens: Callable[[str], int]
    bot_username: str = ""  # from getMe, once the bot has started

    @property
    def jobs_dir(self) -> Path:
        return self.config.state_dir / "jobs"

    @property
    def stickers_dir(self) -> Path:
        return self.config.state_dir / "stickers"

    def eta_seconds(self, place: int) -> float | None:
        """Rough wait for the job at `place`: the mean of recent generation times, times the place."""
        mean = self.store.mean_seconds()
        return None if mean is None else mean * place
