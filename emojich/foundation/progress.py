"""Progress bars that suit where they are shown: a live bar on a terminal, a few plain lines in a log.

tqdm redraws its bar in place with carriage returns. On a terminal that is right; in a log (DVC's
output piped to a file, a Prefect run, CI) every redraw stays, all on one ever-growing line, and
log messages land in the middle of it. Off a terminal the bars made here write whole lines
instead: one when they start, one at each tenth of the work, and one at the end.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterable
from typing import IO, Any, TypeVar

from tqdm import tqdm

# Off a terminal: a line per tenth of the work, so about a dozen lines per bar.
LOG_LINES_PER_BAR = 10
# A bar without a known total cannot count tenths; it writes a line at most this often instead.
LOG_SECONDS_WITHOUT_TOTAL = 30.0
# The bar itself means nothing in a log: the counts and times are what a reader wants.
_LOG_LINE_FORMAT = (
    "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)

T = TypeVar("T")

# How long work tells a caller how far it got, besides or instead of a bar: `on_progress(done, total)`
# with units of the work's own choosing (sampling: image tokens). Called from the working thread, so it
# must return at once.
OnProgress = Callable[[int, int], None]


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether `stream` is an interactive terminal (a closed or fake stream is not)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


class _WholeLines:
    """A file for tqdm that turns each in-place redraw into one line of its own.

    tqdm always writes `\\r` + status (and pads with spaces over a longer previous status); it has
    no option for plain lines, hence this small adapter.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        for status in re.split(r"[\r\n]", text):
            status = status.rstrip()
            if status:
                self.stream.write(status + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class _LogLinesBar(tqdm):
    """tqdm writing whole lines at tenths of the work (see the module's docstring)."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        # A postfix (e.g. the loss) is shown on the next line due, not as a line of its own each step.
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        super().set_description(desc, refresh=False)

    def close(self) -> None:
        if not self.disable and getattr(self, "last_print_n", None) == self.n:
            self.leave = False  # the last line written already says where it ended
        super().close()


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    desc: str,
    total: float | None = None,
    unit: str = "it",
    initial: float = 0,
    leave: bool = True,
    disable: bool = False,
    file: IO[str] | None = None,
) -> tqdm:
    """A tqdm bar on a terminal; off one, a line per tenth of the work (`LOG_LINES_PER_BAR`).

    Use it as tqdm: iterate over it, or `update()` it, in a `with` block or `close()` it.
    """
    stream = file if file is not None else sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    common = {"desc": desc, "total": total, "unit": unit, "initial": initial, "disable": disable}
    if is_terminal(stream):
        return tqdm(iterable, file=stream, leave=leave, dynamic_ncols=True, **common)
    if total:
        pacing = {"miniters": max(1, math.ceil((total - initial) / LOG_LINES_PER_BAR)), "mininterval": 0.0}
    else:
        pacing = {"miniters": 1, "mininterval": LOG_SECONDS_WITHOUT_TOTAL}
    return _LogLinesBar(
        iterable,
        file=_WholeLines(stream),
        # A bar that cleans up after itself on a terminal still leaves its last line in a log.
        leave=True,
        bar_format=_LOG_LINE_FORMAT if total else None,
        # tqdm's monitor thread would otherwise force a redraw every `maxinterval` s and then
        # redraw at every step from there on.
        maxinterval=math.inf,
        **pacing,
        **common,
    )
