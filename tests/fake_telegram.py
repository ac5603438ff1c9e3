"""A fake Telegram Bot API: aiohttp on 127.0.0.1, in a thread of its own, for tests and local runs.

It speaks the Bot API the way python-telegram-bot uses it: `POST /bot<token>/<method>` with
form-encoded fields (strings as they are, everything else as JSON strings) or multipart bodies
with the files as parts, and `{"ok": ..., "result" | "description": ...}` answers.

- Users are private chats (chat id = user id). Tests queue their messages, commands, files and
  button presses as updates; `getUpdates` serves them with Telegram's offset semantics (an update
  is gone once a later offset confirms it) and long-polls while there are none, so the bot runs
  real polling.
- Every call is recorded (method, fields, uploaded file bytes, when it came, the error if one was
  returned). `refuse` makes a method fail with a given error, to see how the bot takes it.
- Messages are edited and deleted as on Telegram: an edit that changes nothing is refused with
  "message is not modified", and a deleted message is gone from the chat.
- Sticker sets live in memory, and the rules are enforced with Telegram's error texts:
  PACK_SHORT_NAME_INVALID, PACK_SHORT_NAME_OCCUPIED, STICKER_PNG_DIMENSIONS, STICKERSET_INVALID,
  STICKERS_TOO_MUCH, STICKER_EMOJI_INVALID. Thumbnail errors use the fake's own wording
  (STICKER_THUMB_DIMENSIONS), as Telegram's exact text for them was not checked.

`python -m tests.fake_telegram --port 8081 --token TOKEN` serves one for trying `emojich bot` by
hand; `POST /test/send` (form fields `user`, `text`, or `data` and `message_id` for a button)
plays a user, and `GET /test/chat?user=N` shows what the bot sent that user.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import emoji as emoji_package
from aiohttp import web
from PIL import Image

BOT_ID = 4242
STICKER_SIDE = 512
MAX_STICKER_BYTES = 512 * 1024
THUMB_SIDE = 100
MAX_THUMB_BYTES = 128 * 1024
MAX_SET = 120

_SET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Fields python-telegram-bot sends as JSON strings (numbers, booleans, objects, lists).
_JSON_FIELDS = {
    "chat_id", "user_id", "offset", "limit", "timeout", "message_id", "show_alert", "reply_markup",
    "media", "stickers", "sticker", "allowed_updates", "commands", "emoji_list", "drop_pending_updates",
    "disable_notification",
}  # fmt: skip


class ApiError(Exception):
    def __init__(self, description: str, code: int = 400):
        super().__init__(description)
        self.description = description
        self.code = code


@dataclasses.dataclass
class Call:
    method: str
    params: dict[str, Any]
    files: dict[str, bytes]
    error: str | None = None
    at: float = dataclasses.field(default_factory=time.monotonic)  # when the request came


@dataclasses.dataclass
class StoredFile:
    data: bytes
    format: str | None
    size: tuple[int, int]
    mode: str


def _image_facts(data: bytes) -> StoredFile:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return StoredFile(data, image.format, image.size, image.mode)
    except Exception:
        return StoredFile(data, None, (0, 0), "")


class FakeTelegram:
    def __init__(self, token: str, bot_username: str = "emojich_test_bot"):
        self.token = token
        self.bot_username = bot_username
        self.bot_user = {"id": BOT_ID, "is_bot": True, "first_name": "Emojich", "username": bot_username}
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.updates: list[dict] = []  # not yet confirmed by an offset
        self.chats: dict[int, list[dict]] = {}  # every message in each chat, the user's and the bot's
        self.files: dict[str, StoredFile] = {}
        self.sets: dict[str, dict] = {}  # lower-cased name -> set
        # Seconds to hold the answer to a method after doing its work: a bot killed meanwhile
        # never learns that the call succeeded, as after a crash or a lost connection.
        self.delays: dict[str, float] = {}
        # Methods answered with this error instead of being done, e.g. {"editMessageText": "Bad Request: ..."}.
        self.refuse: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._update_ids = itertools.count(1)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ----- life -----

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # media groups of 512 px PNGs
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_post("/test/send", self._test_send)
        app.router.add_get("/test/chat", self._test_chat)
        return app

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> None:
        # A short shutdown: held answers (`delays`) and long polls need not be waited for.
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def start(self) -> FakeTelegram:
        started = threading.Event()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.serve())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, name="fake-telegram", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the fake Bot API did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        runner = self._runner

        async def shutdown() -> None:
            await runner.cleanup()
            # Answers still held by `delays` belong to bots that are gone.
            pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)

    # ----- playing users (thread-safe) -----

    def _user(self, user_id: int) -> dict:
        return {"id": user_id, "is_bot": False, "first_name": f"User{user_id}", "language_code": "ru"}

    def _chat(self, chat_id: int) -> dict:
        return {"id": chat_id, "type": "private", "first_name": f"User{chat_id}"}

    def _user_message(self, user_id: int, **content: Any) -> dict:
        with self.lock:
            message = {
                "message_id": next(self._ids),
                "date": int(time.time()),
                "chat": self._chat(user_id),
                "from": self._user(user_id),
                **content,
            }
            self.chats.setdefault(user_id, []).append(message)
            self.updates.append({"update_id": next(self._update_ids), "message": message})
        return message

    def send(self, user_id: int, text: str) -> dict:
        """A text message; a leading /command gets its bot_command entity, as Telegram adds it."""
        content: dict[str, Any] = {"text": text}
        if text.startswith("/"):
            content["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        return self._user_message(user_id, **content)

    def send_document(self, user_id: int, name: str = "cat.png") -> dict:
        document = {
            "file_id": f"doc-{name}",
            "file_unique_id": f"u-{name}",
            "file_name": name,
            "mime_type": "image/png",
        }
        return self._user_message(user_id, document=document)

    def send_photo(self, user_id: int) -> dict:
        photo = [{"file_id": "photo-in", "file_unique_id": "u-photo-in", "width": 90, "height": 90}]
        return self._user_message(user_id, photo=photo)

    def press(self, user_id: int, message: dict, data: str) -> str:
        """Tap an inline button under `message` (a bot message from `messages`); returns the query id."""
        with self.lock:
            query_id = f"q{next(self._ids)}"
            query = {
                "id": query_id,
                "from": self._user(user_id),
                "chat_instance": f"ci{user_id}",
                "data": data,
                "message": message,
            }
            self.updates.append({"update_id": next(self._update_ids), "callback_query": query})
        return query_id

    # ----- observing (thread-safe) -----

    def calls_named(self, method: str) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if call.method == method]

    def bot_messages(self, chat_id: int) -> list[dict]:
        """What the bot sent this chat, oldest first (edits applied)."""
        with self.lock:
            return [dict(m) for m in self.chats.get(chat_id, []) if m["from"]["id"] == BOT_ID]

    def texts(self, chat_id: int) -> list[str]:
        return [m["text"] for m in self.bot_messages(chat_id) if "text" in m]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")

    def wait_for_message(
        self, chat_id: int, test: Callable[[dict], bool], timeout: float = 30, after: int = 0
    ) -> dict:
        """The first bot message to `chat_id` with message_id > `after` that passes `test`."""

        def found() -> dict | None:
            for message in self.bot_messages(chat_id):
                if message["message_id"] > after and test(message):
                    return message
            return None

        return self.wait_for(found, timeout, f"a message to {chat_id}")

    def wait_for_text(self, chat_id: int, contains: str, timeout: float = 30, after: int = 0) -> dict:
        return self.wait_for_message(chat_id, lambda m: contains in m.get("text", ""), timeout, after)

    def last_id(self, chat_id: int) -> int:
        with self.lock:
            messages = self.chats.get(chat_id, [])
            return messages[-1]["message_id"] if messages else 0

    def say(self, user_id: int, text: str, expect: str, timeout: float = 30) -> dict:
        """Send `text` as `user_id` and wait for the bot's next reply containing `expect`."""
        after = self.last_id(user_id)
        self.send(user_id, text)
        return self.wait_for_text(user_id, expect, timeout, after=after)

    def add_set(self, name: str, owner: int, title: str = "someone else's") -> None:
        """A set made by someone else, so that its name is occupied."""
        with self.lock:
            self.sets[name.lower()] = {
                "name": name,
                "title": title,
                "owner": owner,
                "stickers": [],
                "thumbnail": None,
            }

    # ----- the API -----

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        params, files = await self._read(request)
        call = Call(method, params, {name: data for name, data in files.items()})
        handler = getattr(self, f"api_{method}", None)
        try:
            if method == "getUpdates":
                result = await self._get_updates(params)
            elif handler is None:
                raise ApiError("Not Found: method not found", 404)
            elif method in self.refuse:
                raise ApiError(self.refuse[method])
            else:
                with self.lock:
                    result = handler(params, files)
        except ApiError as error:
            call.error = error.description
            with self.lock:
                self.calls.append(call)
            return web.json_response(
                {"ok": False, "error_code": error.code, "description": error.description}, status=error.code
            )
        if method != "getUpdates":  # polling is noise in the record
            with self.lock:
                self.calls.append(call)
        await asyncio.sleep(self.delays.get(method, 0))
        return web.json_response({"ok": True, "result": result})

    async def _read(self, request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
        params: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        if request.content_type == "application/json":
            return await request.json(), files
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                files[key] = value.file.read()
            elif key in _JSON_FIELDS and not (key == "sticker" and not value.startswith("{")):
                params[key] = json.loads(value)
            else:
                params[key] = value
        return params, files

    async def _get_updates(self, params: dict[str, Any]) -> list[dict]:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        deadline = time.monotonic() + float(params.get("timeout") or 0)
        while True:
            with self.lock:
                if offset:
                    self.updates = [u for u in self.updates if u["update_id"] >= offset]
                if self.updates or time.monotonic() >= deadline:
                    return self.updates[:limit]
            await asyncio.sleep(0.02)

    def _bot_message(self, chat_id: int, **content: Any) -> dict:
        message = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": self._chat(chat_id),
            "from": self.bot_user,
            **content,
        }
        self.chats.setdefault(chat_id, []).append(message)
        return message

    def _find(self, chat_id: int, message_id: int) -> dict:
        for message in self.chats.get(chat_id, []):
            if message["message_id"] == message_id:
                return message
        raise ApiError("Bad Request: message to edit not found")

    def api_getMe(self, params: dict, files: dict) -> dict:
        return self.bot_user

    def api_deleteWebhook(self, params: dict, files: dict) -> bool:
        return True

    def api_setMyCommands(self, params: dict, files: dict) -> bool:
        return True

    def api_answerCallbackQuery(self, params: dict, files: dict) -> bool:
        return True

    def api_sendMessage(self, params: dict, files: dict) -> dict:
        text = params.get("text", "")
        if not text.strip():
            raise ApiError("Bad Request: message text is empty")
        content: dict[str, Any] = {"text": text}
        if "reply_markup" in params:
            content["reply_markup"] = params["reply_markup"]
        return self._bot_message(int(params["chat_id"]), **content)

    def api_editMessageText(self, params: dict, files: dict) -> dict:
        message = self._find(int(params["chat_id"]), int(params["message_id"]))
        same_markup = message.get("reply_markup") == params.get("reply_markup")
        if message.get("text") == params["text"] and same_markup:
            raise ApiError(
                "Bad Request: message is not modified: specified new message content and reply markup "
                "are exactly the same as a current content and reply markup of the message"
            )
        message["text"] = params["text"]
        message.pop("reply_markup", None)
        if "reply_markup" in params:
            message["reply_markup"] = params["reply_markup"]
        return message

    def api_deleteMessage(self, params: dict, files: dict) -> bool:
        chat_id, message_id = int(params["chat_id"]), int(params["message_id"])
        messages = self.chats.get(chat_id, [])
        for index, message in enumerate(messages):
            if message["message_id"] == message_id:
                del messages[index]
                return True
        raise ApiError("Bad Request: message to delete not found")

    def api_editMessageReplyMarkup(self, params: dict, files: dict) -> dict:
        message = self._find(int(params["chat_id"]), int(params["message_id"]))
        if "reply_markup" not in message and not params.get("reply_markup"):
            raise ApiError("Bad Request: message is not modified")
        message.pop("reply_markup", None)
        if params.get("reply_markup"):
            message["reply_markup"] = params["reply_markup"]
        return message

    def api_sendMediaGroup(self, params: dict, files: dict) -> list[dict]:
        media = params["media"]
        if not 2 <= len(media) <= 10:
            raise ApiError("Bad Request: wrong number of media in the group")
        group = f"group{next(self._ids)}"
        messages = []
        for item in media:
            data = files[item["media"].removeprefix("attach://")]
            facts = _image_facts(data)
            file_id = f"photo{next(self._ids)}"
            self.files[file_id] = facts
            photo = {
                "file_id": file_id,
                "file_unique_id": f"u{file_id}",
                "width": facts.size[0],
                "height": facts.size[1],
            }
            messages.append(self._bot_message(int(params["chat_id"]), media_group_id=group, photo=[photo]))
        return messages

    # ----- stickers -----

    def _check_sticker_file(self, facts: StoredFile) -> None:
        if facts.format not in ("PNG", "WEBP"):
            raise ApiError("Bad Request: STICKER_PNG_NOPNG")
        width, height = facts.size
        if max(width, height) != STICKER_SIDE:
            raise ApiError("Bad Request: STICKER_PNG_DIMENSIONS")
        if len(facts.data) > MAX_STICKER_BYTES:
            raise ApiError("Bad Request: file is too big")

    def api_uploadStickerFile(self, params: dict, files: dict) -> dict:
        if params.get("sticker_format") != "static":
            raise ApiError("Bad Request: STICKER_FILE_INVALID")
        if "sticker" not in files:
            raise ApiError("Bad Request: there is no sticker in the request")
        facts = _image_facts(files["sticker"])
        self._check_sticker_file(facts)
        file_id = f"sticker{next(self._ids)}"
        self.files[file_id] = facts
        return {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": len(facts.data)}

    def _input_sticker(self, item: dict, files: dict) -> dict:
        reference = item.get("sticker") or ""
        if reference.startswith("attach://"):
            facts = _image_facts(files.get(reference.removeprefix("attach://"), b""))
            file_id = f"sticker{next(self._ids)}"
            self.files[file_id] = facts
        elif reference in self.files:
            file_id, facts = reference, self.files[reference]
        else:
            raise ApiError("Bad Request: STICKER_FILE_INVALID")
        if item.get("format") != "static":
            raise ApiError("Bad Request: STICKER_FILE_INVALID")
        self._check_sticker_file(facts)
        emoji_list = item.get("emoji_list") or []
        if not 1 <= len(emoji_list) <= 20 or not all(emoji_package.is_emoji(e) for e in emoji_list):
            raise ApiError("Bad Request: STICKER_EMOJI_INVALID")
        return {"file_id": file_id, "emoji_list": emoji_list, "facts": facts}

    def _set_of(self, params: dict) -> dict:
        found = self.sets.get(str(params.get("name", "")).lower())
        if found is None:
            raise ApiError("Bad Request: STICKERSET_INVALID")
        return found

    def api_createNewStickerSet(self, params: dict, files: dict) -> bool:
        name = str(params.get("name", ""))
        if (
            not _SET_NAME.fullmatch(name)
            or "__" in name
            or len(name) > 64
            or not name.lower().endswith(f"_by_{self.bot_username.lower()}")
        ):
            raise ApiError("Bad Request: PACK_SHORT_NAME_INVALID")
        if name.lower() in self.sets:
            raise ApiError("Bad Request: PACK_SHORT_NAME_OCCUPIED")
        title = str(params.get("title", ""))
        if not 1 <= len(title) <= 64:
            raise ApiError("Bad Request: PACK_TITLE_INVALID")
        stickers = params.get("stickers") or []
        if not 1 <= len(stickers) <= 50:
            raise ApiError("Bad Request: STICKERS_TOO_MUCH")
        items = [self._input_sticker(item, files) for item in stickers]
        self.sets[name.lower()] = {
            "name": name,
            "title": title,
            "owner": int(params["user_id"]),
            "stickers": items,
            "thumbnail": None,
        }
        return True

    def api_addStickerToSet(self, params: dict, files: dict) -> bool:
        found = self._set_of(params)
        if found["owner"] != int(params["user_id"]):
            raise ApiError("Bad Request: STICKERSET_INVALID")
        if len(found["stickers"]) >= MAX_SET:
            raise ApiError("Bad Request: STICKERS_TOO_MUCH")
        found["stickers"].append(self._input_sticker(params["sticker"], files))
        return True

    def api_setStickerSetThumbnail(self, params: dict, files: dict) -> bool:
        found = self._set_of(params)
        if found["owner"] != int(params["user_id"]):
            raise ApiError("Bad Request: STICKERSET_INVALID")
        facts = _image_facts(files.get("thumbnail", b""))
        if facts.format not in ("PNG", "WEBP") or facts.size != (THUMB_SIDE, THUMB_SIDE):
            raise ApiError("Bad Request: STICKER_THUMB_DIMENSIONS")
        if len(facts.data) > MAX_THUMB_BYTES:
            raise ApiError("Bad Request: file is too big")
        found["thumbnail"] = facts
        return True

    def api_getStickerSet(self, params: dict, files: dict) -> dict:
        found = self._set_of(params)
        stickers = [
            {
                "file_id": item["file_id"],
                "file_unique_id": f"u{item['file_id']}",
                "type": "regular",
                "width": item["facts"].size[0],
                "height": item["facts"].size[1],
                "is_animated": False,
                "is_video": False,
                "emoji": item["emoji_list"][0],
                "set_name": found["name"],
            }
            for item in found["stickers"]
        ]
        return {
            "name": found["name"],
            "title": found["title"],
            "sticker_type": "regular",
            "stickers": stickers,
        }

    # ----- by hand: play a user over HTTP -----

    async def _test_send(self, request: web.Request) -> web.Response:
        form = await request.post()
        user = int(str(form["user"]))
        if "data" in form:
            with self.lock:
                message = dict(self._find(user, int(str(form["message_id"]))))
            self.press(user, message, str(form["data"]))
        else:
            self.send(user, str(form.get("text", "")))
        return web.json_response({"ok": True})

    async def _test_chat(self, request: web.Request) -> web.Response:
        user = int(request.query["user"])
        with self.lock:
            messages = list(self.chats.get(user, []))
        return web.json_response(messages, dumps=lambda obj: json.dumps(obj, ensure_ascii=False, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a fake Telegram Bot API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--token", required=True, help="the token the bot will use")
    parser.add_argument("--bot-username", default="emojich_test_bot")
    args = parser.parse_args()
    fake = FakeTelegram(args.token, args.bot_username)

    async def serve() -> None:
        await fake.serve(port=args.port)
        print(f"fake Bot API on http://127.0.0.1:{fake.port}/bot (Ctrl-C stops it)", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
