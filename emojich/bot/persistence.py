"""Conversation states kept across restarts: PTB's DictPersistence, saved into the bot's SQLite file.

DictPersistence is PTB's persistence for storage it does not manage itself: it keeps the states
as JSON and leaves saving them to its owner. Saving them in the same SQLite file as the jobs
means one file holds all state, and SQLite's transactions mean a kill never leaves it half
written (PicklePersistence rewrites its file in place).
"""

from __future__ import annotations

from telegram.ext import DictPersistence, PersistenceInput

from emojich.bot.store import Store

_KEY = "conversations"


class StoreConversations(DictPersistence):
    """Only conversation states are persisted; everything else the bot knows lives in the Store."""

    def __init__(self, store: Store, update_interval: float = 1.0):
        super().__init__(
            store_data=PersistenceInput(
                bot_data=False, chat_data=False, user_data=False, callback_data=False
            ),
            conversations_json=store.get_text(_KEY),
            update_interval=update_interval,
        )
        self.store = store

    async def update_conversation(
        self, name: str, key: tuple[int | str, ...], new_state: object | None
    ) -> None:
        await super().update_conversation(name, key, new_state)
        self.store.set_text(_KEY, self.conversations_json)
