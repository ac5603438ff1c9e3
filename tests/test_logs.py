"""Logs a person can read: a few whole progress lines off a terminal, rounded numbers, no known noise."""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from emojich.foundation.logs import (
    QUIET_LOGGERS,
    ReadableFormatter,
    readable,
    round_significant,
    setup_logging,
)
from emojich.foundation.progress import LOG_LINES_PER_BAR, progress_bar

# A stage as the pipeline runs it: logging set up by `main`, a training loop with a postfix and a
# message in the middle, then a library function with its own bar (the upscaler), then the metrics.
_STAGE = textwrap.dedent(
    """
    import dataclasses
    import logging

    import numpy as np

    from emojich.foundation.logs import setup_logging
    from emojich.models.rrdbnet import RRDBNet, preset
    from emojich.foundation.progress import progress_bar
    from emojich.upscale.superres import super_resolve

    @dataclasses.dataclass
    class RoundRecord:
        round: int
        val_iou: float

    setup_logging()
    log = logging.getLogger("stages.demo")
    log.info("%d training pairs, lr %s", 1000, 0.000123456789012345)
    bar = progress_bar(total=1000, desc="finetune", unit="step")
    for step in range(1000):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
        if step == 555:
            log.info("round %d: %s", 1, RoundRecord(1, 0.83333333333333337))
    bar.close()
    images = [np.full((8, 8, 3), i, np.uint8) for i in range(40)]
    super_resolve(RRDBNet(preset("demo")), images, batch_size=1, progress=True)
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning("No module named 'kernels'")
    log.info("%s", {"val_loss": 2.7182818284590451, "steps": 1000, "psnr": {"model_db": 31.234567891234}})
    """
)


def test_off_a_terminal_a_stage_logs_a_few_whole_lines():
    done = subprocess.run(
        [sys.executable, "-c", _STAGE], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "\r" not in err
    lines = err.splitlines()
    bars = [line for line in lines if line.startswith(("finetune: ", "super-resolve: "))]
    messages = [line for line in lines if line.startswith("INFO stages.demo: ")]
    # Nothing else, and nothing glued: every line is a whole bar line or a whole message.
    assert len(bars) + len(messages) == len(lines), err
    assert len(messages) == 3
    assert 4 <= len(bars) <= 2 * (LOG_LINES_PER_BAR + 2), err
    assert max(map(len, lines)) < 160
    assert "finetune: 100% 1000/1000 step" in err and "loss=0.001" in err
    assert "super-resolve: 100% 40/40 img" in err
    assert "round 1: round=1, val_iou=0.8333" in err
    assert "val_loss=2.718, steps=1000, psnr={model_db=31.23}" in err
    assert "lr 0.0001235" in err
    for number in re.findall(r"\d+\.\d+", "\n".join(messages)):
        assert len(number.replace(".", "").lstrip("0")) <= 4, number  # 4 significant digits
    assert "kernels" not in err


def test_logged_metrics_are_rounded_and_records_are_pairs():
    @dataclasses.dataclass
    class Round:
        round: int
        accepted: list[int]
        val_iou: float

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ReadableFormatter("%(message)s"))
    log = logging.getLogger("tests.readable")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("%s", {"loss": 0.12345678901234567, "ok": True, "hash": "ab12", "none": None})
        log.warning("%s | %s", Round(2, [1, 2], 0.98765432109876), np.float32(1 / 3))
        log.warning("%d images in %.1f s, lr %s", 11672, 83.456789, 3.0e-05)
        log.warning("%(n)d of %(share)s", {"n": 7, "share": 0.777777777})
    finally:
        log.removeHandler(handler)
    assert stream.getvalue().splitlines() == [
        "loss=0.1235, ok=True, hash=ab12, none=None",
        "round=2, accepted=[1, 2], val_iou=0.9877 | 0.3333",
        "11672 images in 83.5 s, lr 3e-05",
        "7 of 0.7778",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.12345678, 0.1235),
        (11672.34, 11672.0),  # never fewer digits than the integer part
        (2.3456789e-05, 2.346e-05),
        (-1.23456, -1.235),
        (0.0, 0.0),
    ],
)
def test_round_significant(value, expected):
    assert round_significant(value) == expected


def test_non_finite_and_non_numbers_pass_through():
    assert np.isnan(readable(float("nan"))) and readable(float("inf")) == float("inf")
    assert readable("0.123456789") == "0.123456789" and readable(7) == 7


def test_setup_logging_quiets_the_known_noise():
    setup_logging()
    for name, level in QUIET_LOGGERS.items():
        assert logging.getLogger(name).getEffectiveLevel() >= level > logging.WARNING


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_is_live_and_messages_go_above_it():
    terminal = _Terminal()
    root_handlers = logging.getLogger().handlers[:]
    logging.getLogger().handlers.clear()
    try:
        setup_logging(stream=terminal)
        bar = progress_bar(total=50, desc="train", unit="step", file=terminal)
        for step in range(50):
            bar.update(1)
            if step == 25:
                logging.getLogger("tests.live").info("halfway")
        bar.close()
    finally:
        logging.getLogger().handlers[:] = root_handlers
    text = terminal.getvalue()
    assert "\r" in text  # a live bar redraws in place
    # The message is written on a line of its own, after the bar was cleared.
    assert re.search(r"\r\s*\rINFO tests\.live: halfway\n", text), repr(text)
