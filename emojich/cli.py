"""The `emojich` command: one-off use of the library outside DVC."""

from __future__ import annotations

import argparse
import sys

from emojich import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emojich", description="Russian captions to emoji stickers.")
    parser.add_argument("--version", action="version", version=f"emojich {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
