"""The `emojich` command: one-off use of the library outside DVC."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from emojich import __version__
from emojich.bot.texts import EXAMPLE, EXAMPLES  # plain strings: no need for the bot's optional extra
from emojich.foundation.input_checks import (
    InputError,
    check_count,
    check_image_file,
    check_input_file,
    check_input_folder,
    check_output_file,
    check_output_folder,
)
from emojich.foundation.logs import setup_logging
from emojich.models.precision import WEIGHTS_DTYPES

if TYPE_CHECKING:
    from emojich.foundation.shards import ShardReader

# `-n` above this is almost certainly a typo: sampling is ~0.25-1.5 s per image, so the bound is
# already minutes per prompt, and memory grows with it (1e9 asked for 512 GB).
DEFAULT_MAX_IMAGES = 1024
MAX_IMAGES_ENV = "EMOJICH_MAX_IMAGES"
# The segment stage's output: `sticker --method auto` uses it when no --weights are given.
PIPELINE_UNET = Path("data/segment/unet.safetensors")


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (exit 2) instead of usage plus error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="emojich", description="Russian captions to emoji stickers.")
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
        "--token-file",
        metavar="PATH",
        help="file holding the bot token (default: none, the token is read from $EMOJICH_BOT_TOKEN)",
    )
    bot.add_argument(
        "--api-url",
        default="https://api.telegram.org/bot",
        metavar="URL",
        help="Bot API server; the token is appended (default: Telegram's, %(default)s; "
        "e.g. http://127.0.0.1:8081/bot for a local server)",
    )
    bot.add_argument(
        "--params", default="params.yaml", metavar="PATH", help="settings file (default: %(default)s)"
    )
    bot.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="least severe log messages shown (default: %(default)s)",
    )
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
    extract.add_argument(
        "--kind",
        help="member kind, e.g. rgb.png or mask.png (default: the image's only kind; needed when it has several)",
    )
    extract.add_argument("--out", metavar="OUT", help="destination file (default: ./ID.KIND)")
    extract.set_defaults(handler=_run_extract)


def _run_extract(args: argparse.Namespace) -> int:
    from emojich.foundation.shards import ShardError, ShardReader, shard_paths
    from emojich.foundation.storage import write_bytes_atomic

    check_input_folder(args.folder, "FOLDER")
    if not shard_paths(args.folder):
        raise InputError(f"FOLDER {args.folder} holds no shards (*.tar)")
    if args.out is not None:
        check_output_file(args.out, "--out")
    try:
        with ShardReader(args.folder) as shards:
            kind = _member_kind(shards, args.id, args.kind)
            dest = args.out or f"{args.id}.{kind}"
            check_output_file(dest, "--out")
            write_bytes_atomic(dest, shards.read(args.id, kind))
            print(f"{shards.ref(args.id, kind)} -> {dest}")
    except ShardError as error:  # also a folder holding tar files this project did not write
        print(f"emojich extract: {error}", file=sys.stderr)
        return 2
    return 0


def _member_kind(shards: ShardReader, key: str, kind: str | None) -> str:
    """The kind to extract: the one asked for, or the only one the image has."""
    from emojich.foundation.shards import ShardError

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
        "source images, the DVC stages and the git commit, one line per link. Stickers and images from "
        "`emojich sticker`, `emojich generate` or the bot are traced through their JSON sidecars, "
        "wherever they lie. Exit status 1 when the chain breaks; each break says which link and why.",
    )
    lineage.add_argument(
        "path",
        metavar="PATH",
        help="a file, or an upscaled or prepared image as <shard>:<member>, "
        "e.g. data/prepared/images/prepared-00000.tar:twemoji-1f600.rgb.png",
    )
    lineage.add_argument(
        "--json",
        action="store_true",
        help="every fact of every link in full, as JSON (default: off, one summarised line per link)",
    )
    lineage.add_argument(
        "--root", default=".", help="the project checkout (default: %(default)s, the current folder)"
    )
    lineage.add_argument(
        "--no-items",
        action="store_true",
        help="skip re-hashing every training item's source image (default: off, every item is checked)",
    )
    lineage.set_defaults(handler=_run_lineage)


def _run_lineage(args: argparse.Namespace) -> int:
    from emojich.foundation.storage import dumps_json
    from emojich.lineage.render import render_text
    from emojich.lineage.trace import trace

    try:
        result = trace(args.path, args.root, verify_items=not args.no_items)
    except (FileNotFoundError, ValueError) as error:
        print(f"emojich lineage: {error}", file=sys.stderr)
        return 2
    print(dumps_json(result.to_dict()) if args.json else render_text(result), end="" if args.json else "\n")
    return 1 if result.breaks else 0


def _unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


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
        help="auto: the U-Net, or the contour method when its confidence is below --threshold; "
        "unet: always the U-Net; contour: no model (default: %(default)s)",
    )
    sticker.add_argument(
        "--weights",
        metavar="PATH",
        help="U-Net weights (.safetensors from the segment stage, or the published .bin) "
        f"(default: {PIPELINE_UNET} when it exists, else the contour method)",
    )
    sticker.add_argument(
        "--preset",
        choices=("demo", "paper", "published-b5"),
        default="demo",
        help="U-Net architecture for weights that do not carry their own (default: %(default)s)",
    )
    sticker.add_argument(
        "--threshold",
        type=_unit_interval,
        default=0.99,
        metavar="T",
        help="with --method auto, the U-Net confidence in [0, 1] below which the contour method is used "
        "(default: %(default)s)",
    )
    sticker.set_defaults(handler=_run_sticker)


def _run_sticker(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from emojich.models.checkpoints import CheckpointError
    from emojich.segment.stickers import sticker_from_file

    check_image_file(args.source, "IN")
    check_output_file(args.dest, "OUT", suffixes=(".webp", ".png"))
    weights = args.weights
    if weights is None and args.method != "contour" and PIPELINE_UNET.is_file():
        weights = str(PIPELINE_UNET)
        print(f"using the pipeline's U-Net {PIPELINE_UNET}")
    if args.method == "unet" and not weights:
        raise InputError(f"--method unet needs --weights (and there is no {PIPELINE_UNET})")
    if weights and args.method != "contour":
        _check_weights(weights)
    try:
        report = sticker_from_file(args.source, args.dest, args.method, weights, args.preset, args.threshold)
    except (CheckpointError, SafetensorError) as error:  # the weights are read first, before any output
        raise InputError(f"--weights {weights} is not a U-Net checkpoint ({error})") from error
    if report.note:
        fell_back = not weights and args.method == "auto"
        print(f"{report.note} (no --weights, and no {PIPELINE_UNET})" if fell_back else report.note)
    confidence = "n/a" if report.confidence is None else f"{report.confidence:.4f}"
    print(f"method: {report.method}  confidence: {confidence}  encoding: {report.encoding}  -> {args.dest}")
    for problem in report.problems:
        print(f"not a valid Telegram sticker: {problem}", file=sys.stderr)
    return 1 if report.problems else 0


def _check_weights(path: str) -> None:
    """A cheap look at the file's format, so that a wrong file is reported before the U-Net is built."""
    import zipfile

    from safetensors import SafetensorError, safe_open

    weights = check_input_file(path, "--weights")
    if weights.suffix == ".safetensors":
        try:
            with safe_open(str(weights), framework="pt"):
                pass  # reads only the header
        except SafetensorError as error:
            raise InputError(f"--weights {weights} is not a U-Net checkpoint ({error})") from None
        return
    with open(weights, "rb") as handle:
        # torch.save writes a zip archive; files from before torch 1.6 are a pickle (protocol byte 0x80).
        pickled = handle.read(1) == b"\x80"
    if not (pickled or zipfile.is_zipfile(weights)):
        raise InputError(
            f"--weights {weights} is not a U-Net checkpoint (neither safetensors nor torch.save)"
        )


