import csv
import dataclasses
import io
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from emojich.foundation.layout import IMAGES_DIR, RGB_KIND, UPSCALED_PREFIX
from emojich.foundation.shards import write_shards
from emojich.models.checkpoints import CheckpointError
from emojich.models.dalle import Dalle, DalleConfig
from emojich.text.bpe import TextTokenizer
from emojich.train.finetune import (
    FLOOR_TEMPERATURES,
    build_pairs,
    caption_loss,
    freeze_for_finetune,
    pair_loss,
    ranking_loss,
)
from emojich.train.loop import TrainConfig, Trainer
from emojich.train.pairs import limit_per_caption
from stages.finetune import EvalParams, FinetuneParams, ModelParams, build_model, finetune
from stages.tokenize import ImageTokenizerParams, TokenizeParams, tokenize

CAPTIONS = ["красный круг", "синий квадрат", "зелёный треугольник", "жёлтая звезда", "белое сердце"]


def test_freezing_is_by_module_type_not_by_name():
    model = Dalle(DalleConfig.preset("tiny"))
    split = freeze_for_finetune(model, "attention-and-mlp")
    # Every attention and feed-forward weight is frozen...
    expected_frozen = {
        f"transformer.layers.{i}.{block}.{leaf}.{kind}"
        for i in range(model.config.num_layers)
        for block, leaves in (
            ("attention", ("query_key_value", "dense")),
            ("mlp", ("dense_h_to_4h", "dense_4h_to_h")),
        )
        for leaf in leaves
        for kind in ("weight", "bias")
    }
    assert set(split["frozen"]) == expected_frozen
    # ...and exactly the embeddings, layer norms and the output head train.
    for name in split["trainable"]:
        assert name.endswith("embeddings.weight") or "layernorm" in name or name.startswith("to_logits."), (
            name
        )
    assert (
        "to_logits.1.weight" in split["trainable"]
        and "transformer.final_layernorm.weight" in split["trainable"]
    )
    # The published notebooks' substring test would have frozen nothing at all.
    assert not [name for name in split["frozen"] if "attn" in name]


def test_freeze_none_trains_everything_and_unknown_mode_fails():
    model = Dalle(DalleConfig.preset("tiny"))
    assert not freeze_for_finetune(model, "none")["frozen"]
    with pytest.raises(ValueError, match="freeze must be one of"):
        freeze_for_finetune(model, "attn")


def _tokenizer():
    return TextTokenizer.train(CAPTIONS * 3, vocab_size=64)


def test_long_captions_are_truncated_and_counted_bad_codes_are_errors():
    tokenizer = _tokenizer()
    codes = torch.zeros(2, 16, dtype=torch.long)
    short, long = "круг", "красный круг синий квадрат зелёный треугольник"
    length = len(tokenizer.tokenize(short)) + 2
    assert len(tokenizer.tokenize(long)) + 2 > length
    pairs = build_pairs([short, long], codes, tokenizer, length, 32)
    assert pairs.truncated == 1 and pairs.text.shape == (2, length)
    assert pairs.text[0, -1] == 3 and pairs.text[1, -1] != 3  # the cut caption lost its eos
    with pytest.raises(ValueError, match="outside \\[0, 32\\)"):
        build_pairs(["красный круг"], torch.full((1, 16), 40), tokenizer, 8, 32)


def _tiny_model_and_pairs(tokenizer):
    cfg = dataclasses.replace(
        DalleConfig.preset("tiny"), vocab_size=tokenizer.vocab_size + 8, layer_masks=None
    )
    torch.manual_seed(0)
    model = Dalle(cfg)
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, cfg.image_vocab_size, (10, cfg.image_seq_length), generator=generator)
    pairs = build_pairs(
        [CAPTIONS[i % 5] for i in range(10)], codes, tokenizer, cfg.text_seq_length, cfg.image_vocab_size
    )
    return model, pairs


