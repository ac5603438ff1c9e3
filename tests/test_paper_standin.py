"""The paper profile end to end under real DVC, on tiny stand-ins of the published weights."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from emojich import standins
from emojich.cli import main as cli_main
from emojich.models import origin
from emojich.models.dalle import DalleConfig
from emojich.models.vqgan import VQGanConfig
from emojich.train.loop import TrainConfig, build_optimizer, build_scheduler
from tests.paper_profile import PROFILE, paper_overrides
from tests.pipeline import assert_repro_is_a_no_op, dvc, make_pipeline_repo, run

PROMPTS = "prompts/paper-smoke.txt"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("standins")
    assert cli_main(["standin-weights", str(folder), "--size", "tiny", "--seed", "7"]) == 0
    return folder


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory, tiny_weights) -> tuple[Path, str]:
    # Two of the appendix's prompts: every later stage's time grows with their number.
    overrides = paper_overrides(tiny_weights, "tiny", prompts=PROMPTS)
    path = make_pipeline_repo(tmp_path_factory.mktemp("paper"), overrides, PROFILE)
    (path / PROMPTS).write_text("зима в горах\nЭйнштейн улыбается\n", encoding="utf-8")
    run(["git", "add", "-A"], cwd=path)
    run(["git", "commit", "-q", "-m", "two prompts"], cwd=path)
    result = dvc("repro", cwd=path)
    run(["git", "add", "-A"], cwd=path)
    run(["git", "commit", "-q", "-m", "reproduced"], cwd=path)
    return path, result.stdout


FOLDERS = {"upscale": "upscaled", "tokenize": "tokens"}  # the others write data/<stage>/


def _metrics(path: Path, stage: str) -> dict:
    """A stage's full record: its provenance output (the committed metrics are a rounded summary)."""
    folder = path / "data" / FOLDERS.get(stage, stage)
    return json.loads((folder / "provenance.json").read_text(encoding="utf-8"))


def test_standins_have_the_published_names_and_say_what_they_are(tiny_weights):
    for name in standins.FILES:
        assert (tiny_weights / name).is_file(), name
        assert origin.file_origin(tiny_weights / name) == origin.STANDIN, name
    raw = torch.load(tiny_weights / standins.REALESRGAN_FILE, weights_only=True)
    assert set(raw) == {"params_ema"}  # Real-ESRGAN's container, the marker rides in its metadata
    ckpt = torch.load(tiny_weights / standins.VQGAN_DWT_FILE, weights_only=True)
    assert all(key.startswith("model.") for key in ckpt["state_dict"])
    assert "model.decoder.idwt.g0_col" in ckpt["state_dict"]


def test_standins_are_the_same_bytes_for_the_same_seed(tiny_weights, tmp_path):
    assert cli_main(["standin-weights", str(tmp_path), "--seed", "7"]) == 0
    for name in standins.FILES:
        assert (tmp_path / name).read_bytes() == (tiny_weights / name).read_bytes(), name


def test_tiny_standins_keep_the_published_key_names(tiny_weights):
    """The full-size key sets, built on the meta device, are exactly the tiny files' key sets."""
    from emojich.models.dalle import Dalle
    from emojich.models.rrdbnet import PRESETS, RRDBNet
    from emojich.models.vqgan import VQGan

    def keys(name: str, wrapper: str | None = None) -> dict[str, torch.Tensor]:
        state = torch.load(tiny_weights / name, weights_only=True, mmap=True)
        return state[wrapper] if wrapper else state

    with torch.device("meta"):
        dalle = Dalle(DalleConfig.preset("malevich")).state_dict()
        vqgan = VQGan(VQGanConfig.preset("sber-dwt")).state_dict()
        rrdb = RRDBNet(PRESETS["realesrgan-x4"]).state_dict()
    tiny = keys(standins.DALLE_FILE)
    assert set(tiny) == set(dalle)
    assert tiny["to_logits.1.weight"].shape[0] < dalle["to_logits.1.weight"].shape[0]
    assert set(keys(standins.VQGAN_DWT_FILE, "state_dict")) == {f"model.{key}" for key in vqgan}
    assert set(keys(standins.REALESRGAN_FILE, "params_ema")) == set(rrdb)


def test_realesrgan_shapes_are_read_off_the_file(tiny_weights):
    from emojich.models.rrdbnet import RRDBNet, RRDBNetConfig

    model = RRDBNet.load_published(tiny_weights / standins.REALESRGAN_FILE)
    assert model.config == RRDBNetConfig(**standins.RRDBNET_TINY)


