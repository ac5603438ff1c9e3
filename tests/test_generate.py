import dataclasses
import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from emojich import cli
from emojich.generate.cell import code_diversity, rank_by_score, sample_cell
from emojich.generate.grid import SamplingCell
from emojich.generate.loading import DWT_DECODER, LANCZOS_FALLBACK, SELF_TRAINED, TARGET_SIZE, load_models
from emojich.generate.prompts import PromptList, check_prompt, parse_prompts, read_prompts, require_prompt
from emojich.generate.records import CODES_FILE, read_codes
from emojich.generate.run import write_cell
from emojich.generate.sheets import contact_sheet
from emojich.models.dalle import Dalle, DalleConfig
from emojich.models.rrdbnet import RRDBNet, RRDBNetConfig
from emojich.models.vqgan import VQGan, VQGanConfig
from emojich.text.bpe import TextTokenizer
from stages import generate as stage

CAPTIONS = ["розовая альпака улыбается", "зима в горах", "ежик в голубой шапке", "кролик синего цвета"]
TEXT_LENGTH = 24


def make_tiny_assets(root: Path, dwt: bool = False) -> dict[str, Path]:
    """A tiny tokenizer, transformer, VQGAN (4 x 4 codes, 8 px) and RRDBNet, saved like the stages do."""
    root.mkdir(parents=True, exist_ok=True)
    tokens = root / "tokens"
    tokens.mkdir(exist_ok=True)
    tokenizer = TextTokenizer.train(CAPTIONS * 3, vocab_size=64)
    tokenizer.save(tokens / "bpe.json")
    torch.manual_seed(0)
    vq_config = dataclasses.replace(VQGanConfig.preset("tiny"), resolution=8, dwt=dwt)
    VQGan(vq_config).save(tokens / "vqgan.safetensors")
    dalle_config = dataclasses.replace(
        DalleConfig.preset("tiny"),
        text_seq_length=TEXT_LENGTH,
        vocab_size=tokenizer.vocab_size + TEXT_LENGTH,
        image_tokens_per_dim=vq_config.grid_size,
        image_vocab_size=vq_config.codebook_size,
        layer_masks=None,
        conv_kernel=None,
    )
    Dalle(dalle_config).save(root / "model.safetensors")
    sr_config = RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4, scale=4, bicubic_skip=True)
    RRDBNet(sr_config).save(root / "rrdbnet.safetensors", {"variant": SELF_TRAINED})
    return {
        "checkpoint": root / "model.safetensors",
        "tokens": tokens,
        "upscaler": root / "rrdbnet.safetensors",
    }


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_assets(tmp_path_factory.mktemp("assets"))


def _models(assets, upscaler="default"):
    path = assets["upscaler"] if upscaler == "default" else upscaler
    return load_models(
        assets["checkpoint"],
        assets["tokens"] / "bpe.json",
        assets["tokens"] / "vqgan.safetensors",
        path,
        torch.device("cpu"),
    )


@pytest.fixture(scope="module")
def models(assets):
    return _models(assets)


def _write(
    models, out, prompts=("зима в горах", "кролик синего цвета"), seed=42, top_k=16, attempts=4, keep=2
):
    cell = SamplingCell(top_k, 0.995, 1.0, seed)
    return write_cell(out, models, PromptList(list(prompts), 0), cell, attempts, keep, progress=False)


# ----- cells and prompts -----


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(top_k=0), "top_k must be an integer >= 1"),
        (dict(top_p=0.0), "top_p must be in \\(0, 1\\]"),
        (dict(top_p=1.5), "top_p must be in \\(0, 1\\]"),
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(temperature=-1.0), "temperature must be > 0"),
        (dict(seed=-1), "seed must be a non-negative integer"),
        (dict(guidance=0.5), "guidance must be >= 1"),
    ],
)
def test_bad_sampling_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingCell(**{**dict(top_k=64, top_p=0.995, temperature=1.0, seed=42), **kwargs})


def test_cell_name_matches_the_dvc_out_path_and_large_top_k_is_clamped():
    cell = SamplingCell(2048, 0.995, 1.0, 42)
    assert cell.name == "k2048-p0.995-t1.0-s42"  # what DVC renders for k${item.top_k}-p${item.top_p}-...
    clamped, note = cell.clamped(512)
    assert clamped.top_k == 512 and "clamped to 512" in note
    assert cell.clamped(4096) == (cell, None)