def test_interrupted_and_resumed_training_equals_uninterrupted(tmp_path):
    tokenizer = _tokenizer()
    config = TrainConfig(
        epochs=2, batch_size=3, lr_start=1e-4, lr_max=1e-3, lr_final=1e-5, checkpoint_every=2
    )

    def trainer():
        model, pairs = _tiny_model_and_pairs(tokenizer)
        freeze_for_finetune(model, "attention-and-mlp")
        return Trainer(model, pair_loss(pairs, torch.device("cpu")), len(pairs), config, torch.device("cpu"))

    whole = trainer()
    whole.run()
    killed = trainer()
    killed.run(tmp_path, stop_after=3)
    resumed = trainer()
    assert resumed.resume(tmp_path)
    resumed.run(tmp_path)
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    # Frozen weights really did not move.
    fresh, _ = _tiny_model_and_pairs(tokenizer)
    qkv = "transformer.layers.0.attention.query_key_value.weight"
    assert torch.equal(whole.model.state_dict()[qkv], fresh.state_dict()[qkv])


def test_caption_loss_is_a_cross_entropy_over_candidates():
    model, pairs = _tiny_model_and_pairs(_tokenizer())
    scored = caption_loss(model, pairs, candidates=4, device=torch.device("cpu"))
    assert 0 < scored["loss"] < 20
    assert 0.0 <= scored["top1"] <= 1.0
    assert 0 < scored["floor"] <= min(scored["loss"], math.log(4)) + 1e-9


def test_caption_loss_floor_is_the_best_temperature_on_the_scores():
    """Over-confident but well-ranked scores have a high loss and a low floor; scores that rank
    nothing have a floor at chance however confident they are."""
    # Three images rank their own caption first by 40 nats, one second by 50 nats: the loss pays
    # all 50 on that one, a higher temperature does not.
    good = torch.tensor([[0.0, -40.0, -40.0, -40.0]] * 3 + [[-50.0, 0.0, -60.0, -60.0]], dtype=torch.float64)
    assert ranking_loss(good) == pytest.approx(12.5, abs=1e-6)
    floor = min(ranking_loss(good / t) for t in FLOOR_TEMPERATURES)
    assert floor < 0.7 * math.log(4)
    flat = torch.tensor([[0.0, 30.0, -30.0, 0.0], [0.0, -30.0, 30.0, 0.0]], dtype=torch.float64)
    assert min(ranking_loss(flat / t) for t in FLOOR_TEMPERATURES) > 0.95 * math.log(4)


def test_spread_takes_one_pair_per_caption_evenly():
    """Rows come grouped by caption (skin tones, styles): scoring the first rows would score one
    caption many times."""
    tokenizer = _tokenizer()
    captions = [c for c in ("кот", "собака", "сердце", "флаг", "огонь") for _ in range(4)]
    pairs = build_pairs(captions, torch.zeros(len(captions), 16, dtype=torch.long), tokenizer, 8, 32)
    assert pairs.head(4).captions == ["кот"] * 4
    assert pairs.spread(10).captions == ["кот", "собака", "сердце", "флаг", "огонь"]
    assert pairs.spread(2).captions == ["кот", "сердце"]


