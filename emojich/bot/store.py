"""The bot's state in one SQLite file: users, packs, jobs (the generation queue), stickers.

SQLite, not memory, so that a restart loses nothing: jobs that were queued or being generated
are queued again, and every message the bot sends on its own (candidates, the sticker link) is
recorded as sent right after Telegram accepts it, so a restart never sends it twice.

A job's life (`status`):

    queued -> running -> generated -> delivered -> picked -> making -> done
                                             \\-> skipped, expired (a newer caption came)
    queued / running -> cancelled (/cancel); any step -> failed

Only the bot's event loop uses the connection (the workers write files, never rows), so one
connection without locking suffices; `BEGIN IMMEDIATE` makes each check-then-insert atomic all
the same, in case a second process ever opens the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    chat_id INTEGER NOT NULL,
    first_seen TEXT NOT NULL,
    open_pack INTEGER,
    pending_caption TEXT         -- a caption sent while candidates wait: drawn only if the user says so
);
CREATE TABLE IF NOT EXISTS packs (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    title TEXT NOT NULL,
    name TEXT UNIQUE,            -- reserved before createNewStickerSet, so a restart knows it
    created INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    chat_id INTEGER NOT NULL,
    pack_id INTEGER NOT NULL,
    caption TEXT NOT NULL,
    latin_only INTEGER NOT NULL DEFAULT 0,
    seed INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    day TEXT NOT NULL,           -- UTC date, for the daily quota
    created_at TEXT NOT NULL,
    started_at TEXT,
    seconds REAL,                -- the worker's wall time for the job, for the wait estimates
    candidates TEXT,             -- JSON list of image paths, best first
    new_image_chance REAL,       -- chance that one more attempt draws an unseen image (0: never)
    read_as TEXT,                -- how the model read the caption («кролик · синий»), if it says
    notes TEXT,                  -- JSON list of generation warnings
    start_notice_sent INTEGER NOT NULL DEFAULT 0,
    media_sent INTEGER NOT NULL DEFAULT 0,
    keyboard_message_id INTEGER,
    progress_message_id INTEGER, -- the job's «Рисую… 40 %» message while it shows; deleted at the end
    choice INTEGER,
    emoji TEXT,                  -- JSON list
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, id);
CREATE INDEX IF NOT EXISTS jobs_by_user ON jobs (user_id, day);
CREATE TABLE IF NOT EXISTS stickers (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL UNIQUE,
    pack_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    file_id TEXT,
    emoji TEXT NOT NULL,
    position INTEGER NOT NULL,   -- the set's size once this sticker is in (resume checks it)
    added INTEGER NOT NULL DEFAULT 0,
    link_sent INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    key TEXT PRIMARY KEY,        -- e.g. PTB's conversation states as JSON (persistence.py)
    value TEXT NOT NULL
);
"""

# Columns added since the first release: a state file made before them gains them when opened.
ADDED_COLUMNS = {
    "users": {"pending_caption": "TEXT"},
    "jobs": {"new_image_chance": "REAL", "read_as": "TEXT", "progress_message_id": "INTEGER"},
}

# Jobs that hold a place in the queue (and count as the user's one active job).
WAITING = ("queued", "running", "generated")
_WAITING_SQL = "(" + ", ".join(f"'{status}'" for status in WAITING) + ")"


class LimitReached(Exception):
    """A job refused by a limit: `kind` is busy, quota or queue-full."""

    def __init__(self, kind: str, detail: int = 0):
        super().__init__(kind)
        self.kind = kind
        self.detail = detail  # quota: the daily quota; queue-full: the queue length


@dataclasses.dataclass(frozen=True)
class Job:
    id: int
    user_id: int
    chat_id: int
    pack_id: int
    caption: str
    latin_only: bool
    seed: int
    status: str
    candidates: list[str]
    notes: list[str]
    start_notice_sent: bool
    media_sent: bool
    keyboard_message_id: int | None
    choice: int | None
    emoji: list[str]
    new_image_chance: float | None  # None: not measured (a job from before the column existed)
    read_as: str | None  # how the model read the caption; None for a model that does not say
    progress_message_id: int | None  # the status message showing the job's progress, if one was sent

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"],
            user_id=row["user_id"],
            chat_id=row["chat_id"],
            pack_id=row["pack_id"],
            caption=row["caption"],
            latin_only=bool(row["latin_only"]),
            seed=row["seed"],
            status=row["status"],
            candidates=json.loads(row["candidates"] or "[]"),
            notes=json.loads(row["notes"] or "[]"),
            start_notice_sent=bool(row["start_notice_sent"]),
            media_sent=bool(row["media_sent"]),
            keyboard_message_id=row["keyboard_message_id"],
            choice=row["choice"],
            emoji=json.loads(row["emoji"] or "[]"),
            new_image_chance=row["new_image_chance"],
            read_as=row["read_as"],
            progress_message_id=row["progress_message_id"],
        )