def test_standin_weights_rejects_bad_input_with_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_main(["standin-weights", str(blocker)]) == 2
    assert cli_main(["standin-weights", str(tmp_path / "w"), "--seed", "-1"]) == 2
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o500)
    if os.access(readonly, os.W_OK):  # root ignores the mode: a path under a file fails the same way
        readonly = blocker
    assert cli_main(["standin-weights", str(readonly / "sub")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("emojich standin-weights:") for line in err)
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_paper_variant_of_every_stage_ran_on_standins(paper_run):
    path, log = paper_run
    for stage in ("scrape", "prepare", "upscale", "tokenize", "finetune", "segment", "stickers"):
        assert f"Running stage '{stage}'" in log, stage
    upscale = _metrics(path, "upscale")
    assert upscale["upscaler"] == "realesrgan-x4-published" and upscale["images"]["super_resolved"] > 0

    tokens = _metrics(path, "tokenize")
    assert tokens["image_tokenizer"] == f"vqgan-published:{standins.VQGAN_DWT_FILE}"
    assert tokens["text_tokenizer"] == f"yttm-published:{standins.BPE_FILE}"
    vq = VQGanConfig.preset("sber-dwt-tiny")
    assert tokens["grid"] == vq.grid_size and tokens["codebook_size"] == vq.codebook_size

    finetune = _metrics(path, "finetune")
    assert finetune["model"] == f"dalle-malevich-tiny-finetuned-from:{standins.DALLE_FILE}"
    assert finetune["freeze"] == "attention-and-mlp" and finetune["frozen_tensors"] == 24 * 8
    assert 0 < finetune["trainable_parameters"] < finetune["parameters"]
    # 8-bit Adam: its moments are stored as uint8 in the resumable checkpoint.
    state = torch.load(path / "data/cache/finetune/last.pt", weights_only=True)
    quantised = [s.get("__bnb_optimizer_quant_state__", s) for s in state["optimizer"]["state"].values()]
    moments = [s for s in quantised if "state1" in s]
    assert any(s["state1"].dtype == torch.uint8 for s in moments)  # small tensors stay 32-bit
    # The one-cycle schedule with the report's three learning rates, step by step.
    with open(path / "data/finetune/plots/train.csv", encoding="utf-8", newline="") as handle:
        logged = [float(row["lr"]) for row in csv.DictReader(handle)]
    recipe = TrainConfig(lr_start=4e-7, lr_max=1e-5, lr_final=2e-8, warmup=0.1, optimizer="adamw")
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], recipe)
    scheduler = build_scheduler(optimizer, recipe, 4)
    expected = []
    for _ in range(4):
        expected.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert logged == pytest.approx(expected, rel=1e-4)
    assert logged[0] == pytest.approx(4e-7) and max(logged) == pytest.approx(1e-5)  # rises, then anneals

    (cell,) = (path / "data/generated").iterdir()
    generated = json.loads((cell / "provenance.json").read_text(encoding="utf-8"))
    assert generated["upscaler"] == "dwt-decoder"
    # The DWT decoder doubles the tokenizer's side (512 px from 256 px at full size).
    kept = sorted((cell / "kept").glob("*.png"))
    assert kept and all(Image.open(p).size == (512, 512) for p in kept)

    segment = _metrics(path, "segment")
    assert (
        segment["variant"] == "unet-published-b5-tiny-finetuned" and segment["encoder"] == "efficientnet-b5"
    )
    stickers = _metrics(path, "stickers")
    assert stickers["all_valid"] and stickers["count"] == len(kept)
    for sticker in (path / "data/stickers/images").glob("*.webp"):
        assert Image.open(sticker).mode == "RGBA"


@pytest.mark.slow
def test_every_stage_with_weights_says_standin(paper_run):
    path, _ = paper_run
    for stage in ("upscale", "tokenize", "finetune", "segment", "stickers"):
        assert _metrics(path, stage)["weights_origin"] == origin.STANDIN, stage
    (cell,) = (path / "data/generated").iterdir()
    assert json.loads((cell / "provenance.json").read_text())["weights_origin"] == origin.STANDIN


@pytest.mark.slow
def test_second_repro_is_a_no_op(paper_run):
    path, _ = paper_run
    assert_repro_is_a_no_op(path)


@pytest.mark.slow
def test_lineage_traces_a_sticker_to_the_standin_checkpoint(paper_run):
    path, _ = paper_run
    sticker = sorted((path / "data/stickers/images").glob("*.webp"))[0]
    result = run(
        ["emojich", "lineage", str(sticker.relative_to(path)), "--json", "--no-items"], cwd=path, check=False
    )
    links = json.loads(result.stdout)["links"]
    (checkpoint,) = [link for link in links if link["kind"] == "checkpoint"]
    assert checkpoint["facts"]["weights_origin"] == origin.STANDIN
    assert checkpoint["facts"]["model"].endswith(standins.DALLE_FILE)