def _upscaled_folder(root, count=30, size=32):
    rng = np.random.default_rng(0)
    rows, items = [], []
    for i in range(count):
        pixels = np.full((size, size, 3), 255, np.uint8)
        colour = rng.integers(0, 255, 3)
        top, left = rng.integers(0, size // 2, 2)
        pixels[top : top + size // 2, left : left + size // 2] = colour
        png = io.BytesIO()
        Image.fromarray(pixels).save(png, format="PNG")
        items.append((f"e{i:03d}", {RGB_KIND: png.getvalue()}))
        rows.append(
            {
                "id": f"e{i:03d}",
                "caption": CAPTIONS[i % 5] + ("" if i < 20 else " вариант"),
                "split": "train" if i < 24 else "val",
                "style": "test",
                "sha256": "",
                "source_sha256": "",
            }
        )
    write_shards(root / IMAGES_DIR, UPSCALED_PREFIX, items, max_items=8)  # several shards
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_tokenize_and_finetune_stages_end_to_end(tmp_path, monkeypatch):
    upscaled = _upscaled_folder(tmp_path / "upscaled")
    tokens = tmp_path / "tokens"
    tok_metrics = tokenize(
        TokenizeParams(image=ImageTokenizerParams(preset="tiny", train_steps=20, batch_size=8)),
        upscaled,
        tokens,
    )
    assert tok_metrics["images"] == 30 and tok_metrics["image_tokenizer"] == "gumbel-vq-selftrained:tiny"
    assert 0 < tok_metrics["codebook_used_fraction"] <= 1
    assert (tokens / "reconstructions.png").is_file()

    params = FinetuneParams(
        model=ModelParams(preset="tiny"),
        train=TrainConfig(
            epochs=1,
            batch_size=4,
            max_steps=6,
            optimizer="adamw",
            lr_start=1e-4,
            lr_max=1e-3,
            lr_final=1e-5,
            checkpoint_every=3,
        ),
        eval=EvalParams(
            every=3, prompts=["красный круг", "Эйнштейн улыбается"], images_per_prompt=2, top_k=8
        ),
    )
    out = tmp_path / "finetune"
    metrics = finetune(params, tokens, out)
    assert metrics["steps"] == 6 and metrics["model"] == "dalle-tiny-from-scratch"
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "step_000000.png",
        "step_000003.png",
        "step_000006.png",
    ]
    with open(out / "plots" / "train.csv", encoding="utf-8") as handle:
        assert [row["step"] for row in csv.DictReader(handle)] == ["1", "2", "3", "4", "5", "6"]
    first = (out / "model.safetensors").read_bytes()
    # Resume state lives beside the outputs, never among them (DVC's run-cache needs that).
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.json",
        "model.safetensors",
        "plots",
        "provenance.json",
        "samples",
    ]
    assert (tmp_path / "cache" / "finetune" / "last.pt").is_file()
    compact = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert compact["steps"] == 6 and compact["val_loss"] == round(metrics["val_loss"], 4)
    assert "checkpoint_sha256" not in compact and "model" not in compact
    published = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    # Same inputs and params again: resumes at the end, trains nothing more, same weights.
    shutil.rmtree(out)  # as DVC removes a stage's outputs before running it
    again = finetune(params, tokens, out)
    assert (out / "model.safetensors").read_bytes() == first
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == published
    assert again["checkpoint_sha256"] == metrics["checkpoint_sha256"]

    # Other training code: the finished checkpoint is not resumed; training starts over.
    import stages.finetune as stage

    monkeypatch.setattr(stage, "TRAINING_CODE", (*stage.TRAINING_CODE, stage))
    seen = []
    monkeypatch.setattr(stage.Trainer, "resume", lambda self, folder: seen.append(folder) or False)
    finetune(params, tokens, out)
    assert seen == []  # the key changed, so resuming was not even attempted

    # A checkpoint of another config is a clear error.
    other = Dalle(DalleConfig.preset("tiny"))
    other.save(tmp_path / "other.safetensors")
    tokenizer = TextTokenizer.load(tokens / "bpe.json")
    from emojich.models.vqgan import VQGan

    vqgan = VQGan.load(tokens / "vqgan.safetensors")
    with pytest.raises((CheckpointError, ValueError)):
        build_model(ModelParams(preset="tiny", weights=str(tmp_path / "other.safetensors")), tokenizer, vqgan)