@dataclasses.dataclass(frozen=True)
class Pack:
    id: int
    user_id: int
    title: str
    name: str | None
    created: bool
    stickers: int  # stickers added to the set so far


@dataclasses.dataclass(frozen=True)
class Sticker:
    id: int
    job_id: int
    pack_id: int
    path: str
    file_id: str | None
    emoji: list[str]
    position: int
    added: bool
    link_sent: bool


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Store:
    def __init__(self, path: str | Path, clock: Callable[[], dt.datetime] = _utc_now):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        # isolation_level=None: transactions are explicit (`_transaction`), everything else autocommits.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a sent message must stay recorded through a crash
        self.db.executescript(SCHEMA)
        self._add_missing_columns()

    def close(self) -> None:
        self.db.close()

    def _add_missing_columns(self) -> None:
        for table, columns in ADDED_COLUMNS.items():
            have = {row["name"] for row in self.db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns.items():
                if name not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _now(self) -> str:
        return self.clock().isoformat(timespec="seconds")

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        return self.db.execute(sql, args).fetchone()

    # ----- users and packs -----

    def touch_user(self, user_id: int, chat_id: int) -> None:
        self.db.execute(
            "INSERT INTO users (id, chat_id, first_seen) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET chat_id = excluded.chat_id",
            (user_id, chat_id, self._now()),
        )

    def new_pack(self, user_id: int, chat_id: int, title: str) -> Pack:
        self.touch_user(user_id, chat_id)
        with self._transaction() as db:
            pack_id = db.execute(
                "INSERT INTO packs (user_id, title, created_at) VALUES (?, ?, ?)",
                (user_id, title, self._now()),
            ).lastrowid
            db.execute("UPDATE users SET open_pack = ? WHERE id = ?", (pack_id, user_id))
        return self.pack(pack_id)

    def open_pack(self, user_id: int) -> Pack | None:
        row = self._one("SELECT open_pack FROM users WHERE id = ?", user_id)
        return self.pack(row["open_pack"]) if row and row["open_pack"] else None

    def close_pack(self, user_id: int) -> None:
        self.db.execute("UPDATE users SET open_pack = NULL WHERE id = ?", (user_id,))

    def set_pending_caption(self, user_id: int, caption: str | None) -> None:
        """Keep a caption that waits for the user's word (None forgets it)."""
        self.db.execute("UPDATE users SET pending_caption = ? WHERE id = ?", (caption, user_id))

    def pending_caption(self, user_id: int) -> str | None:
        row = self._one("SELECT pending_caption FROM users WHERE id = ?", user_id)
        return row["pending_caption"] if row else None

    def pack(self, pack_id: int) -> Pack:
        row = self._one(
            "SELECT packs.*, (SELECT COUNT(*) FROM stickers WHERE pack_id = packs.id AND added) AS n "
            "FROM packs WHERE id = ?",
            pack_id,
        )
        if row is None:
            raise KeyError(f"no pack {pack_id}")
        return Pack(row["id"], row["user_id"], row["title"], row["name"], bool(row["created"]), row["n"])

    def packs_of(self, user_id: int) -> list[Pack]:
        rows = self.db.execute("SELECT id FROM packs WHERE user_id = ? ORDER BY id", (user_id,)).fetchall()
        return [self.pack(row["id"]) for row in rows]

    def name_taken(self, name: str, pack_id: int) -> bool:
        """Whether another pack of this bot already holds `name` (case-insensitive, like Telegram)."""
        row = self._one("SELECT 1 FROM packs WHERE lower(name) = lower(?) AND id != ?", name, pack_id)
        return row is not None

    def reserve_name(self, pack_id: int, name: str) -> None:
        self.db.execute("UPDATE packs SET name = ? WHERE id = ?", (name, pack_id))

    def mark_created(self, pack_id: int) -> None:
        self.db.execute("UPDATE packs SET created = 1 WHERE id = ?", (pack_id,))

    # ----- the queue -----

    def enqueue(
        self,
        user_id: int,
        chat_id: int,
        pack_id: int,
        caption: str,
        latin_only: bool,
        base_seed: int,
        daily_quota: int,
        max_queue: int,
    ) -> Job:
        """Queue a caption, or raise LimitReached; older candidates of the user stop being pickable."""
        now = self.clock()
        day = now.date().isoformat()
        with self._transaction() as db:
            if db.execute(
                f"SELECT 1 FROM jobs WHERE user_id = ? AND status IN {_WAITING_SQL}", (user_id,)
            ).fetchone():
                raise LimitReached("busy")
            used = db.execute("SELECT COUNT(*) FROM jobs WHERE user_id = ? AND day = ?", (user_id, day))
            if used.fetchone()[0] >= daily_quota:
                raise LimitReached("quota", daily_quota)
            waiting = db.execute(f"SELECT COUNT(*) FROM jobs WHERE status IN {_WAITING_SQL}").fetchone()[0]
            if waiting >= max_queue:
                raise LimitReached("queue-full", waiting)
            db.execute(
                "UPDATE jobs SET status = 'expired' WHERE user_id = ? AND status = 'delivered'", (user_id,)
            )
            job_id = db.execute(
                "INSERT INTO jobs (user_id, chat_id, pack_id, caption, latin_only, status, day, created_at) "
                "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                (user_id, chat_id, pack_id, caption, int(latin_only), day, now.isoformat(timespec="seconds")),
            ).lastrowid
            # Each job its own seed: a regenerated caption differs, a resumed job repeats exactly.
            db.execute("UPDATE jobs SET seed = ? WHERE id = ?", (base_seed + job_id, job_id))
        return self.job(job_id)

    def job(self, job_id: int) -> Job:
        row = self._one("SELECT * FROM jobs WHERE id = ?", job_id)
        if row is None:
            raise KeyError(f"no job {job_id}")
        return Job.from_row(row)

    def place(self, job_id: int) -> int:
        """1 for the job being generated (or first in line), 2 for the next, and so on."""
        row = self._one(f"SELECT COUNT(*) FROM jobs WHERE status IN {_WAITING_SQL} AND id <= ?", job_id)
        return int(row[0])

    def waiting_count(self) -> int:
        return int(self._one(f"SELECT COUNT(*) FROM jobs WHERE status IN {_WAITING_SQL}")[0])

    def active_job(self, user_id: int) -> Job | None:
        """The user's job that holds a place in the queue, if any."""
        row = self._one(
            f"SELECT * FROM jobs WHERE user_id = ? AND status IN {_WAITING_SQL} ORDER BY id DESC", user_id
        )
        return Job.from_row(row) if row else None

    def latest_job(self, user_id: int, statuses: tuple[str, ...]) -> Job | None:
        marks = ",".join("?" * len(statuses))
        row = self._one(
            f"SELECT * FROM jobs WHERE user_id = ? AND status IN ({marks}) ORDER BY id DESC",
            user_id,
            *statuses,
        )
        return Job.from_row(row) if row else None

    def jobs_today(self, user_id: int) -> int:
        day = self.clock().date().isoformat()
        return int(self._one("SELECT COUNT(*) FROM jobs WHERE user_id = ? AND day = ?", user_id, day)[0])

    def claim_next(self) -> Job | None:
        """The oldest job to work on: one whose generation finished but was not delivered comes
        first (after a restart), then the oldest queued one, which becomes `running`."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE status = 'generated' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                row = db.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
                if row is None:
                    return None
                db.execute(
                    "UPDATE jobs SET status = 'running', started_at = ? WHERE id = ?",
                    (self._now(), row["id"]),
                )
        return self.job(row["id"])

    def resume_interrupted(self) -> int:
        """After a restart: jobs cut off mid-generation are queued again (they keep their place)."""
        return self.db.execute("UPDATE jobs SET status = 'queued' WHERE status = 'running'").rowcount

    def set_status(self, job_id: int, status: str, *, only_from: tuple[str, ...] | None = None) -> bool:
        """Move a job to `status`; with `only_from`, only if it is in one of those (returns whether)."""
        if only_from is None:
            return self.db.execute("UPDATE jobs SET status = ? WHERE id = ?", (status, job_id)).rowcount == 1
        marks = ",".join("?" * len(only_from))
        cursor = self.db.execute(
            f"UPDATE jobs SET status = ? WHERE id = ? AND status IN ({marks})", (status, job_id, *only_from)
        )
        return cursor.rowcount == 1

    def fail(self, job_id: int, error: str) -> None:
        self.db.execute("UPDATE jobs SET status = 'failed', error = ? WHERE id = ?", (error, job_id))

    def mark_start_notice(self, job_id: int) -> None:
        self.db.execute("UPDATE jobs SET start_notice_sent = 1 WHERE id = ?", (job_id,))

    def finish_generation(
        self,
        job_id: int,
        candidates: list[str],
        notes: list[str],
        seconds: float,
        new_image_chance: float | None = None,
        read_as: str | None = None,
    ) -> bool:
        """Record the candidates; False when the job was cancelled meanwhile (they are then unused)."""
        cursor = self.db.execute(
            "UPDATE jobs SET status = 'generated', candidates = ?, notes = ?, seconds = ?, "
            "new_image_chance = ?, read_as = ? WHERE id = ? AND status = 'running'",
            (
                json.dumps(candidates),
                json.dumps(notes, ensure_ascii=False),
                seconds,
                new_image_chance,
                read_as,
                job_id,
            ),
        )
        return cursor.rowcount == 1

    def set_progress_message(self, job_id: int, message_id: int | None) -> None:
        """Remember the job's status message (None: it is gone), so a restart deletes a stale one."""
        self.db.execute("UPDATE jobs SET progress_message_id = ? WHERE id = ?", (message_id, job_id))

    def mark_media_sent(self, job_id: int) -> None:
        self.db.execute("UPDATE jobs SET media_sent = 1 WHERE id = ?", (job_id,))

    def mark_delivered(self, job_id: int, keyboard_message_id: int) -> None:
        self.db.execute(
            "UPDATE jobs SET status = 'delivered', keyboard_message_id = ? WHERE id = ? AND status = 'generated'",
            (keyboard_message_id, job_id),
        )

    def recent_seconds(self, last: int = 9) -> list[float]:
        """How long the last `last` timed jobs took, newest first (none before the first job)."""
        rows = self.db.execute(
            "SELECT seconds FROM jobs WHERE seconds IS NOT NULL ORDER BY id DESC LIMIT ?", (last,)
        ).fetchall()
        return [float(row[0]) for row in rows]

    def pick(self, job_id: int, choice: int) -> bool:
        cursor = self.db.execute(
            "UPDATE jobs SET status = 'picked', choice = ? WHERE id = ? AND status = 'delivered'",
            (choice, job_id),
        )
        return cursor.rowcount == 1

    def start_making(self, job_id: int, emoji: list[str]) -> bool:
        cursor = self.db.execute(
            "UPDATE jobs SET status = 'making', emoji = ? WHERE id = ? AND status = 'picked'",
            (json.dumps(emoji, ensure_ascii=False), job_id),
        )
        return cursor.rowcount == 1

    def jobs_in(self, status: str) -> list[Job]:
        rows = self.db.execute("SELECT * FROM jobs WHERE status = ? ORDER BY id", (status,)).fetchall()
        return [Job.from_row(row) for row in rows]

    def cancel(self, user_id: int) -> Job | None:
        """Cancel the user's queued or running job (a running one finishes unseen); returns it."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE user_id = ? AND status IN ('queued', 'running', 'generated', "
                "'delivered', 'picked') ORDER BY id DESC",
                (user_id,),
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET status = 'cancelled' WHERE id = ?", (row["id"],))
        return Job.from_row(row)

    # ----- stickers -----

    def sticker_for(self, job_id: int) -> Sticker | None:
        row = self._one("SELECT * FROM stickers WHERE job_id = ?", job_id)
        if row is None:
            return None
        return Sticker(
            row["id"],
            row["job_id"],
            row["pack_id"],
            row["path"],
            row["file_id"],
            json.loads(row["emoji"]),
            row["position"],
            bool(row["added"]),
            bool(row["link_sent"]),
        )

    def record_sticker(
        self, job_id: int, pack_id: int, path: str, emoji: list[str], position: int
    ) -> Sticker:
        self.db.execute(
            "INSERT INTO stickers (job_id, pack_id, path, emoji, position, created_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (job_id) DO UPDATE SET path = excluded.path",
            (job_id, pack_id, path, json.dumps(emoji, ensure_ascii=False), position, self._now()),
        )
        sticker = self.sticker_for(job_id)
        assert sticker is not None
        return sticker

    def set_file_id(self, job_id: int, file_id: str) -> None:
        self.db.execute("UPDATE stickers SET file_id = ? WHERE job_id = ?", (file_id, job_id))

    def mark_added(self, job_id: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE stickers SET added = 1 WHERE job_id = ?", (job_id,))
            db.execute("UPDATE jobs SET status = 'done' WHERE id = ?", (job_id,))

    def mark_link_sent(self, job_id: int) -> None:
        self.db.execute("UPDATE stickers SET link_sent = 1 WHERE job_id = ?", (job_id,))

    def unsent_links(self) -> list[Sticker]:
        rows = self.db.execute(
            "SELECT job_id FROM stickers WHERE added AND NOT link_sent ORDER BY id"
        ).fetchall()
        return [s for row in rows if (s := self.sticker_for(row["job_id"])) is not None]

    # ----- small named texts (PTB's conversation states, see persistence.py) -----

    def get_text(self, key: str) -> str:
        row = self._one("SELECT value FROM blobs WHERE key = ?", key)
        return row["value"] if row else ""

    def set_text(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO blobs (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
