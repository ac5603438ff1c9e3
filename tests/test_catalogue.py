from collections import Counter

import pytest

from emojich.data.catalogue import (
    CatalogueRow,
    catalogue_stats,
    normalise_caption,
    read_catalogue,
    write_catalogue,
)


def _row(row_id: str, caption: str) -> CatalogueRow:
    return CatalogueRow(
        row_id, caption, f"images/{row_id}.png", "pkg==1:U+1F600", "twemoji", "0" * 64, "CC-BY-4.0"
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