def _max_images_default() -> int:
    text = os.environ.get(MAX_IMAGES_ENV, "")
    try:
        return int(text) if text else DEFAULT_MAX_IMAGES
    except ValueError:
        raise InputError(f"${MAX_IMAGES_ENV} must be an integer, got {text!r}") from None


def _add_generate_command(commands: argparse._SubParsersAction) -> None:
    generate = commands.add_parser(
        "generate",
        help="generate emoji for Russian prompts with the fine-tuned model",
        description="Sample N images per prompt, rank them by score (mean NLL, lower is better) and "
        "write 512 px PNGs, JSON sidecars and a contact sheet into OUT.",
    )
    generate.add_argument("prompts", nargs="*", metavar="PROMPT", help=f"e.g. {EXAMPLES}")
    generate.add_argument("--prompts-file", metavar="PATH", help="more prompts, one per line (default: none)")
    generate.add_argument(
        "-n",
        "--images",
        type=int,
        default=16,
        metavar="N",
        help="images sampled per prompt, at most --max-images (default: %(default)s)",
    )
    generate.add_argument(
        "--max-images",
        type=int,
        metavar="N",
        help=f"upper bound on -n, a guard against typos that would start a job of hours "
        f"(default: ${MAX_IMAGES_ENV}, else {DEFAULT_MAX_IMAGES})",
    )
    generate.add_argument(
        "--keep-best", type=int, metavar="K", help="write only the best K per prompt (default: all N)"
    )
    generate.add_argument(
        "--top-k",
        type=int,
        default=2048,
        help="sample from the K likeliest codes, clamped to the image vocabulary (default: %(default)s)",
    )
    generate.add_argument(
        "--top-p",
        type=float,
        default=0.995,
        help="nucleus sampling: the likeliest codes holding this probability mass (default: %(default)s)",
    )
    generate.add_argument(
        "--temperature", type=float, default=1.0, help="softmax temperature (default: %(default)s)"
    )
    generate.add_argument(
        "--seed", type=int, default=42, help="random seed; same seed, same images (default: %(default)s)"
    )
    generate.add_argument(
        "--guidance",
        type=float,
        default=1.0,
        help="classifier-free guidance scale; 1 = off, as in the report (default: %(default)s)",
    )
    generate.add_argument("--out", required=True, metavar="DIR", help="output folder (required)")
    generate.add_argument(
        "--checkpoint",
        default="data/finetune/model.safetensors",
        metavar="PATH",
        help="fine-tuned model (default: %(default)s)",
    )
    generate.add_argument(
        "--tokens",
        default="data/tokens",
        metavar="DIR",
        help="folder with bpe.json and vqgan.safetensors (default: %(default)s)",
    )
    generate.add_argument(
        "--upscaler",
        default="data/upscaled/rrdbnet.safetensors",
        metavar="PATH",
        help="super-resolution model to 512 px; '' for Lanczos only (default: %(default)s)",
    )
    generate.add_argument(
        "--batch-size", type=int, default=8, help="images sampled at once (default: %(default)s)"
    )
    generate.add_argument(
        "--device",
        default="auto",
        help="auto (the GPU when there is one), cpu or cuda (default: %(default)s)",
    )
    generate.add_argument(
        "--weights-dtype",
        choices=WEIGHTS_DTYPES,
        default="checkpoint",
        help="the transformer's weights: as the checkpoint stores them, bf16 (fastest on a CPU for "
        "batches), or int8 linear layers (half bf16's bytes; fastest on a CPU at --batch-size 1) "
        "(default: %(default)s)",
    )
    generate.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="share the sampling among N processes under torchrun (one per GPU, or gloo on CPU); "
        "the files are the same (default: %(default)s)",
    )
    generate.set_defaults(handler=_run_generate)


