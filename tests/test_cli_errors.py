"""Every bad input to `emojich` is one line on stderr and exit status 2, found before any model loads."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from emojich import cli
from emojich.cli import build_parser, main
from emojich.foundation.shards import write_shards


class ModelLoaded(Exception):
    """Raised by the patched loaders: a check that should have come first did not."""


@pytest.fixture
def no_model_loads(monkeypatch):
    import emojich.generate.run
    import emojich.segment.unet
    import emojich.standins

    def refuse(*args: object, **kwargs: object) -> None:
        raise ModelLoaded

    monkeypatch.setattr(emojich.segment.unet, "load_unet", refuse)
    monkeypatch.setattr(emojich.generate.run, "load_models", refuse)
    # The commands that build weights or start worker processes instead of loading a model.
    monkeypatch.setattr(emojich.standins, "main", refuse)
    with contextlib.suppress(ImportError):  # python-telegram-bot is an optional extra
        import emojich.bot.app

        monkeypatch.setattr(emojich.bot.app, "run_bot", refuse)


def _one_line_error(capsys, args: list[str], *fragments: str) -> str:
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "face.png"
    rgb = np.full((64, 64, 3), 255, np.uint8)
    rgb[16:48, 16:48] = (200, 40, 40)
    Image.fromarray(rgb).save(path)
    return path


# -- emojich sticker --------------------------------------------------------------------------------


def test_sticker_rejects_inputs_that_are_not_images(tmp_path, capsys, no_model_loads):
    text = tmp_path / "notes.png"
    text.write_text("not an image", encoding="utf-8")
    empty = tmp_path / "empty.png"
    empty.touch()
    out = tmp_path / "out.webp"
    _one_line_error(capsys, ["sticker", str(text), str(out)], "emojich sticker: error:", "not an image")
    _one_line_error(capsys, ["sticker", str(empty), str(out)], "is empty")
    _one_line_error(capsys, ["sticker", str(tmp_path), str(out)], "is a folder, not a file")
    _one_line_error(capsys, ["sticker", str(tmp_path / "missing.png"), str(out)], "no such file")
    assert not out.exists()


def test_sticker_rejects_outputs_it_cannot_write(tmp_path, capsys, image, no_model_loads):
    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    _one_line_error(capsys, ["sticker", str(image), str(tmp_path / "out.jpg")], "must end in .webp or .png")
    _one_line_error(capsys, ["sticker", str(image), str(blocker / "out.png")], "is a file, not a folder")
    (tmp_path / "dir.png").mkdir()
    _one_line_error(capsys, ["sticker", str(image), str(tmp_path / "dir.png")], "is a folder")
    assert not (tmp_path / "out.jpg").exists()


@pytest.mark.parametrize("value", ["5", "-0.1", "1.01", "high"])
def test_sticker_threshold_must_be_in_the_unit_interval(tmp_path, capsys, image, value, no_model_loads):
    line = _one_line_error(
        capsys, ["sticker", str(image), str(tmp_path / "o.png"), "--threshold", value], "--threshold"
    )
    assert line.startswith("emojich sticker: error:")


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_sticker_weights_that_are_not_a_checkpoint(tmp_path, capsys, image, suffix, no_model_loads):
    weights = tmp_path / f"weights{suffix}"
    weights.write_bytes(b"this is not a checkpoint at all")
    out = tmp_path / "out.png"
    _one_line_error(
        capsys,
        ["sticker", str(image), str(out), "--weights", str(weights)],
        f"--weights {weights} is not a U-Net checkpoint",
    )
    _one_line_error(
        capsys, ["sticker", str(image), str(out), "--weights", str(tmp_path / "no.bin")], "no such file"
    )
    assert not out.exists()


def test_sticker_auto_uses_the_pipelines_unet_or_says_it_fell_back(tmp_path, monkeypatch, capsys, image):
    from emojich.segment.unet import build_unet, preset, save_unet

    monkeypatch.chdir(tmp_path)
    assert main(["sticker", str(image), "plain.png"]) == 0
    out = capsys.readouterr().out
    assert f"no {cli.PIPELINE_UNET}" in out and "method: contour" in out
    _one_line_error(
        capsys, ["sticker", str(image), "u.png", "--method", "unet"], "--method unet needs --weights"
    )

    cli.PIPELINE_UNET.parent.mkdir(parents=True)
    save_unet(build_unet(preset("tiny")), preset("tiny"), cli.PIPELINE_UNET)
    assert main(["sticker", str(image), "unet.png", "--threshold", "0"]) == 0
    out = capsys.readouterr().out
    assert f"using the pipeline's U-Net {cli.PIPELINE_UNET}" in out and "method: unet" in out
    assert main(["sticker", str(image), "contour.png", "--method", "contour"]) == 0
    assert "pipeline" not in capsys.readouterr().out


# -- emojich generate -------------------------------------------------------------------------------


@pytest.fixture
def model_files(tmp_path):
    """Files where the models would be: the checks look at paths, never inside."""
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    for path in (tokens / "bpe.json", tokens / "vqgan.safetensors", tmp_path / "model.safetensors"):
        path.write_bytes(b"placeholder")
    return ["--tokens", str(tokens), "--checkpoint", str(tmp_path / "model.safetensors"), "--upscaler", ""]


def test_generate_reports_missing_tokens_before_loading(tmp_path, capsys, no_model_loads):
    _one_line_error(
        capsys,
        ["generate", "ёж", "--out", str(tmp_path / "o"), "--tokens", "/nonexistent"],
        "emojich generate: error:",
        "--tokens /nonexistent: no such folder",
    )
    (tmp_path / "tokens").mkdir()
    _one_line_error(
        capsys,
        ["generate", "ёж", "--out", str(tmp_path / "o"), "--tokens", str(tmp_path / "tokens")],
        "bpe.json",
    )
    assert not (tmp_path / "o").exists()


def test_generate_bounds_n_and_the_bound_can_be_raised(
    tmp_path, capsys, monkeypatch, model_files, no_model_loads
):
    out = ["--out", str(tmp_path / "o")]
    line = _one_line_error(
        capsys, ["generate", "ёж", "-n", "1000000000", *out, *model_files], "-n 1000000000"
    )
    assert f"limit of {cli.DEFAULT_MAX_IMAGES}" in line and "--max-images" in line
    _one_line_error(capsys, ["generate", "ёж", "-n", "100000", *out, *model_files], "above the limit")
    _one_line_error(capsys, ["generate", "ёж", "-n", "0", *out, *model_files], "-n must be >= 1")
    # Raised on purpose, the same request gets as far as loading the models.
    with pytest.raises(ModelLoaded):
        main(["generate", "ёж", "-n", "100000", "--max-images", "100000", *out, *model_files])
    monkeypatch.setenv(cli.MAX_IMAGES_ENV, "200000")
    with pytest.raises(ModelLoaded):
        main(["generate", "ёж", "-n", "100000", *out, *model_files])
    monkeypatch.setenv(cli.MAX_IMAGES_ENV, "lots")
    _one_line_error(
        capsys, ["generate", "ёж", *out, *model_files], f"${cli.MAX_IMAGES_ENV} must be an integer"
    )


def test_generate_finds_an_unwritable_out_before_sampling(tmp_path, capsys, model_files, no_model_loads):
    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    _one_line_error(
        capsys, ["generate", "ёж", "--out", str(blocker), *model_files], "is a file, not a folder"
    )
    _one_line_error(
        capsys, ["generate", "ёж", "--out", str(blocker / "sub"), *model_files], "cannot write --out"
    )


def test_generate_checks_its_other_options(tmp_path, capsys, model_files, no_model_loads):
    out = ["--out", str(tmp_path / "o")]
    _one_line_error(capsys, ["generate", "ёж", "--keep-best", "0", *out, *model_files], "--keep-best")
    _one_line_error(capsys, ["generate", "ёж", "--batch-size", "0", *out, *model_files], "--batch-size")
    _one_line_error(
        capsys,
        ["generate", "ёж", "--prompts-file", str(tmp_path / "none.txt"), *out, *model_files],
        "no such file",
    )
    _one_line_error(capsys, ["generate", "ёж", "--device", "warp-drive", *out, *model_files], "--device")
    _one_line_error(capsys, ["generate", "ёж", "-n", "many", *out, *model_files], "invalid int value")


# -- emojich extract --------------------------------------------------------------------------------


def test_extract_tells_a_missing_folder_from_a_missing_image(tmp_path, capsys):
    write_shards(tmp_path / "set", "set", [("item-000", {"rgb.png": b"png"})], max_items=2)
    _one_line_error(capsys, ["extract", str(tmp_path / "nothing"), "item-000"], "no such folder")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, ["extract", str(tmp_path / "empty"), "item-000"], "holds no shards")
    _one_line_error(capsys, ["extract", str(tmp_path / "set"), "item-999"], "no image item-999")


def test_extract_rejects_an_unwritable_out(tmp_path, capsys):
    write_shards(tmp_path / "set", "set", [("item-000", {"rgb.png": b"png"})], max_items=2)
    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    args = ["extract", str(tmp_path / "set"), "item-000", "--out"]
    _one_line_error(capsys, [*args, str(blocker / "x.png")], "is a file, not a folder")
    _one_line_error(capsys, [*args, str(tmp_path)], "is a folder")


# -- outputs that cannot be written, for every command -----------------------------------------------

# Places whose permission bits say "writable" to root (and os.access agrees) but that refuse new
# files: an existence or permission check alone lets these through to the end of the work.
REFUSING = [place for place in ("/proc/emojich-nope", "/sys/emojich-x") if Path(place).parent.is_dir()]


@pytest.mark.skipif(not sys.platform.startswith("linux") or not REFUSING, reason="needs /proc and /sys")
@pytest.mark.parametrize("place", REFUSING)
def test_every_command_finds_an_output_it_cannot_write_before_any_work(
    place, tmp_path, capsys, monkeypatch, image, model_files, no_model_loads
):
    """Each command that writes tries its output place first: one line, exit 2, no model loaded."""
    _one_line_error(
        capsys, ["generate", "ёж", "--out", place, *model_files], "emojich generate: error:", f"--out {place}"
    )
    _one_line_error(capsys, ["sticker", str(image), f"{place}.webp"], "emojich sticker: error:", place)
    _one_line_error(
        capsys, ["sticker", str(image), f"{place}.png", "--method", "contour"], "cannot write OUT"
    )
    write_shards(tmp_path / "set", "set", [("item-000", {"rgb.png": b"png"})], max_items=2)
    _one_line_error(
        capsys, ["extract", str(tmp_path / "set"), "item-000", "--out", f"{place}.png"], "cannot write --out"
    )
    _one_line_error(capsys, ["standin-weights", place], "emojich standin-weights: error:", "cannot write DIR")

    pytest.importorskip("telegram")
    from tests.bot_harness import TOKEN

    monkeypatch.setenv("EMOJICH_BOT_TOKEN", TOKEN)
    tokens = model_files[1]
    params = {
        "bot": {"state_dir": place},
        "generate": {"checkpoint": model_files[3], "tokens": tokens},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    _one_line_error(
        capsys, ["bot", "--params", str(tmp_path / "params.yaml")], "emojich bot: error:", "bot.state_dir"
    )


# -- the command itself -----------------------------------------------------------------------------


def test_bare_emojich_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: emojich") and "sticker" in err and "generate" in err


def test_an_unknown_option_is_one_line(capsys):
    _one_line_error(capsys, ["sticker", "--colour", "red"], "emojich sticker: error:", "--help")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(_subcommands(build_parser())))
def test_every_option_says_what_it_does_and_its_default(command):
    parser = _subcommands(build_parser())[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        name = action.option_strings[-1]
        assert action.help and len(action.help) > 15, f"{command} {name} has no help"
        assert "default" in action.help or action.required, f"{command} {name} does not say its default"
    help_text = parser.format_help()
    assert "%(default)" not in help_text and "(default: None)" not in help_text
