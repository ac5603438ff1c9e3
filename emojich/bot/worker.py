"""What runs in the worker processes: drawing candidates and cutting stickers, through the library.

The bot's event loop must never wait on a model, so each kind of work has its own one-process
pool (`WorkerPool`). A pool is started with a *task*: a picklable object whose `load()` runs once
in the worker (models stay loaded between jobs) and whose call does one job. Results are files
(written to a temporary name, then renamed) and small dataclasses, never tensors, so nothing big
crosses the process boundary. Tests start pools with fake tasks that do not import torch.

A task may also take `on_progress(done, total)` (`ReportingTask`): the pool then relays what it
reports to a callback on the bot's event loop (`WorkerPool.run(request, on_progress=...)`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.queues
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Protocol, cast

from emojich.bot.config import BotParams, ModelPaths
from emojich.foundation.progress import OnProgress


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the bot needs to know about the model before a caption is queued."""

    text_tokens: int  # caption length the model reads (BPE tokens, without bos/eos)
    bpe: str | None  # the tokenizer file to count them; None: count characters (test fakes)
    description: str  # e.g. "dalle-demo-from-scratch, 512 px by rrdbnet-selftrained"


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    job_id: int
    caption: str
    seed: int
    out_dir: str


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    images: list[str]  # PNGs with JSON sidecars beside them, best first
    notes: list[str]  # e.g. truncation or Latin-only warnings from the library
    seconds: float  # sampling alone, as the library times it
    # The chance that one more attempt would draw an image this job did not (`new_image_chance`);
    # 0 means another seed would draw the same images again. None: not measured.
    new_image_chance: float | None = None
    # How a model that reads a text encoder read the caption («кролик · синий»); None otherwise.
    read_as: str | None = None


@dataclasses.dataclass(frozen=True)
class CutRequest:
    image: str  # a candidate PNG (its sidecar beside it)
    dest: str  # the sticker, .webp or .png
    root: str  # sidecars name the source image relative to the project root
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # recorded in the sidecar


@dataclasses.dataclass(frozen=True)
class CutResult:
    sticker: str
    thumbnail: str
    method: str
    confidence: float | None


class Task(Protocol):
    def load(self) -> Any: ...

    def __call__(self, request: Any, /) -> Any: ...


class ReportingTask(Task, Protocol):
    """A task that says how far a job got; `on_progress` runs in the worker and returns at once."""

    def __call__(self, request: Any, /, on_progress: OnProgress | None = None) -> Any: ...


# ----- the real tasks -----

# Longest caption (in BPE tokens) the bot passes to a model that reads a sentence encoder: the
# encoder reads any length, this only keeps a pasted paragraph from being taken for a caption.
CONDITIONED_MAX_TOKENS = 48


@dataclasses.dataclass
class ModelGenerator:
    """Samples `attempts` images for a caption and writes the best `candidates`, as `emojich generate`."""

    paths: ModelPaths
    params: BotParams

    def load(self) -> ModelInfo:
        import torch

        from emojich.foundation.device import resolve_device
        from emojich.generate.loading import load_models

        if self.params.threads > 0:
            torch.set_num_threads(self.params.threads)
        self.models = load_models(
            self.paths.checkpoint,
            self.paths.bpe,
            self.paths.vqgan,
            self.paths.upscaler,
            resolve_device(self.paths.device),
        )
        config = self.models.dalle.config
        return ModelInfo(
            # A model that reads a text encoder has no text length to fit; the BPE path does.
            text_tokens=CONDITIONED_MAX_TOKENS if config.conditioned else config.text_seq_length - 2,
            bpe=self.paths.bpe,
            description=f"{Path(self.paths.checkpoint).name}, 512 px by {self.models.output_method}",
        )

    def __call__(
        self, request: GenerationRequest, /, on_progress: OnProgress | None = None
    ) -> GenerationResult:
        """Sampling reports its image tokens through `on_progress`; decoding and upscaling follow
        the last one (the bot says "almost done" then)."""
        from emojich.generate.cell import sample_cell
        from emojich.generate.grid import SamplingCell
        from emojich.generate.records import write_ranked_images

        params = self.params
        cell = SamplingCell(params.top_k, params.top_p, params.temperature, request.seed, params.guidance)
        run = sample_cell(
            self.models,
            [request.caption],
            cell,
            self.params.attempts,
            self.paths.batch_size,
            progress=False,
            on_progress=on_progress,
        )
        out = Path(request.out_dir)
        reading = self.models.read(request.caption)
        readings = {request.caption: reading}
        write_ranked_images(out, run, self.models, self.params.candidates, self.paths.batch_size, readings)
        images = sorted(str(path) for path in out.glob("p000-r*.png"))  # names sort by rank
        return GenerationResult(
            images,
            run.notes,
            run.seconds,
            new_image_chance(run.prompts[0].codes),
            reading.line() if reading is not None else None,
        )