def test_prompt_files_skip_and_count_empty_lines(tmp_path, caplog):
    parsed = parse_prompts(["# appendix", "зима в горах", "", "   ", "флаг Сбербанка", "", ""])
    assert parsed.prompts == ["зима в горах", "флаг Сбербанка"] and parsed.skipped_empty == 2
    path = tmp_path / "prompts.txt"
    path.write_text("зима в горах\n\nфлаг Сбербанка\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert read_prompts(path).skipped_empty == 1
    assert "skipped 1 empty prompt" in caplog.text
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(path)
    with pytest.raises(ValueError, match="the prompt is empty"):
        require_prompt("   ")


def test_appendix_prompts_are_the_reports_twelve():
    prompts = read_prompts(Path(__file__).resolve().parents[1] / "prompts" / "appendix.txt")
    assert len(prompts.prompts) == 12 and prompts.skipped_empty == 0
    assert prompts.prompts[0] == "зима в горах" and prompts.prompts[-1] == "арфа в форме улитки"


def test_prompt_checks_flag_truncation_latin_and_unknown_tokens(models):
    tokenizer = models.tokenizer
    plain = check_prompt(tokenizer, "зима в горах", TEXT_LENGTH)
    assert not (plain.truncated or plain.latin_only or plain.unknown_tokens) and plain.warnings() == []
    long = check_prompt(tokenizer, " ".join(CAPTIONS), TEXT_LENGTH)
    assert long.truncated and len(long.ids) == TEXT_LENGTH and "truncated" in long.warnings()[0]
    latin = check_prompt(tokenizer, "pink alpaca", TEXT_LENGTH)
    assert latin.latin_only and "trained on Russian" in latin.warnings()[0]
    emoji = check_prompt(tokenizer, "зима 🏔 в горах", TEXT_LENGTH)
    assert emoji.unknown_tokens == 1 and not emoji.latin_only


# ----- ranking and diversity -----


def test_code_diversity_equals_the_mean_over_explicit_pairs():
    codes = torch.randint(0, 5, (7, 16), generator=torch.Generator().manual_seed(0))
    pairs = [(codes[a] != codes[b]).float().mean() for a, b in itertools.combinations(range(7), 2)]
    assert code_diversity(codes) == pytest.approx(float(torch.stack(pairs).mean()))
    assert code_diversity(codes[:1]) == 0.0 and code_diversity(codes[[2, 2, 2]]) == 0.0


def test_ranking_is_by_lowest_score_and_stable_on_ties():
    assert rank_by_score(torch.tensor([0.5, 0.1, 0.5, 0.1])).tolist() == [1, 3, 0, 2]


def test_contact_sheet_has_one_row_per_prompt():
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    sheet = contact_sheet(
        [("зима в горах", [red, red]), ("ёж", [red])], title="k1", thumb=32, pad=4, font_size=10
    )
    line = 10 + 8
    assert sheet.size == (2 * 36 + 4, line + 2 * (32 + 4 + line) + 4)
    assert sheet.getpixel((4 + 36 + 5, line + 4 + 36 + line + 5)) == (255, 255, 255)  # row 2 has one image


# ----- one cell end to end -----


def test_a_cell_writes_ranked_512px_images_sidecars_sheet_and_metrics(models, tmp_path):
    metrics = _write(models, tmp_path, prompts=["зима в горах", " ".join(CAPTIONS), "зима 🏔"])
    kept = sorted((tmp_path / "kept").glob("*.png"))
    assert len(kept) == 3 * 2 and len(list((tmp_path / "kept").glob("*.json"))) == 6
    with Image.open(kept[0]) as image:
        assert image.size == (TARGET_SIZE, TARGET_SIZE)
    records = [json.loads(p.with_suffix(".json").read_text(encoding="utf-8")) for p in kept]
    first = records[0]
    assert first["upscaler"] == SELF_TRAINED and first["top_k"] == 16 and first["seed"] == 42
    assert len(first["codes"]) == 16 and set(first) >= {
        "prompt",
        "image_index",
        "score",
        "png_sha256",
        "checkpoint_sha256",
        "tokenizer_sha256",
        "vqgan_sha256",
        "top_p",
        "temperature",
    }
    for prompt_index in range(3):
        scores = [r["score"] for r in records if r["prompt_index"] == prompt_index]
        assert scores == sorted(scores)  # rank 0 is the best
    assert [r["truncated"] for r in records[::2]] == [False, True, False]
    assert records[4]["unknown_tokens"] == 1
    attempts = (tmp_path / "all" / "attempts.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(attempts) == 3 * 4 and not list((tmp_path / "all").glob("*.png"))  # save_all off
    # Codes live in a compact tensor, not in the JSONL; a kept image's sidecar agrees with it.
    assert "codes" not in json.loads(attempts[0])
    codes = read_codes(tmp_path / "all" / CODES_FILE)
    assert codes.shape == (3, 4, 16)
    assert codes[first["prompt_index"], first["image_index"]].tolist() == first["codes"]
    saved = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert (
        saved["prompts_truncated"] == 1 and saved["unknown_tokens"] == 1 and saved["upscaler"] == SELF_TRAINED
    )
    assert 0.0 < saved["diversity"] <= 1.0 and saved["mean_score_kept"] <= saved["mean_score"]
    assert "images_per_s" not in saved and "images_per_s" in json.loads(
        (tmp_path / "timing.json").read_text()
    )
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.width == 2 * (128 + 4) + 4
    assert any("truncated" in note for note in metrics["notes"])


def test_a_cell_with_a_reference_measures_caption_retrieval_and_records_guidance(models, tmp_path):
    from emojich.fidelity.retrieval import Reference, thumbnails

    generator = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=generator)
    captions = ["зима в горах"] * 2 + ["кот"] * 2 + ["сердце"] * 2
    reference = Reference.build(
        thumbnails(real), captions, ["train", "train", "val", "val", "train", "train"]
    )
    cell = SamplingCell(16, 0.995, 1.0, 42, guidance=2.0)
    prompts = PromptList(["зима в горах", "кот", "ёжик в тумане"], 0)
    metrics = write_cell(tmp_path, models, prompts, cell, 4, 2, progress=False, reference=reference)
    fidelity = metrics["fidelity"]
    assert (fidelity["prompts_train"], fidelity["prompts_held_out"], fidelity["prompts_zero_shot"]) == (
        1,
        1,
        1,
    )
    assert 1 <= fidelity["train_median_rank"] <= 3 and 1 <= fidelity["held_out_median_rank"] <= 3
    assert fidelity["captions"] == 3 and "real_val_top10" in fidelity and "train_top10_kept" in fidelity
    assert json.loads((tmp_path / "metrics.json").read_text())["guidance"] == 2.0
    sidecar = json.loads(next((tmp_path / "kept").glob("*.json")).read_text(encoding="utf-8"))
    assert sidecar["guidance"] == 2.0


def test_a_cells_progress_counts_the_tokens_of_all_its_batches(models):
    reports = []
    cell = SamplingCell(top_k=16, top_p=0.95, temperature=1.0, seed=42)
    sample_cell(
        models, CAPTIONS[:2], cell, 3, batch_size=2, progress=False, on_progress=lambda *r: reports.append(r)
    )
    grid = models.dalle.config.image_seq_length
    assert {total for _, total in reports} == {2 * 3 * grid}  # 2 captions x 3 attempts, in 4 batches
    dones = [done for done, _ in reports]
    assert dones == sorted(dones) and len(set(dones)) == len(dones) and dones[-1] == 2 * 3 * grid


def test_same_seed_gives_identical_files_and_another_seed_other_images(models, tmp_path):
    _write(models, tmp_path / "a")
    _write(models, tmp_path / "b")
    for name in [*(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*")), Path("sheet.png")]:
        if name.name != "timing.json":
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    _write(models, tmp_path / "c", seed=43)
    a = (tmp_path / "a" / "all" / "attempts.jsonl").read_text()
    assert a != (tmp_path / "c" / "all" / "attempts.jsonl").read_text()


def test_top_k_one_is_the_argmax_sequence_whatever_the_seed(models, tmp_path):
    _write(models, tmp_path / "a", top_k=1, seed=1)
    _write(models, tmp_path / "b", top_k=1, seed=2)
    codes = torch.cat([read_codes(tmp_path / folder / "all" / CODES_FILE) for folder in ("a", "b")], dim=1)
    for prompt_index in (0, 1):
        assert len({tuple(row) for row in codes[prompt_index].tolist()}) == 1
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["diversity"] == 0.0


def test_512px_route_is_recorded(assets, tmp_path):
    assert _models(assets, upscaler=None).output_method == LANCZOS_FALLBACK
    placeholder = tmp_path / "placeholder.safetensors"
    RRDBNet(RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4)).save(
        placeholder, {"variant": LANCZOS_FALLBACK}
    )
    assert _models(assets, upscaler=placeholder).output_method == LANCZOS_FALLBACK
    dwt = make_tiny_assets(tmp_path / "dwt", dwt=True)
    models = _models(dwt)
    assert models.output_method == DWT_DECODER and models.upscaler is None
    _write(models, tmp_path / "out", prompts=["зима в горах"], attempts=1, keep=1)
    image = next((tmp_path / "out" / "kept").glob("*.png"))
    assert Image.open(image).size == (TARGET_SIZE, TARGET_SIZE)
    assert json.loads(image.with_suffix(".json").read_text())["upscaler"] == DWT_DECODER


# ----- stage and command line -----


def _params_file(tmp_path, assets, prompts_text="зима в горах\n"):
    (tmp_path / "prompts.txt").write_text(prompts_text, encoding="utf-8")
    section = {
        "prompts": str(tmp_path / "prompts.txt"),
        "attempts": 2,
        "keep_best": 1,
        "checkpoint": str(assets["checkpoint"]),
        "tokens": str(assets["tokens"]),
        "upscaler": str(assets["upscaler"]),
    }
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps({"generate": section}, ensure_ascii=False), encoding="utf-8")  # JSON is YAML
    return path


def _stage(params, *cell):
    top_k, top_p, temperature, seed = cell
    return stage.main(
        [
            *("--top-k", str(top_k), "--top-p", str(top_p), "--temperature", str(temperature)),
            *("--seed", str(seed), "--params", str(params), "--out", str(params.parent / "out")),
            *("--metrics", str(params.parent / "metrics" / "cell.json")),
        ]
    )


def test_stage_runs_a_cell_and_reports_bad_settings_without_a_traceback(assets, tmp_path, caplog):
    params = _params_file(tmp_path, assets, "зима в горах\n\nкролик синего цвета\n")
    assert _stage(params, 2048, 0.995, 1.0, 42) == 0
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["top_k_effective"] == 32 and provenance["prompts_skipped_empty"] == 1
    # The metrics file: a few rounded numbers; no timing anywhere in the cell's folder.
    metrics = json.loads((tmp_path / "metrics" / "cell.json").read_text())
    assert set(metrics) >= {"score", "diversity"} and len(metrics) <= 10
    assert metrics["score"] == round(provenance["mean_score"], 4)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "all",
        "kept",
        "provenance.json",
        "sheet.png",
    ]
    with caplog.at_level(logging.ERROR):
        assert _stage(params, 64, 1.5, 1.0, 42) == 2
        assert _stage(params, 0, 0.9, 1.0, 42) == 2
        assert _stage(params, 64, 0.9, 0.0, 42) == 2
    assert "top_p must be in (0, 1]" in caplog.text and "Traceback" not in caplog.text
    assert "top_k must be an integer >= 1" in caplog.text and "temperature must be > 0" in caplog.text


