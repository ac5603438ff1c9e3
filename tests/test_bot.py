"""The bot end to end over real HTTP: PTB polls a fake Bot API on 127.0.0.1, a fake generator draws.

One bot serves the whole module; each test plays its own users, so they do not interfere.
"""

import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from emojich.bot import texts
from emojich.bot.rules import set_name_problems
from emojich.foundation.storage import sha256_file
from tests.bot_harness import FAKE_CHECKPOINT_SHA, TOKEN, BotThread, fake_run, make_config
from tests.fake_telegram import FakeTelegram

BOT = "emojich_test_bot"


@pytest.fixture(scope="module")
def fake():
    server = FakeTelegram(TOKEN, BOT).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bot(fake, tmp_path_factory):
    root = tmp_path_factory.mktemp("bot")
    running = BotThread(fake_run(make_config(root), fake.api_url)).start()
    yield running
    running.stop()


def _candidates(fake, user, after=0):
    return fake.wait_for_message(
        user, lambda m: "pick:" in json.dumps(m.get("reply_markup", {})), after=after
    )


def _button(message, prefix):
    for row in message["reply_markup"]["inline_keyboard"]:
        for button in row:
            if button["callback_data"].startswith(prefix):
                return button["callback_data"]
    raise AssertionError(f"no {prefix} button in {message}")


def _pick(message, number):
    """The data of the "pick `number`" button under a candidates message."""
    return _button(message, "pick:").rsplit(":", 1)[0] + f":{number}"


def _chat_methods(fake, user, start):
    """Methods of the calls about `user` from call number `start` on (polling excluded)."""
    methods = []
    for call in fake.calls[start:]:
        about = call.params.get("chat_id", call.params.get("user_id"))
        if about == user or call.method == "answerCallbackQuery":
            methods.append(call.method)
    return methods


def _make_sticker(fake, user, caption, pick=1, emoji="😺"):
    after = fake.last_id(user)
    fake.say(user, caption, "Подпись принята")
    keyboard = _candidates(fake, user, after)
    fake.press(user, keyboard, _pick(keyboard, pick))
    fake.wait_for_text(user, "эмодзи", after=after)
    return fake.say(user, emoji, "Готово", timeout=60)


def test_newpack_caption_pick_emoji_makes_a_valid_set(fake, bot):
    user = 1001
    start = len(fake.calls)
    fake.say(user, "/newpack Мои котики", "начат")
    fake.say(user, "кошка улыбается", "Подпись принята")
    keyboard = _candidates(fake, user)
    fake.press(user, keyboard, _pick(keyboard, 2))
    ask = fake.wait_for_text(user, "эмодзи")
    assert "emoji:" in _button(ask, "emoji:")  # a proposal to tap
    done = fake.say(user, "😺", "Готово", timeout=60)

    assert _chat_methods(fake, user, start) == [
        "sendMessage",  # set started
        "sendMessage",  # queued
        "sendMediaGroup",
        "sendMessage",  # the keyboard
        "answerCallbackQuery",
        "editMessageText",  # "you picked 2"
        "sendMessage",  # which emoji?
        "sendMessage",  # making
        "uploadStickerFile",
        "createNewStickerSet",
        "setStickerSetThumbnail",
        "sendMessage",  # the link
    ]
    group = fake.calls_named("sendMediaGroup")[-1]
    assert len(group.params["media"]) == 4 and all(item["type"] == "photo" for item in group.params["media"])
    for data in group.files.values():
        assert Image.open(io.BytesIO(data)).size == (512, 512)

    name = re.search(r"t\.me/addstickers/(\w+)", done["text"]).group(1)
    assert name == "moi_kotiki_by_emojich_test_bot" and set_name_problems(name, BOT) == []
    created = fake.calls_named("createNewStickerSet")[-1].params
    assert created["title"] == "Мои котики" and created["stickers"][0]["format"] == "static"
    assert created["stickers"][0]["emoji_list"] == ["😺"]
    stored = fake.sets[name]
    assert stored["owner"] == user and len(stored["stickers"]) == 1
    sticker = Image.open(io.BytesIO(stored["stickers"][0]["facts"].data))
    assert sticker.size == (512, 512) and sticker.mode == "RGBA" and sticker.format == "WEBP"
    alpha = sticker.getchannel("A")
    assert alpha.getextrema() == (0, 255)  # the white background was cut away, the disc kept
    assert stored["thumbnail"].size == (100, 100)

    # The sticker and its sidecar are kept for lineage: prompt, seed, sampling, checkpoint, cut.
    files = sorted((bot.run.config.state_dir / "stickers").rglob("*.webp"))
    path = next(p for p in files if ".thumb" not in p.name)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["made_by"] == "emojich-bot" and sidecar["prompt"] == "кошка улыбается"
    assert sidecar["checkpoint_sha256"] == FAKE_CHECKPOINT_SHA and sidecar["emoji"] == ["😺"]
    assert sidecar["sticker_sha256"] == sha256_file(path) and sidecar["mask_method"] == "contour"
    assert (bot.run.config.root / sidecar["source_image"]).is_file()
    assert sidecar["source_image"].endswith("-r0001-i0001.png")  # candidate 2 = rank 1

    # The next caption adds to the same set, with a proposed emoji tapped instead of typed.
    start = len(fake.calls)
    after = fake.last_id(user)
    fake.say(user, "кошка спит", "Подпись принята")
    keyboard = _candidates(fake, user, after)
    fake.press(user, keyboard, _button(keyboard, "pick:"))
    ask = fake.wait_for_message(
        user, lambda m: "emoji:" in json.dumps(m.get("reply_markup", {})), after=after
    )
    fake.press(user, ask, _button(ask, "emoji:"))
    fake.wait_for_text(user, "Готово", 60, after=after)
    assert "addStickerToSet" in _chat_methods(fake, user, start)
    assert "createNewStickerSet" not in _chat_methods(fake, user, start)
    assert len(fake.sets[name]["stickers"]) == 2
    assert "2 стик." in fake.say(user, "/mypacks", "Ваши наборы")["text"]