def new_image_chance(codes: Any) -> float:
    """The chance that one more attempt draws an image none of `codes` (one row of image codes per
    attempt, each from its own seed) is: Good and Turing's estimate, the share of attempts whose
    image came up exactly once.

    0 when every image came up at least twice: sampling that is deterministic, or nearly, for
    this caption and these settings, as the demo model is for the captions it learnt by heart
    (the nucleus holds one code at each step, whatever the seed). Regenerating would then show
    the same images again.
    """
    import torch

    _, counts = torch.unique(codes, dim=0, return_counts=True)
    return float((counts == 1).sum()) / len(codes)


@dataclasses.dataclass
class StickerCutter:
    """Background removal as in the pipeline: the U-Net, or the contour method when it is unsure."""

    paths: ModelPaths
    sticker_format: str = "webp"
    threads: int = 1

    def load(self) -> str:
        import torch

        if self.threads > 0:
            torch.set_num_threads(self.threads)
        self.model, self.size = None, 0
        weights = self.paths.segment_weights
        if weights and Path(weights).is_file():
            from emojich.segment.unet import load_unet

            self.model, config = load_unet(weights, self.paths.segment_preset)
            self.size = config.size
            return f"U-Net {Path(weights).name}, contour fallback below {self.paths.segment_threshold}"
        return "contour method (no U-Net weights)"

    def __call__(self, request: CutRequest) -> CutResult:
        from PIL import Image

        from emojich.foundation.storage import write_bytes_atomic
        from emojich.segment.stickers import cut_sticker_file, make_thumbnail

        source, dest = Path(request.image), Path(request.dest)
        # "auto" without a U-Net is the contour method alone, as in `emojich sticker`.
        mask, encoded = cut_sticker_file(
            source,
            dest,
            "auto",
            self.model,
            self.size,
            self.paths.segment_threshold,
            source_image=_relative(source, Path(request.root)),
            **request.extra,
        )
        with Image.open(dest) as sticker:
            thumbnail = make_thumbnail(sticker, encoded.format)
        thumbnail_path = dest.with_name(f"{dest.stem}.thumb.{encoded.format}")
        write_bytes_atomic(thumbnail_path, thumbnail.data)
        return CutResult(str(dest), str(thumbnail_path), mask.method, mask.confidence)


