"""Log lines a person reads: rounded numbers, records as `name=value` pairs, known noise kept out.

The stages log their metrics and per-round records as arguments (`log.info("%s", metrics)`);
formatting them here, in one place, keeps full precision in the files they write while the log
shows what a person compares: 4 significant digits, no 16-digit floats and no dataclass reprs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import sys
from collections.abc import Mapping
from typing import IO, Any

from emojich.foundation.progress import is_terminal

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
SIGNIFICANT_DIGITS = 4

# Loggers whose messages at these levels are known noise, each with why it is safe to hide.
QUIET_LOGGERS = {
    # bitsandbytes, on import on a CPU with AVX512-BF16, tries to fetch a 4-bit matrix kernel from
    # the Hugging Face hub through the `kernels` package and warns "No module named 'kernels'"
    # when it is absent. The project uses bitsandbytes only for its 8-bit Adam, never for 4-bit
    # matrices, and installing `kernels` would make the import reach the network.
    "bitsandbytes.backends.cpu.ops": logging.ERROR,
}


def round_significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`value` to `digits` significant digits, but never fewer than its integer part has."""
    if not math.isfinite(value) or value == 0:
        return value
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    return round(value, max(decimals, 0))


def readable(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """A log argument as a person reads it: floats rounded; mappings, sequences and dataclasses
    rendered as `name=value` text with their floats rounded. Other values pass unchanged."""
    if isinstance(value, bool | int | str | bytes) or value is None:
        return value
    if isinstance(value, numbers.Real):  # float, numpy floats
        return round_significant(float(value), digits)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
        return _pairs(fields, digits)
    if isinstance(value, Mapping):
        return _pairs(value, digits)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(str(readable(item, digits)) for item in value) + "]"
    return value


def _pairs(mapping: Mapping[Any, Any], digits: int) -> str:
    def nested(item: Any) -> str:
        text = str(readable(item, digits))
        is_record = isinstance(item, Mapping) or (
            dataclasses.is_dataclass(item) and not isinstance(item, type)
        )
        return "{" + text + "}" if is_record else text

    return ", ".join(f"{key}={nested(item)}" for key, item in mapping.items())


class ReadableFormatter(logging.Formatter):
    """Formats each record with its arguments made `readable`, leaving the record itself as it was
    (other handlers, e.g. a test's capture, still see the original values)."""

    def format(self, record: logging.LogRecord) -> str:
        if record.args:
            copy = logging.makeLogRecord(record.__dict__)
            if isinstance(record.args, Mapping) and "%(" in str(record.msg):
                copy.args = {key: readable(item) for key, item in record.args.items()}
            elif isinstance(record.args, Mapping):
                # logging unpacks a lone mapping argument (`log.info("%s", metrics)`) into args.
                copy.args = (readable(record.args),)
            else:
                copy.args = tuple(readable(item) for item in record.args)
            record = copy
        return super().format(record)


class _BesideBarsHandler(logging.StreamHandler):
    """On a terminal, writes each message above the live progress bars (tqdm.write clears and
    redraws them) instead of into the middle of one."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging's own contract: a failing handler reports, never raises
            self.handleError(record)


def setup_logging(level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """Configure the root logger for a stage or command, as `logging.basicConfig` would.

    Off a terminal the bars of `emojich.foundation.progress` write whole lines, so a plain handler cannot
    glue a message onto one; on a terminal the handler writes around the live bars.
    """
    stream = stream if stream is not None else sys.stderr
    handler = _BesideBarsHandler(stream) if is_terminal(stream) else logging.StreamHandler(stream)
    handler.setFormatter(ReadableFormatter(LOG_FORMAT))
    # Like basicConfig, a root logger that already has handlers (a test's capture) is left alone.
    logging.basicConfig(level=level, handlers=[handler])
    quiet_known_noise()


def quiet_known_noise() -> None:
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