def test_the_candidates_say_how_the_caption_was_read(fake, bot):
    user = 1012
    fake.say(user, "/newpack Цвета", "начат")
    fake.say(user, "синий кролик", "Подпись принята")
    keyboard = _candidates(fake, user)
    assert keyboard["text"].startswith("Понял как: кролик · синий\n")
    fake.say(user, "/cancel", "")


def test_an_occupied_name_gets_a_numbered_suffix(fake, bot):
    user = 1002
    fake.add_set("sobaki_by_emojich_test_bot", owner=999)
    fake.say(user, "/newpack Собаки", "начат")
    done = _make_sticker(fake, user, "собака лает")
    assert "addstickers/sobaki_2_by_emojich_test_bot" in done["text"]
    errors = [c.error for c in fake.calls_named("createNewStickerSet") if c.params["user_id"] == user]
    assert errors == ["Bad Request: PACK_SHORT_NAME_OCCUPIED", None]


def test_a_title_is_asked_for_when_missing(fake, bot):
    user = 1003
    fake.say(user, "/newpack", texts.ASK_TITLE)
    fake.say(user, "   ", texts.TITLE_EMPTY)
    fake.say(user, "я" * 65, texts.TITLE_LONG)
    fake.say(user, "Птицы", "Набор «Птицы» начат")


@pytest.mark.parametrize(
    ("user", "caption", "reply"),
    [
        (1010, "  \n  ", texts.CAPTION_EMPTY),
        (1011, "😺😺😺", texts.CAPTION_ONLY_EMOJI),
        (
            1012,
            "очень длинная подпись, которую модель не прочтёт целиком",
            texts.CAPTION_LONG.format(tokens=56, max_tokens=40),
        ),
    ],
)
def test_bad_captions_get_a_clear_reply_and_nothing_is_queued(fake, bot, user, caption, reply):
    fake.say(user, "/newpack Тест", "начат")
    fake.say(user, caption, reply)
    assert bot.services.store.active_job(user) is None


def test_latin_only_is_allowed_with_a_note(fake, bot):
    user = 1013
    fake.say(user, "/newpack Test", "начат")
    reply = fake.say(user, "pink cat", "Подпись принята")
    assert texts.LATIN_NOTE in reply["text"]
    _candidates(fake, user)


