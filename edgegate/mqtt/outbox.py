"""The durable outbox: every event is committed to SQLite before the gate acts or publishes.

Owns ``outbox.db`` in the state directory. SQLite in WAL mode with ``synchronous=FULL``:
once :meth:`Outbox.append` returns, the event survives a power cut (DESIGN.md §10).

Invariants:
- rows leave the outbox only through :meth:`Outbox.retire` (on PUBACK or back-office ack);
- :meth:`Outbox.pending` yields rows oldest first (by insertion id);
- a named counter (the per-gate decision ``seq``) is bumped in the same transaction that
  stores the event carrying it, so ``seq`` only grows, across restarts and crashes too;
- ``event_id`` is unique: the same event can never be stored twice.

:class:`AsyncOutbox` runs every database call on one dedicated thread so that an fsync never
stalls the event loop (serial reads keep flowing while a decision commits) and the
connection is only ever used from that thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, Self, TypeVar

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT    NOT NULL UNIQUE,
    topic      TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    qos        INTEGER NOT NULL,
    created_at REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    event_id: str
    topic: str
    payload: bytes
    qos: int
    created_at: float


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    oldest_age_s: float | None


class Outbox:
    """Synchronous core; use it from exactly one thread (see :class:`AsyncOutbox`)."""

    def __init__(self, connection: sqlite3.Connection, clock: Callable[[], float]) -> None:
        self._db = connection
        self._clock = clock

    @classmethod
    def open(cls, path: Path, clock: Callable[[], float] = time.time) -> Self:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before append() returns — the gate acts only after that.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        return cls(db, clock)

    def close(self) -> None:
        self._db.close()

    def append(
        self,
        topic: str,
        event_id: str,
        make_payload: Callable[[int], bytes],
        *,
        counter: str,
        qos: int = 1,
    ) -> int:
        """Store one event; ``make_payload`` receives the next value of ``counter``."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "INSERT INTO counters(name, value) VALUES (?, 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
                (counter,),
            ).fetchone()
            seq = int(row[0])
            db.execute(
                "INSERT INTO outbox(event_id, topic, payload, qos, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (event_id, topic, make_payload(seq), qos, self._clock()),
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return seq

    def pending(self, limit: int, after_id: int = 0) -> list[OutboxRow]:
        rows = self._db.execute(
            "SELECT id, event_id, topic, payload, qos, created_at FROM outbox "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [OutboxRow(*row) for row in rows]

    def retire(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def stats(self) -> OutboxStats:
        depth, oldest = self._db.execute("SELECT count(*), min(created_at) FROM outbox").fetchone()
        age = None if oldest is None else max(0.0, self._clock() - float(oldest))
        return OutboxStats(depth=int(depth), oldest_age_s=age)

    def counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])


class AsyncOutbox:
    """The outbox for the event loop: every call runs on the outbox's own thread."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self.appended = asyncio.Event()

    @classmethod
    async def open(cls, path: Path) -> Self:
        return cls(await asyncio.to_thread(Outbox.open, path))

    async def _call(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args, **kwargs))

    async def append(
        self, topic: str, event_id: str, make_payload: Callable[[int], bytes], *, counter: str
    ) -> int:
        # Shielded: once the commit has started it must finish and be reported, even if the
        # caller is cancelled meanwhile — otherwise a stored event could go unannounced.
        seq = await asyncio.shield(
            self._call(self._outbox.append, topic, event_id, make_payload, counter=counter)
        )
        self.appended.set()
        return seq

    async def pending(self, limit: int, after_id: int = 0) -> list[OutboxRow]:
        return await self._call(self._outbox.pending, limit, after_id)

    async def retire(self, ids: Sequence[int]) -> None:
        await self._call(self._outbox.retire, list(ids))

    async def stats(self) -> OutboxStats:
        return await self._call(self._outbox.stats)

    async def close(self) -> None:
        await self._call(self._outbox.close)
        self._thread.shutdown(wait=True)
