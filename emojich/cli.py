"""The `emojich` command: one-off use of the library outside DVC."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from emojich import __version__

if TYPE_CHECKING:
    from emojich.shards import ShardReader


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emojich", description="Russian captions to emoji stickers.")
    parser.add_argument("--version", action="version", version=f"emojich {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_sticker_command(commands)
    _add_generate_command(commands)
    _add_lineage_command(commands)
    _add_extract_command(commands)
    _add_bot_command(commands)
    _add_standin_command(commands)
    return parser


def _add_bot_command(commands: argparse._SubParsersAction) -> None:
    bot = commands.add_parser(
        "bot",
        help="run the Telegram bot that makes sticker sets from captions",
        description="Serve the Telegram bot by long polling until stopped (Ctrl-C or SIGTERM). Settings "
        "come from the `bot`, `generate` and `segment` sections of PARAMS. The token is read from "
        "--token-file or $EMOJICH_BOT_TOKEN and never logged.",
    )
    bot.add_argument(
        "--token-file", metavar="PATH", help="file holding the bot token (else $EMOJICH_BOT_TOKEN)"
    )
    bot.add_argument(
        "--api-url",
        default="https://api.telegram.org/bot",
        metavar="URL",
        help="Bot API server; the token is appended (default: Telegram's, "
        "e.g. http://127.0.0.1:8081/bot for a local server)",
    )
    bot.add_argument("--params", default="params.yaml", help="settings file (default: params.yaml)")
    bot.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    bot.set_defaults(handler=_run_bot)


def _run_bot(args: argparse.Namespace) -> int:
    try:
        from emojich.bot.app import bot_command
    except ImportError as error:  # python-telegram-bot is an optional extra
        print(f"emojich bot: error: {error}; install the bot extra (uv sync --extra bot)", file=sys.stderr)
        return 2
    return bot_command(args)


def _add_extract_command(commands: argparse._SubParsersAction) -> None:
    extract = commands.add_parser(
        "extract",
        help="copy one image out of a stage's shards",
        description="Find image ID in the shards of FOLDER (e.g. data/prepared/images), write it to OUT "
        "and print where it is stored as <shard>:<member>, the form `emojich lineage` takes.",
    )
    extract.add_argument("folder", metavar="FOLDER", help="a shard folder, e.g. data/upscaled/images")
    extract.add_argument("id", metavar="ID", help="the image id, e.g. twemoji-1f600")
    extract.add_argument("--kind", help="member kind, e.g. rgb.png or mask.png (needed when several)")
    extract.add_argument("--out", metavar="OUT", help="destination file (default: ./ID.KIND)")
    extract.set_defaults(handler=_run_extract)


def _run_extract(args: argparse.Namespace) -> int:
    from emojich.shards import ShardError, ShardReader
    from emojich.storage import write_bytes_atomic

    try:
        with ShardReader(args.folder) as shards:
            kind = _member_kind(shards, args.id, args.kind)
            dest = args.out or f"{args.id}.{kind}"
            write_bytes_atomic(dest, shards.read(args.id, kind))
            print(f"{shards.ref(args.id, kind)} -> {dest}")
    except ShardError as error:  # also a folder holding tar files this project did not write
        print(f"emojich extract: {error}", file=sys.stderr)
        return 2
    return 0


def _member_kind(shards: ShardReader, key: str, kind: str | None) -> str:
    """The kind to extract: the one asked for, or the only one the image has."""
    from emojich.shards import ShardError

    kinds = shards.kinds(key)
    if not kinds:
        raise ShardError(f"no image {key} in the shards of {shards.folder}")
    if kind is None and len(kinds) > 1:
        raise ShardError(f"{key} has several kinds, choose one with --kind: {', '.join(kinds)}")
    if kind is not None and kind not in kinds:
        raise ShardError(f"{key} has no kind {kind}; it has {', '.join(kinds)}")
    return kind or kinds[0]


def _add_lineage_command(commands: argparse._SubParsersAction) -> None:
    lineage = commands.add_parser(
        "lineage",
        help="trace a sticker, generated image, checkpoint or dataset image back to its sources",
        description="Print and verify the chain from PATH back to its prompt, checkpoint, training data, "
        "source images, the DVC stages and the git commit. Exit status 1 when the chain breaks.",
    )
    lineage.add_argument(
        "path",
        metavar="PATH",
        help="a file, or an upscaled or prepared image as <shard>:<member>, "
        "e.g. data/prepared/images/prepared-00000.tar:twemoji-1f600.rgb.png",
    )
    lineage.add_argument("--json", action="store_true", help="machine-readable output")
    lineage.add_argument("--root", default=".", help="the project checkout (default: the current folder)")
    lineage.add_argument(
        "--no-items", action="store_true", help="skip re-hashing every training item's source image"
    )
    lineage.set_defaults(handler=_run_lineage)


def _run_lineage(args: argparse.Namespace) -> int:
    from emojich.lineage import render_text, trace
    from emojich.storage import dumps_json

    try:
        result = trace(args.path, args.root, verify_items=not args.no_items)
    except (FileNotFoundError, ValueError) as error:
        print(f"emojich lineage: {error}", file=sys.stderr)
        return 2
    print(dumps_json(result.to_dict()) if args.json else render_text(result), end="" if args.json else "\n")
    return 1 if result.breaks else 0


def _add_sticker_command(commands: argparse._SubParsersAction) -> None:
    sticker = commands.add_parser(
        "sticker",
        help="cut the background of one image and write a Telegram sticker",
        description="Write a 512 px RGBA sticker (PNG or WEBP, by OUT's suffix) within 512 KB.",
    )
    sticker.add_argument("source", metavar="IN", help="RGB image on a white background")
    sticker.add_argument("dest", metavar="OUT", help="sticker path ending in .webp or .png")
    sticker.add_argument(
        "--method",
        choices=("auto", "unet", "contour"),
        default="auto",
        help="auto: the U-Net, or the contour method when its confidence is below --threshold",
    )
    sticker.add_argument(
        "--weights", help="U-Net weights (.safetensors from the segment stage, or the published .bin)"
    )
    sticker.add_argument("--preset", choices=("demo", "paper", "published-b5"), default="demo")
    sticker.add_argument("--threshold", type=float, default=0.99)
    sticker.set_defaults(handler=_run_sticker)


def _run_sticker(args: argparse.Namespace) -> int:
    from emojich.stickers import sticker_from_file

    if args.method == "unet" and not args.weights:
        print("emojich sticker: --method unet needs --weights", file=sys.stderr)
        return 2
    report = sticker_from_file(args.source, args.dest, args.method, args.weights, args.preset, args.threshold)
    if report.note:
        print(report.note)
    confidence = "n/a" if report.confidence is None else f"{report.confidence:.4f}"
    print(f"method: {report.method}  confidence: {confidence}  encoding: {report.encoding}  -> {args.dest}")
    for problem in report.problems:
        print(f"not a valid Telegram sticker: {problem}", file=sys.stderr)
    return 1 if report.problems else 0


def _add_generate_command(commands: argparse._SubParsersAction) -> None:
    generate = commands.add_parser(
        "generate",
        help="generate emoji for Russian prompts with the fine-tuned model",
        description="Sample N images per prompt, rank them by score (mean NLL, lower is better) and "
        "write 512 px PNGs, JSON sidecars and a contact sheet into OUT.",
    )
    generate.add_argument("prompts", nargs="*", metavar="PROMPT", help="e.g. «розовая альпака улыбается»")
    generate.add_argument("--prompts-file", help="more prompts, one per line")
    generate.add_argument("-n", "--images", type=int, default=16, help="images per prompt")
    generate.add_argument("--keep-best", type=int, help="write only the best K per prompt (default: all)")
    generate.add_argument("--top-k", type=int, default=2048, help="clamped to the image vocabulary")
    generate.add_argument("--top-p", type=float, default=0.995)
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--seed", type=int, default=42)
    generate.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance scale; 1 = off (the report)"
    )
    generate.add_argument("--out", required=True, metavar="DIR")
    generate.add_argument("--checkpoint", default="data/finetune/model.safetensors")
    generate.add_argument(
        "--tokens", default="data/tokens", help="folder with bpe.json and vqgan.safetensors"
    )
    generate.add_argument(
        "--upscaler", default="data/upscaled/rrdbnet.safetensors", help="'' for Lanczos only"
    )
    generate.add_argument("--batch-size", type=int, default=8)
    generate.add_argument("--device", default="auto", help="auto | cpu | cuda")
    generate.set_defaults(handler=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from emojich.generation import generate_command

    return generate_command(args)


def _add_standin_command(commands: argparse._SubParsersAction) -> None:
    standin = commands.add_parser(
        "standin-weights",
        help="write seeded random weights in the published files' formats, to test the paper path",
        description="Write pytorch_model_v3.bin, vqgan.gumbelf8-sber(-dwt).model.ckpt, bpe.model, "
        "RealESRGAN_x4.pth and unet_effnetb5/pytorch_model_v2.bin into DIR: the published containers, "
        "keys and names, filled with seeded random weights and marked as stand-ins in their metadata, "
        "so every stage's metrics say weights_origin: standin. Full size needs about 6 GB of disk.",
    )
    standin.add_argument("folder", metavar="DIR", help="output folder (created if missing)")
    standin.add_argument(
        "--size",
        choices=("tiny", "full"),
        default="tiny",
        help="tiny: small shapes for CI; full: the published",
    )
    standin.add_argument("--seed", type=int, default=0)
    standin.set_defaults(handler=_run_standin)


def _run_standin(args: argparse.Namespace) -> int:
    from pathlib import Path

    folder = Path(args.folder)
    if folder.exists() and not folder.is_dir():
        print(f"emojich standin-weights: {folder} exists and is not a folder", file=sys.stderr)
        return 2
    if args.seed < 0:
        print(f"emojich standin-weights: --seed must be >= 0, got {args.seed}", file=sys.stderr)
        return 2
    from emojich.models.standin import main as write_standins

    try:
        return write_standins(str(folder), args.size, args.seed)
    except OSError as error:  # an unwritable folder or a full disk (full size needs ~6 GB)
        print(f"emojich standin-weights: {error}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