def test_empty_training_split_is_a_clear_error(tmp_path):
    upscaled = _upscaled_folder(tmp_path / "upscaled", count=30)
    tokens = tmp_path / "tokens"
    tokenize(
        TokenizeParams(image=ImageTokenizerParams(preset="tiny", train_steps=2, batch_size=4)),
        upscaled,
        tokens,
    )
    rows = (tokens / "index.csv").read_text(encoding="utf-8").replace(",train,", ",val,")
    (tokens / "index.csv").write_text(rows, encoding="utf-8")
    with pytest.raises(ValueError, match="training split is empty"):
        finetune(FinetuneParams(model=ModelParams(preset="tiny")), tokens, tmp_path / "ft")


def test_caption_loss_prefers_the_caption_the_image_was_drawn_for():
    """A model whose image distribution depends on the caption scores its own caption best."""
    tokenizer = _tokenizer()
    model, pairs = _tiny_model_and_pairs(tokenizer)
    # Make every image a constant code that differs per caption, then teach the model that mapping.
    code_of = {caption: i for i, caption in enumerate(sorted(set(pairs.captions)))}
    pairs.codes = torch.tensor([[code_of[c]] * pairs.codes.shape[1] for c in pairs.captions])
    config = TrainConfig(
        epochs=100, batch_size=5, optimizer="adamw", lr_start=1e-3, lr_max=1e-2, lr_final=1e-4
    )
    untrained = caption_loss(model, pairs, candidates=4, device=torch.device("cpu"))
    Trainer(model, pair_loss(pairs, torch.device("cpu")), len(pairs), config, torch.device("cpu")).run()
    trained = caption_loss(model, pairs, candidates=4, device=torch.device("cpu"))
    assert abs(untrained["loss"] - math.log(4)) < 0.3  # an untrained model is at chance
    assert trained["loss"] < 0.6 * math.log(4) and trained["loss"] < untrained["loss"] - 0.4
    assert trained["top1"] > untrained["top1"] and trained["top1"] >= 0.75


def test_caption_dropout_trains_a_share_of_pairs_without_their_caption():
    tokenizer = _tokenizer()
    captions = ["круг", "квадрат"] * 200
    pairs = build_pairs(captions, torch.zeros(len(captions), 16, dtype=torch.long), tokenizer, 8, 32)
    seen = []

    def model(text, codes, return_loss, condition=None):
        seen.append(text)
        return torch.zeros(()), {}

    indices = torch.arange(len(pairs))
    pair_loss(pairs, torch.device("cpu"))(model, indices)
    assert (seen[-1] != 0).any(dim=1).all()  # no dropout: every caption kept
    torch.manual_seed(0)
    pair_loss(pairs, torch.device("cpu"), caption_dropout=0.25)(model, indices)
    empty = ~(seen[-1] != 0).any(dim=1)
    assert 0.15 < empty.float().mean() < 0.35
    assert torch.equal(seen[-1][~empty], pairs.text[~empty])  # the others are untouched
    torch.manual_seed(0)  # the Trainer's checkpoints carry this generator: a resumed run drops the same
    pair_loss(pairs, torch.device("cpu"), caption_dropout=0.25)(model, indices)
    assert torch.equal(seen[-1], seen[-2])
    with pytest.raises(ValueError, match="caption_dropout"):
        pair_loss(pairs, torch.device("cpu"), caption_dropout=1.0)


def test_limit_per_caption_keeps_each_styles_default_rendering():
    ids = [
        "openmoji-1f44b",
        "openmoji-1f44b-1f3fb",
        "twemoji-1f44b-1f3ff",
        "twemoji-1f44b",
        "openmoji-1f468-1f3fb-200d-1f373",  # sorts before its untoned twin
        "openmoji-1f468-200d-1f373",
        "twemoji-2764",
    ]
    captions = ["машущая рука"] * 4 + ["мужчина повар"] * 2 + ["сердце"]
    assert limit_per_caption(ids, captions, 0) == list(range(7))
    assert limit_per_caption(ids, captions, 2) == [0, 3, 4, 5, 6]
    assert limit_per_caption(ids, captions, 1) == [0, 5, 6]
