"""What the bot says about captions: examples it can draw."""

from __future__ import annotations

import argparse
import re

from emojich.bot import texts
from emojich.cli import build_parser

SUGGESTING = {
    "START": texts.START,
    "HELP": texts.HELP,
    "PACK_STARTED": texts.PACK_STARTED.format(title="Набор"),
    "CAPTION_EMPTY": texts.CAPTION_EMPTY,
    "CAPTION_ONLY_EMOJI": texts.CAPTION_ONLY_EMOJI,
}


def test_every_suggested_caption_is_one_of_the_examples():
    for name, text in SUGGESTING.items():
        quoted = [q for q in re.findall(r"«([^»]+)»", text) if q != "Набор"]
        assert quoted, f"{name} suggests no caption"
        assert set(quoted) <= set(texts.EXAMPLE_CAPTIONS), f"{name} suggests {quoted}"
    # `emojich generate --help` names the same ones.
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    generate = " ".join(commands.choices["generate"].format_help().split())  # unwrapped
    assert all(caption in generate for caption in texts.EXAMPLE_CAPTIONS)
    assert not re.search(r"альпака|улыбается", generate + "".join(SUGGESTING.values()))
