"""The paper profile is a complete, valid params file: switching is `cp profiles/paper.yaml params.yaml`."""

import importlib

import pytest
import yaml

from emojich.foundation.params import from_dict
from tests.pipeline import ROOT

STAGE_PARAMS = {
    "scrape": ("stages.scrape", "ScrapeParams"),
    "prepare": ("stages.prepare", "PrepareParams"),
    "upscale": ("stages.upscale", "UpscaleParams"),
    "tokenize": ("stages.tokenize", "TokenizeParams"),
    "finetune": ("stages.finetune", "FinetuneParams"),
    "generate": ("stages.generate", "GenerateParams"),
    "segment": ("stages.segment", "SegmentParams"),
    "stickers": ("stages.stickers", "StickersParams"),
}


def _keys(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix}
    keys = set()
    for key, value in tree.items():
        keys |= _keys(value, f"{prefix}.{key}" if prefix else key)
    return keys


def _load(name):
    return yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))


def test_paper_profile_has_exactly_the_demo_keys():
    demo, paper = _load("params.yaml"), _load("profiles/paper.yaml")
    assert _keys(paper) == _keys(demo)
    assert demo["profile"] == "demo" and paper["profile"] == "paper"


@pytest.mark.parametrize("profile", ["params.yaml", "profiles/paper.yaml"])
@pytest.mark.parametrize("section", sorted(STAGE_PARAMS))
def test_every_section_parses_into_its_stage_params(profile, section):
    module, name = STAGE_PARAMS[section]
    params_class = getattr(importlib.import_module(module), name)
    from_dict(params_class, _load(profile)[section], section)


def test_paper_profile_is_the_reports_recipe():
    paper = _load("profiles/paper.yaml")
    train = paper["finetune"]["train"]
    assert paper["finetune"]["freeze"] == "attention-and-mlp"
    assert paper["finetune"]["model"]["loss_img_weight"] == 1000
    assert (train["lr_start"], train["lr_max"], train["lr_final"], train["warmup"]) == (4e-7, 1e-5, 2e-8, 0.1)
    assert (train["epochs"], train["batch_size"], train["grad_clip"]) == (40, 2, 1.0)
    assert (train["optimizer"], train["precision"]) == ("adam8bit", "fp16")
    assert paper["prepare"]["alpha_threshold"] == 128
    assert paper["segment"]["pseudolabel"]["threshold"] == 0.99
    grid = paper["generate"]["grid"]
    assert (grid["top_k"], grid["top_p"], grid["temperature"], grid["seed"]) == ([2048], [0.995], [1.0], [42])


@pytest.mark.parametrize("profile", ["params.yaml", "profiles/paper.yaml"])
def test_scrape_sources_parse(profile):
    from emojich.data.crawler import WebConfig
    from emojich.data.offline import OfflineConfig

    scrape = _load(profile)["scrape"]
    from_dict(OfflineConfig, scrape["offline"], "scrape.offline")
    from_dict(WebConfig, scrape["web"], "scrape.web")
