"""Russian caption repair and CLDR name loading."""

from __future__ import annotations

import re
from pathlib import Path

import emoji
import pytest

from emojich.data.russian import (
    caption_from_emoji_name,
    cldr_key,
    installed_cldr_files,
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


def test_load_cldr_names_reads_tts_and_drops_variation_selectors(tmp_path: Path) -> None:
    xml = tmp_path / "ru.xml"
    xml.write_text(
        """<?xml version="1.0" encoding="UTF-8" ?>
<ldml><annotations>
<annotation cp="😀">лицо | улыбка</annotation>
<annotation cp="😀" type="tts">широко улыбается</annotation>
<annotation cp="❤️" type="tts">красное сердце</annotation>
<annotation cp="🫠" type="tts" draft="unconfirmed">черновик</annotation>
</annotations></ldml>
""",
        encoding="utf-8",
    )
    names = load_cldr_names([xml, tmp_path / "absent.xml"])
    assert names == {"😀": "широко улыбается", "❤": "красное сердце"}
    assert cldr_key("❤️") in names


@pytest.mark.skipif(not installed_cldr_files(), reason="Debian's unicode-cldr-core is not installed")
def test_repair_agrees_with_cldr_spelling() -> None:
    """Every word the repair changes must come out as CLDR spells it."""
    emoji.config.load_language("ru")
    cldr = load_cldr_names()
    word = re.compile(r"[^\W\d_]+")
    changed = 0
    for sequence, data in emoji.EMOJI_DATA.items():
        reference = cldr.get(cldr_key(sequence))
        ours, theirs = word.findall(data["ru"]), word.findall(reference or "")
        if not reference or len(ours) != len(theirs):
            continue
        for broken, correct in zip(ours, theirs, strict=True):
            if repair_short_i(broken) != broken:
                changed += 1
                assert repair_short_i(broken).lower() == correct.lower(), (broken, correct)
    assert changed > 500