def test_files_unknown_commands_and_text_without_a_set(fake, bot):
    user = 1014
    after = fake.last_id(user)
    fake.send_document(user)
    fake.wait_for_text(user, texts.NOT_TEXT, after=after)
    after = fake.last_id(user)
    fake.send_photo(user)
    fake.wait_for_text(user, texts.NOT_TEXT, after=after)
    fake.say(user, "/frobnicate", texts.UNKNOWN_COMMAND)
    fake.say(user, "кошка", texts.NO_PACK)
    fake.say(user, "/cancel", texts.NOTHING_TO_CANCEL)
    # Inside a set, too.
    fake.say(user, "/newpack Файлы", "начат")
    after = fake.last_id(user)
    fake.send_document(user)
    fake.wait_for_text(user, texts.NOT_TEXT, after=after)
    fake.say(user, "/frobnicate", texts.UNKNOWN_COMMAND)
    assert "/newpack" in fake.say(user, "/help", "/status")["text"]


def _pressed(fake, user, message, data):
    """Press a button; returns the answerCallbackQuery call for it."""
    query = fake.press(user, message, data)
    return fake.wait_for(
        lambda: next(
            (c for c in fake.calls_named("answerCallbackQuery") if c.params["callback_query_id"] == query),
            None,
        ),
        what="the button's answer",
    )


def test_stale_buttons_are_answered_and_removed(fake, bot):
    user, other = 1020, 1021
    fake.say(user, "/newpack Старые кнопки", "начат")
    fake.say(user, "кошка", "Подпись принята")
    old = _candidates(fake, user)
    after = fake.last_id(user)
    ask = fake.say(user, "собака", "ещё ждут выбора")
    fake.press(user, ask, _button(ask, "draw:"))  # drawing the newer caption retires the old candidates
    fake.wait_for_text(user, "Подпись принята", after=after)
    new = _candidates(fake, user, after)
    answer = _pressed(fake, user, old, _button(old, "pick:"))
    assert answer.params.get("text") == texts.STALE_BUTTON and answer.params.get("show_alert") is True
    fake.wait_for(
        lambda: all(
            "reply_markup" not in m for m in fake.bot_messages(user) if m["message_id"] == old["message_id"]
        ),
        what="the stale keyboard to be removed",
    )
    # Someone else's button, and a job that never existed.
    assert _pressed(fake, other, new, _button(new, "pick:")).params.get("text") == texts.STALE_BUTTON
    for data in ("pick:999999:1", "pick:x:y", "pick", _pick(new, 9), "emoji:1:not-an-emoji"):
        assert _pressed(fake, user, new, data).params.get("text") == texts.STALE_BUTTON, data
    # The live one still works, once; pressing it again is stale.
    data = _button(new, "pick:")
    assert _pressed(fake, user, new, data).params.get("text") is None
    fake.wait_for_text(user, "эмодзи")
    assert _pressed(fake, user, new, data).params.get("text") == texts.STALE_BUTTON


def test_emoji_step_rejects_text_and_too_many_emoji_then_cancel(fake, bot):
    user = 1030
    fake.say(user, "/newpack Эмодзи", "начат")
    fake.say(user, "кошка", "Подпись принята")
    keyboard = _candidates(fake, user)
    fake.press(user, keyboard, _button(keyboard, "pick:"))
    fake.wait_for_text(user, "эмодзи")
    fake.say(user, "кот", texts.EMOJI_TEXT)
    fake.say(user, "".join(chr(0x1F600 + i) for i in range(21)), texts.EMOJI_COUNT)
    fake.say(user, "/cancel", texts.CANCELLED)
    assert bot.services.store.latest_job(user, ("picked",)) is None
    fake.say(user, "кошка", texts.NO_PACK)  # the set is closed


def test_regenerate_and_skip(fake, bot):
    user = 1040
    fake.say(user, "/newpack Ещё", "начат")
    fake.say(user, "кошка", "Подпись принята")
    first = _candidates(fake, user)
    after = fake.last_id(user)
    fake.press(user, first, _button(first, "regen:"))
    second = _candidates(fake, user, after)
    first_job, second_job = (int(_button(m, "regen:").split(":")[1]) for m in (first, second))
    assert second_job > first_job
    store = bot.services.store
    assert store.job(second_job).seed != store.job(first_job).seed  # other images, same caption
    assert store.job(first_job).status == "skipped"
    groups = [c for c in fake.calls_named("sendMediaGroup") if c.params["chat_id"] == user]
    assert set(groups[-1].files.values()).isdisjoint(groups[-2].files.values())  # new images, truly
    after = fake.last_id(user)
    fake.press(user, second, _button(second, "skip:"))
    fake.wait_for_text(user, texts.SKIPPED, after=after)
    assert store.job(second_job).status == "skipped"


