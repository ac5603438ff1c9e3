"""The bot's pure rules: set names, emoji lists, set sizes, captions, sticker and thumbnail files."""

import io
import re

import numpy as np
import pytest
from PIL import Image

from emojich.bot.config import file_url_for, read_token
from emojich.bot.rules import (
    RuleError,
    check_caption,
    check_set_capacity,
    check_title,
    parse_emoji_list,
    propose_emoji,
    set_name,
    set_name_candidates,
    set_name_problems,
    transliterate,
)
from emojich.segment.stickers import make_sticker, make_thumbnail, sticker_problems, thumbnail_problems

BOT = "emojich_test_bot"
VALID = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@pytest.mark.parametrize(
    ("title", "name"),
    [
        ("Мои котики", "moi_kotiki_by_emojich_test_bot"),
        ("Ёжик и щука!", "ezhik_i_shchuka_by_emojich_test_bot"),
        ("Cats  &  dogs", "cats_dogs_by_emojich_test_bot"),
        ("😀😀", "stickers_by_emojich_test_bot"),  # nothing usable: a neutral word
        ("2024 год", "stickers_2024_god_by_emojich_test_bot"),  # must start with a letter
        ("объявление", "obyavlenie_by_emojich_test_bot"),  # hard and soft signs vanish
    ],
)
def test_set_names_are_transliterated_and_valid(title, name):
    assert set_name(title, BOT) == name
    assert set_name_problems(name, BOT) == []


def test_long_titles_are_cut_to_64_characters_with_room_for_the_suffix():
    title = "очень длинное название набора стикеров " * 4
    for number in (1, 2, 12, 345):
        name = set_name(title, BOT, number)
        assert len(name) <= 64 and VALID.fullmatch(name) and "__" not in name
        assert name.endswith(f"_by_{BOT}")
        if number > 1:
            assert name.endswith(f"_{number}_by_{BOT}")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("1cats_by_emojich_test_bot", "starting with a letter"),
        ("_cats_by_emojich_test_bot", "starting with a letter"),
        ("кошки_by_emojich_test_bot", "only Latin letters"),
        ("cats-dogs_by_emojich_test_bot", "only Latin letters"),
        ("cats__dogs_by_emojich_test_bot", "no two underscores"),
        ("cats_by_other_bot", "must end in _by_emojich_test_bot"),
        ("c" * 50 + "_by_emojich_test_bot", "over 64"),
    ],
)
def test_set_name_problems_are_named(name, problem):
    assert any(problem in text for text in set_name_problems(name, BOT))


def test_the_bot_username_is_case_insensitive_in_set_names():
    assert set_name_problems("cats_by_Emojich_Test_Bot", BOT) == []


def test_occupied_names_get_numbered_suffixes():
    taken = {"moi_kotiki_by_emojich_test_bot", "moi_kotiki_2_by_emojich_test_bot"}
    names = set_name_candidates("Мои котики", BOT, taken.__contains__)
    assert next(names) == "moi_kotiki_3_by_emojich_test_bot"
    assert next(names) == "moi_kotiki_4_by_emojich_test_bot"


def test_transliteration_keeps_latin_and_digits():
    assert transliterate("Кот Boris 2") == "kot_boris_2"


def test_titles():
    assert check_title("  Мои   котики ") == "Мои котики"
    with pytest.raises(RuleError, match="title"):
        check_title("   ")
    with pytest.raises(RuleError, match="64"):
        check_title("я" * 65)


def test_set_sizes():
    check_set_capacity(0, 1)
    check_set_capacity(0, 50)
    check_set_capacity(119, 1)
    with pytest.raises(RuleError) as error:
        check_set_capacity(0, 51)
    assert error.value.code == "set-size"
    with pytest.raises(RuleError) as error:
        check_set_capacity(120, 1)
    assert error.value.code == "set-full"
    with pytest.raises(RuleError):
        check_set_capacity(0, 0)


