"""What every handler needs: settings, state, the two worker pools and facts learnt at start-up."""

from __future__ import annotations

import collections
import dataclasses
import statistics
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
    # Things worth watching that never stop a job, e.g. refused progress edits (progress.REFUSED).
    counters: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    @property
    def jobs_dir(self) -> Path:
        return self.config.state_dir / "jobs"

    @property
    def stickers_dir(self) -> Path:
        return self.config.state_dir / "stickers"

    def eta_seconds(self, place: int) -> float:
        """Rough wait for the job at `place`: a typical job's duration times the place.

        Typical is the median of the jobs the worker timed last (kept in the Store, so it survives a
        restart): one slow job, the first after start-up say, does not move it as a mean would.
        Before any job was timed it is `bot.first_guess_s`.
        """
        recent = self.store.recent_seconds()
        typical = statistics.median(recent) if recent else self.config.params.first_guess_s
        return typical * place