def _check_generate(args: argparse.Namespace) -> None:
    """Everything about `generate`'s arguments that can be known before the models load."""
    if any(not text.strip() for text in args.prompts):
        raise InputError(f"the prompt is empty; give a caption such as {EXAMPLE}")
    max_images = args.max_images if args.max_images is not None else _max_images_default()
    check_count(
        args.images,
        "-n",
        max_images,
        f"raise the limit with --max-images or ${MAX_IMAGES_ENV} if you mean it",
    )
    if args.keep_best is not None and args.keep_best < 1:
        raise InputError(f"--keep-best must be >= 1, got {args.keep_best}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.prompts_file:
        check_input_file(args.prompts_file, "--prompts-file")
    tokens = check_input_folder(args.tokens, "--tokens")
    for name in ("bpe.json", "vqgan.safetensors"):
        check_input_file(tokens / name, "--tokens")
    check_input_file(args.checkpoint, "--checkpoint")
    if args.upscaler:
        check_input_file(args.upscaler, "--upscaler")
    _check_device(args.device)
    check_output_folder(args.out, "--out")


def _check_device(name: str) -> None:
    if name == "auto":
        return
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(f"--device {name!r} is not a device torch knows ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA GPU is available")


def _run_generate(args: argparse.Namespace) -> int:
    from emojich.generate.run import generate_command

    _check_generate(args)
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
        help="tiny: the published keys at small shapes, for tests; full: the published shapes "
        "(default: %(default)s)",
    )
    standin.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed, same bytes (default: %(default)s)"
    )
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
    check_output_folder(folder, "DIR")  # before building weights of up to 6 GB
    from emojich.standins import main as write_standins

    try:
        return write_standins(str(folder), args.size, args.seed)
    except OSError as error:  # an unwritable folder or a full disk (full size needs ~6 GB)
        print(f"emojich standin-weights: {error}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version or a bad argument: a status, for in-process callers too
        return done.code if isinstance(done.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to start the command again (torchrun)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    # Warnings (a truncated or Latin-only prompt, a clamped top_k) are logged where they arise and
    # shown once, on stderr; `emojich bot` sets up its own logging.
    setup_logging(logging.WARNING)
    try:
        return int(args.handler(args) or 0)
    except InputError as error:
        print(f"emojich {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # What the checks could not foresee (a disk that fills up, a file removed meanwhile) is
        # still about the files given, not a bug: one line, not a traceback.
        print(f"emojich {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