def test_emoji_lists():
    assert parse_emoji_list("😺") == ["😺"]
    assert parse_emoji_list("😺 👍🏽, 🇷🇺 😺") == ["😺", "👍🏽", "🇷🇺"]  # in order, no repeats
    assert parse_emoji_list("👨‍👩‍👧") == ["👨‍👩‍👧"]  # one ZWJ sequence is one emoji
    assert len(parse_emoji_list("".join(chr(0x1F600 + i) for i in range(20)))) == 20
    for text, code in [
        ("кот", "emoji-text"),
        ("😺 кот", "emoji-text"),
        ("", "emoji-count"),
        ("".join(chr(0x1F600 + i) for i in range(21)), "emoji-count"),
    ]:
        with pytest.raises(RuleError) as error:
            parse_emoji_list(text)
        assert error.value.code == code, text


def test_emoji_proposals_follow_the_russian_names():
    assert "🐈" in propose_emoji("кошка")
    assert propose_emoji("qwerty zxcv") == ["🙂"]
    assert 1 <= len(propose_emoji("улыбающееся лицо")) <= 3


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "caption-empty"),
        ("   \n ", "caption-empty"),
        (None, "caption-empty"),
        ("!!! ...", "caption-empty"),
        ("😺😺", "caption-only-emoji"),
        ("😺 !", "caption-only-emoji"),
        ("кошка " * 20, "caption-long"),
    ],
)
def test_bad_captions(text, code):
    with pytest.raises(RuleError) as error:
        check_caption(text, len, 40)
    assert error.value.code == code


def test_good_captions_and_the_latin_note():
    russian = check_caption("  розовая   альпака ", len, 40)
    assert russian.text == "розовая альпака" and not russian.latin_only
    assert check_caption("pink alpaca", len, 40).latin_only
    assert not check_caption("кот cat", len, 40).latin_only
    assert check_caption("кот 😺", len, 40).text == "кот 😺"  # emoji beside words are fine


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_sticker_file_rules():
    rgba = Image.new("RGBA", (512, 300), (255, 0, 0, 128))
    assert sticker_problems(_encoded(rgba, "PNG")) == []
    assert sticker_problems(_encoded(rgba, "WEBP", lossless=True)) == []
    assert "no side is exactly 512" in sticker_problems(_encoded(rgba.resize((500, 300)), "PNG"))[0]
    assert any("exceeds 512" in p for p in sticker_problems(_encoded(rgba.resize((600, 512)), "PNG")))
    assert any("not PNG or WEBP" in p for p in sticker_problems(_encoded(rgba.convert("RGB"), "JPEG")))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 4), dtype=np.uint8))
    assert any("over 524288" in p for p in sticker_problems(_encoded(noise, "PNG")))


def test_thumbnails_are_100px_within_128kb_in_the_sets_format():
    rgb = np.full((512, 400, 3), 200, np.uint8)
    sticker = make_sticker(rgb, np.full((512, 400), 255, np.uint8))
    for fmt in ("webp", "png"):
        thumb = make_thumbnail(sticker, fmt)
        assert thumbnail_problems(thumb.data) == [] and thumb.format == fmt
        with Image.open(io.BytesIO(thumb.data)) as image:
            assert image.size == (100, 100)
    assert "100x100" in thumbnail_problems(_encoded(Image.new("RGBA", (512, 512)), "PNG"))[0]


def test_tokens_come_from_a_file_or_the_environment_and_are_never_echoed(tmp_path):
    token = "123456:ABCDEFGHIJKLMNOPQRSTUVWXYZ_abc-123"
    path = tmp_path / "token"
    path.write_text(token + "\n")
    assert read_token(str(path), {}) == token
    assert read_token(None, {"EMOJICH_BOT_TOKEN": token}) == token
    for bad in ("", "not a token", "123456:short"):
        path.write_text(bad)
        with pytest.raises(ValueError) as error:
            read_token(str(path), {})
        assert bad not in str(error.value) or not bad
    with pytest.raises(ValueError, match="--token-file"):
        read_token(None, {})
    with pytest.raises(ValueError, match="does not exist"):
        read_token(str(tmp_path / "missing"), {})


def test_file_urls_sit_beside_the_api_url():
    assert file_url_for("https://api.telegram.org/bot") == "https://api.telegram.org/file/bot"
    assert file_url_for("http://127.0.0.1:8081/bot") == "http://127.0.0.1:8081/file/bot"