def _cli(assets, out, *extra):
    return cli.main(
        [
            "generate",
            *extra,
            *("--out", str(out), "--checkpoint", str(assets["checkpoint"])),
            *("--tokens", str(assets["tokens"]), "--upscaler", str(assets["upscaler"])),
        ]
    )


def test_cli_generates_with_the_published_defaults(assets, tmp_path, capsys, caplog):
    assert _cli(assets, tmp_path, "розовая альпака улыбается", "-n", "3", "--batch-size", "2") == 0
    out = capsys.readouterr().out
    assert "clamped to 32" in caplog.text and "3 images" in out  # the clamp is a logged warning
    assert len(list((tmp_path / "kept").glob("*.png"))) == 3 and (tmp_path / "sheet.png").is_file()
    record = json.loads(next((tmp_path / "kept").glob("*.json")).read_text())
    assert record["top_k"] == 2048 and record["top_k_effective"] == 32 and record["seed"] == 42


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["  "], "the prompt is empty"),
        (["ёж", "--top-p", "0"], "top_p must be in (0, 1]"),
        (["ёж", "--top-k", "0"], "top_k must be an integer >= 1"),
        (["ёж", "--temperature", "-1"], "temperature must be > 0"),
        (["ёж", "--guidance", "0"], "guidance must be >= 1"),
    ],
)
def test_cli_bad_input_is_one_clear_error(assets, tmp_path, capsys, args, message):
    assert _cli(assets, tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
