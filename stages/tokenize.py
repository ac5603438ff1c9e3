"""Stage `tokenize`: the image and text tokenizers, and every image encoded to codes once.

Demo profile: a small VQGAN (EMA quantizer) and a BPE are trained here on the upscaled emoji set.
Paper profile: the published Sber VQGAN and `bpe.model` are loaded from local paths.
Fine-tuning then reads `codes.safetensors` and never re-encodes an image per epoch.
`thumbnails.safetensors` holds every image's 16 x 16 thumbnail, row-aligned with `index.csv`:
the reference set of the fidelity measure (`emojich.fidelity.retrieval`) in `generate`.

With a text encoder (`text.encoder`, the demo), `pairs.csv` and `pairs.safetensors` hold every
training caption (names, distinctive CLDR keywords, inflections, colour phrases on recoloured
images) with its image codes and caption vector (`emojich.train.pairs`).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from emojich.data.russian import cldr_key, load_cldr_keywords
from emojich.fidelity.colour import block_delta_e
from emojich.fidelity.retrieval import THUMBNAILS_FILE, thumbnails
from emojich.foundation.imageset import image_grid, load_images, save_png
from emojich.foundation.layout import IMAGES_DIR, RGB_KIND, sequence_of
from emojich.foundation.logs import setup_logging
from emojich.foundation.params import from_dict, load_section
from emojich.foundation.records import METRICS_DIR, PROVENANCE_FILE, pick, write_records
from emojich.foundation.shards import ShardReader
from emojich.foundation.storage import atomic_path, sha256_file, write_csv_atomic
from emojich.models.origin import ORIGIN_KEY, combine, file_origin
from emojich.models.vqgan import (
    VQGan,
    VQGanConfig,
    codebook_usage,
    encode_batched,
    psnr,
    reconstruct,
    train_vqgan,
)
from emojich.text.bpe import TextTokenizer
from emojich.text.captions import CaptionConfig
from emojich.text.encoder import encoder_provenance, load_encoder
from emojich.text.prompt_sets import read_prompt_set
from emojich.train.pairs import CaptionPairs, ColourConfig, build_caption_pairs, write_pairs

UPSCALED = Path("data/upscaled")
OUT = Path("data/tokens")
INDEX_COLUMNS = ("id", "split", "caption")

log = logging.getLogger("stages.tokenize")


@dataclasses.dataclass
class ImageTokenizerParams:
    preset: str = "demo"  # demo / tiny: trained here; sber / sber-dwt: published weights
    weights: str | None = None  # path to vqgan.gumbelf8-sber.model.ckpt (paper profile)
    train_steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3


@dataclasses.dataclass
class TextTokenizerParams:
    bpe_model: str | None = None  # path to the published bpe.model (paper profile)
    vocab_size: int = 1024
    # A frozen pretrained text encoder whose caption vectors the model reads (demo: use-m3);
    # None: BPE captions only, as published (paper profile).
    encoder: str | None = None


@dataclasses.dataclass
class CaptionParams:
    """Training captions for an encoder-conditioned model (`emojich.text.captions`)."""

    keywords: bool = True
    max_emoji_per_keyword: int = 2
    inflections: bool = True
    colours_per_emoji: int = 2
    max_colour_emoji: int = 1000
    # A colour evaluation set (prompts/colours.tsv): its (emoji, colour) pairs are never trained.
    held_out_colours: str | None = None


@dataclasses.dataclass
class TokenizeParams:
    image: ImageTokenizerParams = dataclasses.field(default_factory=ImageTokenizerParams)
    text: TextTokenizerParams = dataclasses.field(default_factory=TextTokenizerParams)
    captions: CaptionParams = dataclasses.field(default_factory=CaptionParams)
    grid_images: int = 16
    seed: int = 42


def read_manifest(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{folder / 'manifest.csv'} lists no images: nothing to tokenize")
    return rows


def image_tokenizer(params: ImageTokenizerParams, images: torch.Tensor, train_ids: torch.Tensor, seed: int):
    """The VQGAN and how it came to be: (model, variant, training metrics)."""
    if params.weights:
        model = VQGan.load_published(params.weights, VQGanConfig.preset(params.preset))
        return model, f"vqgan-published:{Path(params.weights).name}", {}
    torch.manual_seed(seed)
    model = VQGan(VQGanConfig.preset(params.preset))
    metrics = train_vqgan(
        model,
        images[train_ids],
        steps=params.train_steps,
        batch_size=params.batch_size,
        lr=params.lr,
        seed=seed,
    )
    return model, f"{model.config.quantizer}-vq-selftrained:{params.preset}", metrics


def text_tokenizer(params: TextTokenizerParams, captions: list[str]) -> tuple[TextTokenizer, str]:
    if params.bpe_model:
        return TextTokenizer.from_yttm(params.bpe_model), f"yttm-published:{Path(params.bpe_model).name}"
    return TextTokenizer.train(captions, vocab_size=params.vocab_size), "bpe-selftrained"


def tokenize(
    params: TokenizeParams, upscaled: Path = UPSCALED, out: Path = OUT, metrics: Path | None = None
) -> dict:
    """Run the whole stage; returns its provenance record. Metrics go to `metrics` (default
    `out/metrics.json`), the record to `out/provenance.json`."""
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    rows = read_manifest(upscaled)
    rows.sort(key=lambda row: row["id"])
    train_ids = torch.tensor([i for i, row in enumerate(rows) if row["split"] == "train"])
    val_ids = torch.tensor([i for i, row in enumerate(rows) if row["split"] != "train"])
    if len(train_ids) == 0:
        raise ValueError("no training images in the upscaled manifest")

    resolution = VQGanConfig.preset(params.image.preset).resolution
    started = time.perf_counter()
    with ShardReader(upscaled / IMAGES_DIR) as shards:
        images = load_images([shards.read(row["id"], RGB_KIND) for row in rows], resolution)
    log.info("loaded %d images at %d px in %.1f s", len(images), resolution, time.perf_counter() - started)

    model, variant, train_metrics = image_tokenizer(params.image, images, train_ids, params.seed)
    model.eval()
    codes = encode_batched(model, images.float() / 255.0)
    held_out = images[val_ids] if len(val_ids) else images[train_ids[: params.grid_images]]
    recon = reconstruct(model, held_out)
    fidelity = {"psnr": psnr(held_out, recon), "delta_e": block_delta_e(held_out, recon)}

    bpe, text_variant = text_tokenizer(
        params.text, sorted({row["caption"] for row in rows if row["split"] == "train"})
    )

    out.mkdir(parents=True, exist_ok=True)
    origin = combine([file_origin(params.image.weights), file_origin(params.text.bpe_model)])
    model.save(out / "vqgan.safetensors", {ORIGIN_KEY: origin})
    bpe.save(out / "bpe.json")
    with atomic_path(out / "codes.safetensors") as tmp:
        save_file({"codes": codes.to(torch.int32).contiguous()}, str(tmp))
    with atomic_path(out / THUMBNAILS_FILE) as tmp:
        save_file({"thumbnails": thumbnails(images).contiguous()}, str(tmp))
    write_index(rows, out / "index.csv")
    pair_record = {}
    if params.text.encoder:
        pairs = caption_pairs(params, rows, codes, images, model)
        pair_record = {**pairs.record, **encoder_provenance()}
    else:  # the published BPE path trains on index.csv; the outputs exist, empty
        pairs = CaptionPairs([], codes[:0].to(torch.int32), torch.zeros(0, 2, 0, dtype=torch.float16), {})
    write_pairs(pairs, out)

    count = params.grid_images
    # original, reconstruction, original, ...
    pairs = torch.stack([held_out[:count], recon[:count]], dim=1).flatten(0, 1)
    save_png(image_grid(pairs, columns=8), out / "reconstructions.png")

    usage = codebook_usage(codes, model.config.codebook_size)
    record = {
        "image_tokenizer": variant,
        "text_tokenizer": text_variant,
        ORIGIN_KEY: origin,
        "images": len(rows),
        "train_images": len(train_ids),
        "val_images": len(val_ids),
        "grid": model.config.grid_size,
        "codebook_size": model.config.codebook_size,
        "val_psnr_db": round(fidelity["psnr"], 3),
        "val_delta_e": round(fidelity["delta_e"], 3),
        "codebook_used_fraction": round(usage["used_fraction"], 4),
        "codebook_perplexity": round(usage["perplexity"], 2),
        "text_vocab_size": bpe.vocab_size,
        "vqgan_sha256": sha256_file(out / "vqgan.safetensors"),
        "bpe_sha256": sha256_file(out / "bpe.json"),
        **pair_record,
    }
    if train_metrics:
        record["train_steps"] = int(train_metrics["steps"])
        record["train_loss_first"] = round(train_metrics["loss_first"], 5)
        record["train_loss_last"] = round(train_metrics["loss_last"], 5)
    write_records(metrics or out / "metrics.json", summary(record), out / PROVENANCE_FILE, record)
    return record


def caption_pairs(
    params: TokenizeParams,
    rows: list[dict[str, str]],
    codes: torch.Tensor,
    images: torch.Tensor,
    model: VQGan,
) -> CaptionPairs:
    """Every training caption with its codes and caption vector (`emojich.train.pairs`)."""
    started = time.perf_counter()
    cldr = load_cldr_keywords()
    keywords = {}
    for row in rows:
        sequence = sequence_of(row["id"])
        if sequence is not None:
            keywords[row["id"]] = cldr.get(cldr_key(sequence), [])
    held_out = frozenset()
    if params.captions.held_out_colours:
        held_out = frozenset(
            (sequence, prompt.colour)
            for prompt in read_prompt_set(params.captions.held_out_colours).prompts
            for sequence in prompt.emoji
            if prompt.colour
        )
    encoder = load_encoder(params.text.encoder)
    pairs = build_caption_pairs(
        rows,
        codes,
        images,
        keywords,
        encode_images=lambda batch: encode_batched(model, batch.float() / 255.0),
        encode_captions=encoder.encode,
        captions=CaptionConfig(
            params.captions.keywords, params.captions.max_emoji_per_keyword, params.captions.inflections
        ),
        colours=ColourConfig(params.captions.colours_per_emoji, params.captions.max_colour_emoji, held_out),
        seed=params.seed,
    )
    log.info(
        "%d caption pairs (%s) in %.1f s",
        len(pairs),
        ", ".join(
            f"{k.removeprefix('captions_')} {v}" for k, v in pairs.record.items() if k.startswith("captions_")
        ),
        time.perf_counter() - started,
    )
    return pairs


def summary(record: dict) -> dict:
    """The numbers a person compares between runs (the rest stays in the provenance)."""
    return pick(
        record,
        (
            "val_psnr_db",
            "val_delta_e",
            "codebook_used_fraction",
            "codebook_perplexity",
        ),
    )


def write_index(rows: list[dict[str, str]], dest: Path) -> None:
    """Row i of `codes.safetensors` belongs to line i of this table."""
    write_csv_atomic(dest, INDEX_COLUMNS, ([row[key] for key in INDEX_COLUMNS] for row in rows))


def main() -> None:
    setup_logging()
    params = from_dict(TokenizeParams, load_section("tokenize"), "tokenize")
    metrics = tokenize(params, metrics=METRICS_DIR / "tokenize.json")
    log.info("%s", metrics)


if __name__ == "__main__":
    main()
