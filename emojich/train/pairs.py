"""Caption–image pairs for a model that reads a frozen text encoder: every caption a person might
type for an emoji, each with its image's codes and its caption vector.

Built once by the tokenize stage (`pairs.csv` and `pairs.safetensors` beside `codes.safetensors`),
so fine-tuning pays nothing per step for the encoder, morphology or recolouring:

- one image per emoji name (its default rendering, see `limit_per_caption`);
- training emoji get their distinctive CLDR keywords and inflected names (`emojich.text.captions`);
- some training emoji are recoloured (`emojich.data.recolour`) and captioned in agreeing Russian
  colour phrases (`emojich.text.colours`): two colours each, chosen by a seeded hash among the
  hues far from the emoji's own, never an (emoji, colour) of the colour evaluation set;
- validation emoji get their name only: they measure captions the model never trained on.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from emojich.data.recolour import dominant_hue, recolour_batch
from emojich.foundation.layout import sequence_of
from emojich.foundation.storage import atomic_path, write_csv_atomic
from emojich.text.captions import CaptionConfig, caption_counts, choose_keywords, inflections
from emojich.text.colours import COLOURS, Colour, colour_phrases, hue_distance, without_colour_words
from emojich.text.normalise import normalise_caption

SKIN_TONES = ("1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff")  # Fitzpatrick modifiers, as in image ids


def limit_per_caption(ids: Sequence[str], captions: Sequence[str], per_caption: int) -> list[int]:
    """Row indices keeping at most `per_caption` images of each caption (0 keeps all).

    Skin-tone variants share their caption: in the offline catalogue 315 captions have 12 images
    each (6 tones x 2 styles), nearly half of all images, so unweighted training spends half its
    steps on people in five skin tones and draws everything as a brown figure. Kept first: images
    without a tone modifier, then by id, so each style's default rendering is the one kept.
    """
    if per_caption <= 0:
        return list(range(len(ids)))
    by_caption: dict[str, list[int]] = {}
    for row, caption in enumerate(captions):
        by_caption.setdefault(caption, []).append(row)

    def preference(row: int) -> tuple[int, str]:
        return sum(tone in ids[row] for tone in SKIN_TONES), ids[row]

    kept = [row for rows in by_caption.values() for row in sorted(rows, key=preference)[:per_caption]]
    return sorted(kept)


PAIRS_CSV = "pairs.csv"
PAIRS_TENSORS = "pairs.safetensors"
PAIR_COLUMNS = ("split", "id", "caption", "kind", "colour")
# A recoloured emoji must be mostly coloured (not a grey tool or a black silhouette), and the
# asked colour far enough from its own that the recolouring shows.
MIN_COLOURED_SHARE = 0.5
MIN_HUE_DISTANCE = 60.0


@dataclasses.dataclass(frozen=True)
class ColourConfig:
    colours_per_emoji: int = 2
    max_emoji: int = 150  # recoloured emoji at most (the first by a seeded hash)
    held_out: frozenset[tuple[str, str]] = frozenset()  # (emoji sequence, colour name) never trained


@dataclasses.dataclass
class CaptionPairs:
    """Row-aligned: `rows[i]` is (split, image id, caption, kind, colour) of `codes[i]`, `vectors[i]`."""

    rows: list[tuple[str, str, str, str, str]]
    codes: torch.Tensor  # [P, grid * grid] int32
    vectors: torch.Tensor  # [P, 2, dim] float16: the caption's vector and its subject's
    record: dict  # counts for the stage's provenance

    def __len__(self) -> int:
        return len(self.rows)


def _hash_order(seed: int, *parts: str) -> str:
    return hashlib.sha256(":".join([str(seed), *parts]).encode()).hexdigest()


def colour_choices(
    image_id: str, name: str, image: np.ndarray, config: ColourConfig, seed: int
) -> list[Colour]:
    """The colours one training emoji is recoloured in: [] when it is no object or has no hue."""
    sequence = sequence_of(image_id) or ""
    if normalise_caption(name).startswith("флаг") or not colour_phrases(name, COLOURS[0]):
        return []
    hue, share = dominant_hue(image)
    if hue is None or share < MIN_COLOURED_SHARE:
        return []
    candidates = [
        colour
        for colour in COLOURS
        if hue_distance(colour.hue, hue) >= MIN_HUE_DISTANCE
        and (sequence.replace("\ufe0f", ""), colour.name) not in config.held_out
    ]
    candidates.sort(key=lambda colour: _hash_order(seed, image_id, colour.name))
    return candidates[: config.colours_per_emoji]


def build_caption_pairs(
    index: Sequence[dict[str, str]],
    codes: torch.Tensor,
    images: torch.Tensor,
    keywords: dict[str, list[str]],
    encode_images: Callable[[torch.Tensor], torch.Tensor],
    encode_captions: Callable[[list[str]], torch.Tensor],
    captions: CaptionConfig,
    colours: ColourConfig,
    seed: int,
) -> CaptionPairs:
    """All pairs; `keywords` by image id, `images` uint8 [N, 3, H, W] at the image tokenizer's
    resolution (row-aligned with `index` and `codes`), `encode_images` the image tokenizer."""
    ids = [row["id"] for row in index]
    names = [row["caption"] for row in index]
    kept = limit_per_caption(ids, [f"{r['split']}:{r['caption']}" for r in index], 1)
    train = [i for i in kept if index[i]["split"] == "train"]
    choice = choose_keywords(
        {names[i]: keywords.get(ids[i], []) for i in train} if captions.keywords else {},
        captions.max_emoji_per_keyword,
    )
    rows: list[tuple[str, str, str, str, str]] = []
    code_rows: list[torch.Tensor] = []
    for i in kept:
        split = index[i]["split"]
        extra: list[tuple[str, str]] = [(names[i], "name")]
        if split == "train":
            extra += [(word, "keyword") for word in choice.kept.get(names[i], [])]
            if captions.inflections:
                extra += [(form, "inflection") for form in inflections(names[i])]
        for caption, kind in extra:
            rows.append((split, ids[i], caption, kind, ""))
            code_rows.append(codes[i])

    recoloured = _recoloured(train, ids, names, images, colours, seed)
    if recoloured:
        sources = torch.tensor([i for i, _ in recoloured])
        new_codes = encode_images(recolour_batch(images[sources], [c.hue for _, c in recoloured]))
        for (i, colour), image_codes in zip(recoloured, new_codes, strict=True):
            for caption in colour_phrases(names[i], colour):
                rows.append(("train", ids[i], caption, "colour", colour.name))
                code_rows.append(image_codes)
    # The subject of a colour phrase is the phrase without its colour words («кролик» for «синий
    # кролик»): what the model's caption memory looks up (`emojich.models.dalle.CaptionMemory`).
    subjects = [without_colour_words(row[2]) or row[2] if row[3] == "colour" else row[2] for row in rows]
    distinct = sorted({row[2] for row in rows} | set(subjects))
    vectors = encode_captions(distinct)
    position = {caption: k for k, caption in enumerate(distinct)}
    record = {
        "pairs": len(rows),
        "pairs_train": sum(row[0] == "train" for row in rows),
        **caption_counts([row[3] for row in rows]),
        "recoloured_images": len(recoloured),
        "keywords_dropped_shared": choice.dropped_shared,
        "keywords_dropped_other_name": choice.dropped_other_name,
        "max_emoji_per_keyword": captions.max_emoji_per_keyword,
    }
    return CaptionPairs(
        rows,
        torch.stack(code_rows).to(torch.int32) if code_rows else codes[:0].to(torch.int32),
        torch.stack(
            [
                vectors[[position[row[2]] for row in rows]],
                vectors[[position[subject] for subject in subjects]],
            ],
            dim=1,
        ).to(torch.float16),
        record,
    )


def _recoloured(
    train: list[int], ids: list[str], names: list[str], images: torch.Tensor, config: ColourConfig, seed: int
) -> list[tuple[int, Colour]]:
    """(image row, colour) to recolour, at most `config.max_emoji` emoji, in a seeded order."""
    if config.colours_per_emoji <= 0 or config.max_emoji <= 0:
        return []
    order = sorted(train, key=lambda i: _hash_order(seed, ids[i]))
    chosen: list[tuple[int, Colour]] = []
    emoji = 0
    for i in order:
        if emoji >= config.max_emoji:
            break
        picked = colour_choices(ids[i], names[i], images[i].permute(1, 2, 0).numpy(), config, seed)
        if picked:
            emoji += 1
            chosen += [(i, colour) for colour in picked]
    return sorted(chosen, key=lambda pair: (pair[0], pair[1].name))


def write_pairs(pairs: CaptionPairs, folder: Path) -> None:
    write_csv_atomic(folder / PAIRS_CSV, PAIR_COLUMNS, pairs.rows)
    with atomic_path(folder / PAIRS_TENSORS) as tmp:
        save_file({"codes": pairs.codes.contiguous(), "vectors": pairs.vectors.contiguous()}, str(tmp))


def read_pairs(folder: Path) -> tuple[list[dict[str, str]], torch.Tensor, torch.Tensor]:
    """pairs.csv's rows, the codes and the caption vectors [P, 2, dim], row-aligned."""
    with open(folder / PAIRS_CSV, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    tensors = load_file(str(folder / PAIRS_TENSORS))
    if len(rows) != len(tensors["codes"]) or len(rows) != len(tensors["vectors"]):
        raise ValueError(f"{folder}: {PAIRS_CSV} and {PAIRS_TENSORS} disagree on the number of pairs")
    return rows, tensors["codes"], tensors["vectors"].float()


@dataclasses.dataclass
class MemoryTable:
    """What a caption memory holds: `keys` (every distinct training caption but colour phrases,
    [K, dim]), the slot each points to (`key_slots`, one slot per training emoji), each slot's
    drawing (`slot_codes`, the emoji's uncoloured image codes) and each pair's slot (`pair_slots`,
    -1 for pairs of held-out emoji)."""

    keys: torch.Tensor
    key_slots: torch.Tensor
    slot_codes: torch.Tensor
    pair_slots: torch.Tensor

    @property
    def slots(self) -> int:
        return len(self.slot_codes)


def memory_table(rows: Sequence[dict[str, str]], codes: torch.Tensor, vectors: torch.Tensor) -> MemoryTable:
    """The caption memory of the training pairs (`read_pairs`' rows, codes and vectors)."""
    emoji: dict[str, int] = {}
    drawings: list[int] = []  # per slot: a row holding the emoji's uncoloured codes
    keys: dict[str, tuple[int, int]] = {}
    for row_index, row in enumerate(rows):
        if row["split"] != "train" or row["kind"] == "colour":
            continue
        slot = emoji.setdefault(row["id"], len(emoji))
        if slot == len(drawings):
            drawings.append(row_index)
        keys.setdefault(row["caption"], (row_index, slot))
    ordered = sorted(keys.values())
    rows_of_keys = [row for row, _ in ordered]
    pair_slots = [emoji.get(row["id"], -1) if row["split"] == "train" else -1 for row in rows]
    return MemoryTable(
        keys=vectors[rows_of_keys, 0].float(),
        key_slots=torch.tensor([slot for _, slot in ordered], dtype=torch.long),
        slot_codes=codes[drawings].long(),
        pair_slots=torch.tensor(pair_slots, dtype=torch.long),
    )