def test_status_without_a_job(fake, bot):
    reply = fake.say(1050, "/status", "нет подписей в работе")
    assert "Сегодня использовано 0 из 20" in reply["text"]


def test_the_store_survives_the_process_and_a_sticker_path_is_recorded(fake, bot):
    store = bot.services.store
    pack = store.packs_of(1001)[0]
    assert pack.created and pack.stickers == 2 and pack.name == "moi_kotiki_by_emojich_test_bot"
    for job in store.jobs_in("done"):
        sticker = store.sticker_for(job.id)
        assert sticker is not None and sticker.added and sticker.link_sent and Path(sticker.path).is_file()


def _keyboard_of(fake, user, message_id):
    """The buttons' data under a bot message now (edits applied)."""
    message = next(m for m in fake.bot_messages(user) if m["message_id"] == message_id)
    rows = message.get("reply_markup", {}).get("inline_keyboard", [])
    return [button["callback_data"] for row in rows for button in row]


def test_more_variants_of_a_caption_drawn_the_same_every_time_say_so_and_cost_nothing(fake, bot):
    user = 1060
    fake.say(user, "/newpack Снеговики", "начат")
    fake.say(user, "снеговик", "Подпись принята")  # the fake draws it alike whatever the seed
    keyboard = _candidates(fake, user)
    after = fake.last_id(user)
    answer = _pressed(fake, user, keyboard, _button(keyboard, "regen:"))
    assert answer.params.get("text") is None  # not a stale button: a real answer follows
    reply = fake.wait_for_text(user, "одно и то же", timeout=10, after=after)
    assert "снеговик" in reply["text"] and "в лимит" in reply["text"]
    store = bot.services.store
    assert [job.caption for job in store.jobs_in("queued") if job.user_id == user] == []
    assert "Сегодня использовано 1 из 20" in fake.say(user, "/status", "Сегодня")["text"]

    def without_regenerate():
        buttons = _keyboard_of(fake, user, keyboard["message_id"])
        return buttons if buttons and not any(data.startswith("regen:") for data in buttons) else None

    buttons = fake.wait_for(without_regenerate, what="the keyboard without the regenerate button")
    assert any(data.startswith("pick:") for data in buttons)  # the candidates can still be picked
    fake.press(user, keyboard, _pick(keyboard, 1))
    fake.wait_for_text(user, "эмодзи", after=after)


def test_a_new_caption_asks_before_dropping_the_waiting_candidates(fake, bot):
    user = 1061
    fake.say(user, "/newpack Вопрос", "начат")
    fake.say(user, "кошка", "Подпись принята")
    first = _candidates(fake, user)
    ask = fake.say(user, "собака", "ещё ждут выбора", timeout=10)
    assert "«кошка»" in ask["text"] and "«собака»" in ask["text"]
    assert {_button(ask, "keep:"), _button(ask, "draw:")}  # both choices offered
    assert bot.services.store.active_job(user) is None  # nothing queued, nothing dropped yet
    # Keep: the new caption is not drawn, the candidates stay pickable.
    after = fake.last_id(user)
    fake.press(user, ask, _button(ask, "keep:"))
    fake.wait_for_text(user, "не рисую", after=after)
    assert bot.services.store.job(int(_button(first, "pick:").split(":")[1])).status == "delivered"
    # Draw: asked again, the new caption is queued and the old candidates go.
    ask = fake.say(user, "собака", "ещё ждут выбора", timeout=10)
    after = fake.last_id(user)
    fake.press(user, ask, _button(ask, "draw:"))
    assert "«собака»" in fake.wait_for_text(user, "Подпись принята", after=after)["text"]
    second = _candidates(fake, user, after)
    fake.wait_for(lambda: not _keyboard_of(fake, user, first["message_id"]), what="the old keyboard to go")
    assert _pressed(fake, user, first, _pick(first, 1)).params.get("text") == texts.STALE_BUTTON
    assert _pressed(fake, user, ask, _button(ask, "draw:")).params.get("text") == texts.STALE_BUTTON
    fake.press(user, second, _pick(second, 1))
    fake.wait_for_text(user, "эмодзи", after=after)
