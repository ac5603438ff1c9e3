"""Russian caption repair and CLDR name loading."""

from __future__ import annotations

import json
import re
from pathlib import Path

import emoji
import pytest

from emojich.data.catalogue import SourceUnavailable
from emojich.data.russian import (
    CLDR_PINS,
    caption_from_emoji_name,
    cldr_key,
    cldr_packages,
    load_cldr_names,
    repair_short_i,
    strip_skin_tone,
)

# Broken forms taken from the `emoji` package's Russian names, with CLDR's spelling.
REPAIRED = [
    ("темныи", "темный"),  # -ый
    ("светлыи", "светлый"),
    ("среднии", "средний"),  # soft-stem adjective
    ("медицинскии", "медицинский"),  # consonant + к
    ("маленькии", "маленький"),  # ь + к
    ("следующии", "следующий"),  # щ
    ("рукои", "рукой"),  # instrumental -ой
    ("мужскои", "мужской"),
    ("нахмурившиися", "нахмурившийся"),  # reflexive participle
    ("джоистик", "джойстик"),  # word-internal, known word
    ("полицеискии", "полицейский"),
    ("поцелуи", "поцелуй"),
]

# Correct words a careless rule would break.
KEPT = [
    "Японии",  # genitive of a noun in -ия
    "ожидании",
    "территории",
    "информации",
    "Словакии",  # vowel + к + ии: genitive, not an adjective
    "Гаити",  # internal vowel + и
    "Таиланд",
    "строитель",
    "воинское",
    "мои",  # possessive
    "обои",
    "светлый",  # already correct
    "темный",
]


@pytest.mark.parametrize(("broken", "fixed"), REPAIRED)
def test_repairs_short_i(broken: str, fixed: str) -> None:
    assert repair_short_i(broken) == fixed


@pytest.mark.parametrize("word", KEPT)
def test_leaves_correct_words_alone(word: str) -> None:
    assert repair_short_i(word) == word


def test_repair_keeps_case_and_punctuation() -> None:
    assert repair_short_i("Темныи, очень темныи!") == "Темный, очень темный!"


def test_repair_is_idempotent_on_the_package_names() -> None:
    emoji.config.load_language("ru")
    for data in emoji.EMOJI_DATA.values():
        once = repair_short_i(data["ru"])
        assert repair_short_i(once) == once


def test_caption_from_emoji_name() -> None:
    name = ":поднятая_ладонь_очень_светлыи_тон_кожи:"
    assert caption_from_emoji_name(name) == "поднятая ладонь очень светлый тон кожи"


@pytest.mark.parametrize(
    ("caption", "base"),
    [
        ("поднятая рука: очень светлый тон кожи", "поднятая рука"),
        ("поднятая ладонь очень светлый тон кожи", "поднятая ладонь"),
        ("поцелуй: взрослый, взрослый, темный тон кожи, средний тон кожи", "поцелуй: взрослый, взрослый"),
        ("светлячок", "светлячок"),
    ],
)
def test_strip_skin_tone(caption: str, base: str) -> None:
    assert strip_skin_tone(caption) == base


def _fake_cldr(npm_dir: Path, tables: dict[str, dict[str, dict]], marker: str = "") -> Path:
    """A pin file and `make setup`'s layout of it, with the given annotations per package."""
    packages = []
    for index, (name, table) in enumerate(tables.items()):
        kind = "annotationsDerived" if "derived" in name else "annotations"
        file = f"{kind}/ru/annotations.json"
        integrity = f"sha512-pinned{index}"
        (npm_dir / name / file).parent.mkdir(parents=True)
        (npm_dir / name / file).write_text(
            json.dumps({kind: {"identity": {"language": "ru"}, "annotations": table}}), encoding="utf-8"
        )
        (npm_dir / name / ".integrity").write_text((marker or integrity) + "\n", encoding="utf-8")
        packages.append(
            {"name": name, "version": "1.0.0", "integrity": integrity, "files": [file, "LICENSE"]}
        )
    pins = npm_dir / "pins.json"
    pins.write_text(json.dumps({"packages": packages}), encoding="utf-8")
    return pins


FAKE_TABLES = {
    "cldr-annotations-full": {
        "😀": {"default": ["лицо", "улыбка"], "tts": ["широко улыбается"]},
        "❤️": {"tts": ["красное сердце"]},
        "🔥": {"default": ["огонь"]},  # no tts: not a name
    },
    "cldr-annotations-derived-full": {
        "🇬🇼": {"default": ["флаг"], "tts": ["флаг: Гвинея-Бисау"]},
        "😀": {"tts": ["не первое имя"]},
    },
}


def test_load_cldr_names_reads_tts_keeps_hyphens_and_drops_variation_selectors(tmp_path: Path) -> None:
    pins = _fake_cldr(tmp_path, FAKE_TABLES)
    names = load_cldr_names(tmp_path, pins)
    assert names == {"😀": "широко улыбается", "❤": "красное сердце", "🇬🇼": "флаг Гвинея-Бисау"}
    assert cldr_key("❤️") in names


def test_missing_or_other_cldr_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="make setup"):
        load_cldr_names(tmp_path / "empty", CLDR_PINS)
    pins = _fake_cldr(tmp_path, FAKE_TABLES, marker="sha512-another-release")
    with pytest.raises(SourceUnavailable, match="another version"):
        load_cldr_names(tmp_path, pins)


def test_pinned_cldr_is_fetched_and_spells_flags_with_hyphens() -> None:
    """The pinned packages, as `make setup` fetched them (no network here)."""
    assert [package.name for package in cldr_packages()] == [
        "cldr-annotations-full",
        "cldr-annotations-derived-full",
    ]
    names = load_cldr_names()
    assert names["🇬🇼"] == "флаг Гвинея-Бисау"
    assert names["🇸🇲"] == "флаг Сан-Марино"
    assert names["#⃣"] == "клавиши #"
    assert len(names) > 3000


def test_repair_agrees_with_cldr_spelling() -> None:
    """Every word the repair changes must come out as CLDR spells it (the pinned CLDR release; its
    names sometimes order the same words differently, hence a word of the name, not the same place)."""
    emoji.config.load_language("ru")
    cldr = load_cldr_names()
    word = re.compile(r"[^\W\d_]+")
    changed = 0
    for sequence, data in emoji.EMOJI_DATA.items():
        reference = cldr.get(cldr_key(sequence))
        ours, theirs = word.findall(data["ru"]), word.findall(reference or "")
        if not reference or len(ours) != len(theirs):
            continue
        spelt = {correct.lower() for correct in theirs}
        for broken in ours:
            if repair_short_i(broken) != broken:
                changed += 1
                assert repair_short_i(broken).lower() in spelt, (broken, reference)
    assert changed > 500