def _relative(path: Path, root: Path) -> str:
    """`path` relative to the project root when inside it (lineage resolves it there), else absolute."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


# ----- the worker process side -----

_TASK: Task | None = None
_PROGRESS: multiprocessing.queues.Queue | None = None  # to the bot process's `_ProgressRelay`


def _exit_with_parent(parent: int) -> None:
    # A pool worker blocks on its call queue, whose pipe it holds itself, so it would outlive a
    # killed bot forever; polling the parent's pid is the portable way to notice.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def _initialise(task: Task, parent: int, progress: multiprocessing.queues.Queue) -> None:
    global _TASK, _PROGRESS
    # The library's warnings (a clamped top_k, a Latin-only caption) reach the bot's log this way;
    # workers never see the token, so they need no redaction.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s (worker): %(message)s")
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _TASK = task
    # Reports are best-effort: a worker that exits must not wait for them to reach the pipe.
    progress.cancel_join_thread()
    _PROGRESS = progress


def _load() -> Any:
    assert _TASK is not None
    return _TASK.load()


class _Reporter:
    """A job's `on_progress` in the worker: puts only whole-percent changes on the queue.

    The sampler calls it at every step (thousands per job); a hundred small tuples per job are
    all the bot needs. `put` hands them to the queue's feeder thread, so the sampler never waits.
    """

    def __init__(self, call: int, reports: multiprocessing.queues.Queue):
        self.call = call
        self.reports = reports
        self.percent = -1

    def __call__(self, done: int, total: int) -> None:
        percent = done * 100 // total if total > 0 else 0
        if percent != self.percent:
            self.percent = percent
            self.reports.put((self.call, done, total))


def _run(request: Any, call: int | None = None) -> Any:
    assert _TASK is not None
    if call is None or _PROGRESS is None:
        return _TASK(request)
    return cast(ReportingTask, _TASK)(request, on_progress=_Reporter(call, _PROGRESS))


# ----- the bot side -----


class _ProgressRelay:
    """Carries `(call, done, total)` from a worker process to the callback of that call, on the
    event loop that made the call.

    A thread of its own waits on the queue, so reports arrive as they are made and the event
    loop never waits on the pipe. Reports of a call nobody listens to any more (a late one, after
    the job's answer) are dropped. The bot process only reads the queue: writing to it would
    start a feeder thread that interpreter exit waits for, and a worker killed mid-report can
    leave the queue's write lock taken.
    """

    POLL_S = 0.5  # how soon the thread notices `close()`

    def __init__(self, context: multiprocessing.context.BaseContext, name: str):
        self.queue: multiprocessing.queues.Queue = context.Queue()
        self._listeners: dict[int, tuple[asyncio.AbstractEventLoop, OnProgress]] = {}
        self._lock = threading.Lock()  # listeners change on the loop, are read on the thread
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"{name}-progress", daemon=True)
        self._thread.start()

    def listen(self, call: int, loop: asyncio.AbstractEventLoop, on_progress: OnProgress) -> None:
        with self._lock:
            self._listeners[call] = (loop, on_progress)

    def forget(self, call: int) -> None:
        with self._lock:
            self._listeners.pop(call, None)

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                call, done, total = self.queue.get(timeout=self.POLL_S)
            except queue.Empty:
                continue
            except (EOFError, OSError):  # the pipe broke: no more reports will come
                return
            with self._lock:
                listener = self._listeners.get(call)
            if listener is None:
                continue
            loop, on_progress = listener
            try:
                loop.call_soon_threadsafe(on_progress, done, total)
            except RuntimeError:  # the loop has closed: the bot is stopping
                return

    def close(self) -> None:
        """Stop relaying; returns at once (the thread ends within `POLL_S`)."""
        self._closed.set()


class WorkerPool:
    """One worker process running `task`, with the task loaded once; recreated if the process dies."""

    def __init__(self, task: Task, name: str):
        self.task = task
        self.name = name
        self.info: Any = None
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._relay: _ProgressRelay | None = None
        self._calls = itertools.count(1)

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the bot process runs an event loop and threads, which fork copies badly.
            context = multiprocessing.get_context("spawn")
            # A fresh queue with each process: one that died mid-report may have left the old one's
            # lock taken.
            self._relay = _ProgressRelay(context, self.name)
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1,
                mp_context=context,
                initializer=_initialise,
                initargs=(self.task, os.getpid(), self._relay.queue),
            )
        return self._pool

    async def start(self) -> Any:
        """Start the process and load the task; returns what `load()` returned."""
        self.info = await asyncio.get_running_loop().run_in_executor(self._executor(), _load)
        return self.info

    async def run(self, request: Any, on_progress: OnProgress | None = None) -> Any:
        """Do one job; with `on_progress` (a `ReportingTask` only), it is called on this event
        loop with what the task reports while it works."""
        loop = asyncio.get_running_loop()
        executor, relay = self._executor(), self._relay
        call = None
        if on_progress is not None and relay is not None:
            call = next(self._calls)
            relay.listen(call, loop, on_progress)
        try:
            return await loop.run_in_executor(executor, _run, request, call)
        except concurrent.futures.process.BrokenProcessPool:
            # The worker died (killed, out of memory): the next job gets a fresh process.
            self.shutdown(wait=False)
            await self.start()
            raise
        finally:
            if call is not None and relay is not None:
                relay.forget(call)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the worker; by the time the bot stops, PTB has waited for the jobs, so this is quick."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None
        if self._relay is not None:
            self._relay.close()
            self._relay = None
