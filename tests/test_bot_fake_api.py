"""The fake Bot API itself: python-telegram-bot's own requests, refused with Telegram's error texts.

The bot checks every rule before calling, so these calls are made here directly with PTB's Bot,
to show the fake would catch a bot that did not.
"""

import asyncio
import io

import pytest
from PIL import Image
from telegram import Bot, InputFile, InputSticker
from telegram.error import BadRequest, InvalidToken

from tests.bot_harness import TOKEN

USER = 7001


def _png_bytes(size):
    buffer = io.BytesIO()
    Image.new("RGBA", size, (255, 0, 0, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png(size):
    return InputFile(_png_bytes(size), filename="s.png")


def _call(fake, action, token=TOKEN):
    async def main():
        async with Bot(token, base_url=fake.api_url) as bot:
            return await action(bot)

    return asyncio.run(main())


def _refused(fake, action):
    with pytest.raises(BadRequest) as error:
        _call(fake, action)
    return str(error.value).upper()


def test_uploads_of_the_wrong_size_are_sticker_png_dimensions(fake):
    assert "STICKER_PNG_DIMENSIONS" in _refused(
        fake, lambda bot: bot.upload_sticker_file(USER, _png((500, 300)), "static")
    )
    uploaded = _call(fake, lambda bot: bot.upload_sticker_file(USER, _png((512, 300)), "static"))
    assert uploaded.file_id.startswith("sticker")


def test_set_names_and_emoji_are_checked_like_telegram(fake):
    file_id = _call(fake, lambda bot: bot.upload_sticker_file(USER, _png((512, 512)), "static")).file_id
    sticker = InputSticker(file_id, ["😺"], "static")
    for name in (
        "cats_by_other_bot",
        "1cats_by_emojich_test_bot",
        "ca__ts_by_emojich_test_bot",
        "c" * 60 + "_by_emojich_test_bot",
    ):
        assert "PACK_SHORT_NAME_INVALID" in _refused(
            fake, lambda bot, name=name: bot.create_new_sticker_set(USER, name, "Коты", [sticker])
        )
    assert _call(
        fake, lambda bot: bot.create_new_sticker_set(USER, "cats_by_emojich_test_bot", "Коты", [sticker])
    )
    assert "PACK_SHORT_NAME_OCCUPIED" in _refused(
        fake, lambda bot: bot.create_new_sticker_set(USER, "Cats_by_emojich_test_bot", "Коты", [sticker])
    )
    wrong_emoji = InputSticker(file_id, ["кот"], "static")
    assert "STICKER_EMOJI_INVALID" in _refused(
        fake, lambda bot: bot.add_sticker_to_set(USER, "cats_by_emojich_test_bot", wrong_emoji)
    )
    # A file sent with the set itself (multipart, attach://) is checked as well.
    inline = InputSticker(_png_bytes((400, 400)), ["😺"], "static")
    assert "STICKER_PNG_DIMENSIONS" in _refused(
        fake, lambda bot: bot.add_sticker_to_set(USER, "cats_by_emojich_test_bot", inline)
    )
    assert _call(fake, lambda bot: bot.add_sticker_to_set(USER, "cats_by_emojich_test_bot", sticker))
    stored = _call(fake, lambda bot: bot.get_sticker_set("cats_by_emojich_test_bot"))
    assert stored.title == "Коты" and len(stored.stickers) == 2


def test_sets_hold_at_most_120_stickers_and_thumbnails_are_100px(fake):
    file_id = _call(fake, lambda bot: bot.upload_sticker_file(USER, _png((512, 512)), "static")).file_id
    sticker = InputSticker(file_id, ["😺"], "static")
    name = "full_by_emojich_test_bot"
    _call(fake, lambda bot: bot.create_new_sticker_set(USER, name, "Полный", [sticker]))
    with fake.lock:
        fake.sets[name]["stickers"] *= 120
    assert "STICKERS_TOO_MUCH" in _refused(fake, lambda bot: bot.add_sticker_to_set(USER, name, sticker))
    assert "STICKER_THUMB_DIMENSIONS" in _refused(
        fake, lambda bot: bot.set_sticker_set_thumbnail(name, USER, "static", _png((512, 512)))
    )
    assert _call(fake, lambda bot: bot.set_sticker_set_thumbnail(name, USER, "static", _png((100, 100))))


def test_a_wrong_token_is_unauthorized(fake):
    with pytest.raises(InvalidToken):
        _call(fake, lambda bot: bot.get_me(), token="1:WRONG-token-for-the-fake-api-xyz")
