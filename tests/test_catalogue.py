import dataclasses
from collections import Counter

import pytest

from emojich.data.catalogue import (
    CatalogueRow,
    catalogue_stats,
    normalise_caption,
    read_catalogue,
    write_catalogue,
    write_raw_images,
)
from emojich.foundation.shards import ShardError, iter_shards
from emojich.foundation.storage import sha256_bytes


def _row(row_id: str, caption: str) -> CatalogueRow:
    return CatalogueRow(
        row_id,
        caption,
        f"images/raw-00000.tar:{row_id}.png",
        "pkg==1:U+1F600",
        "twemoji",
        "0" * 64,
        "CC-BY-4.0",
    )


def test_normalise_caption_nfc_and_whitespace():
    decomposed = "е\u0308жик  в\tшапке "  # «ё» as e + combining diaeresis
    assert normalise_caption(decomposed) == "ёжик в шапке"


def test_catalogue_round_trip_is_sorted_and_byte_stable(tmp_path):
    rows = [_row("b", "замок"), _row("a", 'ёжик, "колючий"')]
    path = write_catalogue(rows, tmp_path)
    first = path.read_bytes()
    assert read_catalogue(path) == sorted(rows)
    write_catalogue(list(reversed(rows)), tmp_path)
    assert path.read_bytes() == first


def test_duplicate_ids_are_an_error(tmp_path):
    with pytest.raises(ValueError, match="duplicate catalogue ids: a"):
        write_catalogue([_row("a", "x"), _row("a", "y")], tmp_path)


def test_stats_count_distinct_captions():
    stats = catalogue_stats([_row("a", "замок"), _row("b", "замок")], Counter(http_404=2))
    assert stats["images"] == 2 and stats["captions"] == 1 and stats["skipped_total"] == 2


def test_raw_images_become_shard_members_named_in_the_rows(tmp_path):
    pngs = {"a": b"\x89PNG a", "b": b"\x89PNG b"}
    unfilled = [dataclasses.replace(_row(key, "кот"), image_path="", sha256="") for key in pngs]
    rows, shards = write_raw_images(tmp_path, zip(unfilled, pngs.values(), strict=True))
    assert shards == [tmp_path / "images" / "raw-00000.tar"]
    assert rows == [
        dataclasses.replace(row, sha256=sha256_bytes(pngs[row.id]))
        for row in [_row("a", "кот"), _row("b", "кот")]
    ]
    assert list(iter_shards(tmp_path / "images")) == [(key, {"png": data}) for key, data in pngs.items()]
    first = shards[0].read_bytes()
    write_raw_images(tmp_path, zip(unfilled, pngs.values(), strict=True))
    assert shards[0].read_bytes() == first


@pytest.mark.parametrize("ids", [["b", "a"], ["a", "a"]])
def test_raw_images_out_of_order_or_repeated_change_nothing(tmp_path, ids):
    write_raw_images(tmp_path, [(_row("a", "кот"), b"a"), (_row("b", "кот"), b"b")])
    before = {path.name: path.read_bytes() for path in (tmp_path / "images").iterdir()}
    with pytest.raises(ShardError, match="strictly increasing"):
        write_raw_images(tmp_path, [(_row(row_id, "кот"), b"new") for row_id in ids])
    assert {path.name: path.read_bytes() for path in (tmp_path / "images").iterdir()} == before
