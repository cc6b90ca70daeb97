"""The durable outbox: every event is committed to SQLite before the gate acts or publishes.

Owns ``outbox.db`` in the state directory. SQLite in WAL mode with ``synchronous=FULL``:
once :meth:`Outbox.append` returns, the event survives a power cut (DESIGN.md §10).

A row's life: appended (unsent) → published, then either deleted on PUBACK
(``mqtt.ack = "puback"``: :meth:`Outbox.retire`) or marked sent and kept until the back
office names it on ``G/ack`` (``mqtt.ack = "app"``: :meth:`Outbox.mark_sent`, then
:meth:`Outbox.acknowledge`). A sent row that stays unacknowledged is published again.

Invariants:
- rows leave the outbox only through retire / acknowledge, or through the limits below;
- :meth:`Outbox.pending` yields rows oldest first (by insertion id, which only grows);
- a named counter (the per-gate decision ``seq``) is bumped in the same transaction that
  stores the event carrying it, so ``seq`` only grows, across restarts and crashes too;
- ``event_id`` is unique: the same event can never be stored twice;
- the outbox is bounded: past ``max_rows`` rows, or for rows older than ``max_age_s``, the
  oldest rows are dropped — and the ``outbox_overflow`` alarm naming them is stored in the
  very transaction that drops them, so a drop is never silent, even across a crash.

:class:`AsyncOutbox` runs every database call on one dedicated thread so that an fsync never
stalls the event loop (serial reads keep flowing while a decision commits) and the
connection is only ever used from that thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, ParamSpec, Self, TypeVar

import structlog

log = structlog.get_logger(__name__)

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
# Columns added after the first release; an older outbox.db gains them when it is opened.
_ADDED_COLUMNS = {
    "counter": "ALTER TABLE outbox ADD COLUMN counter TEXT",
    "seq": "ALTER TABLE outbox ADD COLUMN seq INTEGER",
    # NULL = not yet published in this session; else when the last PUBACK for it came back.
    "sent_at": "ALTER TABLE outbox ADD COLUMN sent_at REAL",
}
_ROW = "id, event_id, topic, payload, qos, created_at"
# SQLite's default limit on host parameters is 32766; stay far below it per statement.
_CHUNK = 500

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
class NewEvent:
    """An event to store; ``make_payload`` receives the value ``counter`` takes for it."""

    topic: str
    event_id: str
    make_payload: Callable[[int], bytes]
    counter: str
    qos: int = 1


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    max_rows: int = 200_000
    max_age_s: float = 30 * 86400

    @property
    def headroom(self) -> int:
        # An overflow drops 1 % more than it must, so that a flood against a dead broker
        # costs one alarm per chunk of events, not one alarm (and one more drop) per event.
        return max(1, self.max_rows // 100)


@dataclass(frozen=True, slots=True)
class SeqRange:
    """Dropped rows of one counter: ``first``–``last`` (``count`` rows, gaps possible)."""

    counter: str
    first: int
    last: int
    count: int


@dataclass(frozen=True, slots=True)
class Dropped:
    """What one enforcement of the limits removed, for the ``outbox_overflow`` alarm."""

    reason: Literal["max_rows", "max_age"]
    count: int
    ranges: tuple[SeqRange, ...]
    first_event_id: str
    last_event_id: str
    oldest_created_at: float
    newest_created_at: float

    def describe(self) -> str:
        spans = ", ".join(
            f"{r.counter} seq {r.first}"
            + (f"-{r.last}" if r.last != r.first else "")
            + f" ({r.count})"
            for r in self.ranges
        )
        return (
            f"dropped {self.count} events not yet delivered ({self.reason}): {spans}; "
            f"event_ids {self.first_event_id} .. {self.last_event_id}"
        )


OverflowEvent = Callable[[Dropped], NewEvent]


@dataclass(frozen=True, slots=True)
class Appended:
    seqs: tuple[int, ...]
    dropped: Dropped | None = None
    alarm_event_id: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    oldest_age_s: float | None
    awaiting_ack: int = 0
    dropped: int = 0


class Outbox:
    """Synchronous core; use it from exactly one thread (see :class:`AsyncOutbox`)."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        clock: Callable[[], float],
        limits: OutboxLimits,
        overflow_event: OverflowEvent | None,
    ) -> None:
        self._db = connection
        self._clock = clock
        self._limits = limits
        self._overflow_event = overflow_event
        # Only this connection writes, so the row count can be kept instead of counted.
        self._depth = int(connection.execute("SELECT count(*) FROM outbox").fetchone()[0])
        self.dropped = 0

    @classmethod
    def open(
        cls,
        path: Path,
        clock: Callable[[], float] = time.time,
        *,
        limits: OutboxLimits | None = None,
        overflow_event: OverflowEvent | None = None,
    ) -> Self:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before append() returns — the gate acts only after that.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
        for column, ddl in _ADDED_COLUMNS.items():
            if column not in columns:
                db.execute(ddl)
        return cls(db, clock, limits or OutboxLimits(), overflow_event)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; ``durable=False`` commits without an fsync of its own.

        For bookkeeping after delivery (retire, mark sent, acknowledge): lost in a power cut,
        such a commit only makes an event go out once more — and the next durable commit
        fsyncs the WAL with it anyway. Appends are always durable.
        """
        db = self._db
        if not durable:
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            if not durable:
                db.execute("PRAGMA synchronous=FULL")

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
        return self.append_all([NewEvent(topic, event_id, make_payload, counter, qos)]).seqs[0]

    def append_all(self, events: Sequence[NewEvent]) -> Appended:
        """Store ``events`` in one transaction (all or none), enforcing the limits."""
        now = self._clock()
        with self._transaction() as db:
            seqs = tuple(self._insert(db, event, now) for event in events)
            depth = self._depth + len(events)
            dropped, depth, alarm = self._enforce(db, now, depth)
        self._commit_drop(depth, dropped)
        return Appended(seqs, dropped, alarm)

    def expire(self) -> Appended:
        """Enforce the limits without appending (rows may age out while nothing happens)."""
        now = self._clock()
        with self._transaction() as db:
            dropped, depth, alarm = self._enforce(db, now, self._depth)
        self._commit_drop(depth, dropped)
        return Appended((), dropped, alarm)

    def _insert(self, db: sqlite3.Connection, event: NewEvent, now: float) -> int:
        row = db.execute(
            "INSERT INTO counters(name, value) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
            (event.counter,),
        ).fetchone()
        seq = int(row[0])
        db.execute(
            "INSERT INTO outbox(event_id, topic, payload, qos, created_at, counter, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                event.event_id,
                event.topic,
                event.make_payload(seq),
                event.qos,
                now,
                event.counter,
                seq,
            ),
        )
        return seq

    def _enforce(
        self, db: sqlite3.Connection, now: float, depth: int
    ) -> tuple[Dropped | None, int, str | None]:
        limits = self._limits
        cutoff_id: int | None = None
        reason: Literal["max_rows", "max_age"] = "max_age"
        oldest = db.execute("SELECT created_at FROM outbox ORDER BY id LIMIT 1").fetchone()
        if oldest is not None and float(oldest[0]) < now - limits.max_age_s:
            row = db.execute(
                "SELECT max(id) FROM outbox WHERE created_at < ?", (now - limits.max_age_s,)
            ).fetchone()
            cutoff_id = int(row[0])
        if depth > limits.max_rows:
            # Over the limit, plus room for the alarm itself, plus the headroom.
            excess = depth - limits.max_rows + 1 + limits.headroom
            row = db.execute(
                "SELECT id FROM outbox ORDER BY id LIMIT 1 OFFSET ?", (excess - 1,)
            ).fetchone()
            if cutoff_id is None or int(row[0]) > cutoff_id:
                cutoff_id, reason = int(row[0]), "max_rows"
        if cutoff_id is None:
            return None, depth, None
        dropped = _summarise(db, cutoff_id, reason)
        db.execute("DELETE FROM outbox WHERE id <= ?", (cutoff_id,))
        depth -= dropped.count
        if self._overflow_event is None:
            return dropped, depth, None
        alarm = self._overflow_event(dropped)
        self._insert(db, alarm, now)
        return dropped, depth + 1, alarm.event_id

    def _commit_drop(self, depth: int, dropped: Dropped | None) -> None:
        # Called only after COMMIT: a rolled-back transaction changes no bookkeeping.
        self._depth = depth
        if dropped is not None:
            self.dropped += dropped.count

    def pending(self, limit: int, after_id: int = 0) -> list[OutboxRow]:
        """Unsent rows after ``after_id``, oldest first."""
        rows = self._db.execute(
            f"SELECT {_ROW} FROM outbox WHERE id > ? AND sent_at IS NULL ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [OutboxRow(*row) for row in rows]

    def overdue(self, sent_before: float, limit: int) -> list[OutboxRow]:
        """Sent rows still unacknowledged since before ``sent_before``, oldest first."""
        rows = self._db.execute(
            f"SELECT {_ROW} FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ? "
            "ORDER BY id LIMIT ?",
            (sent_before, limit),
        ).fetchall()
        return [OutboxRow(*row) for row in rows]

    def last_id(self) -> int:
        row = self._db.execute("SELECT max(id) FROM outbox").fetchone()
        return 0 if row[0] is None else int(row[0])

    def retire(self, ids: Sequence[int]) -> None:
        """Delete published rows (PUBACK received): one transaction, one fsync."""
        if not ids:
            return
        removed = 0
        with self._transaction(durable=False) as db:
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                removed += db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk).rowcount
        self._depth -= removed

    def mark_sent(self, ids: Sequence[int]) -> None:
        """Record the PUBACK of rows that stay until the back office acknowledges them."""
        if not ids:
            return
        now = self._clock()
        with self._transaction(durable=False) as db:
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                db.execute(f"UPDATE outbox SET sent_at = ? WHERE id IN ({marks})", (now, *chunk))

    def acknowledge(self, event_ids: Sequence[str]) -> int:
        """Delete the rows the back office acknowledged; returns how many were still here."""
        if not event_ids:
            return 0
        removed = 0
        with self._transaction(durable=False) as db:
            for chunk in _chunks(event_ids):
                marks = ",".join("?" * len(chunk))
                removed += db.execute(
                    f"DELETE FROM outbox WHERE event_id IN ({marks})", chunk
                ).rowcount
        self._depth -= removed
        return removed

    def unsend_all(self) -> None:
        """Make every sent but unacknowledged row due again (after a reconnect)."""
        self._db.execute("UPDATE outbox SET sent_at = NULL WHERE sent_at IS NOT NULL")

    def stats(self) -> OutboxStats:
        oldest = self._db.execute("SELECT created_at FROM outbox ORDER BY id LIMIT 1").fetchone()
        age = None if oldest is None else max(0.0, self._clock() - float(oldest[0]))
        awaiting = self._db.execute(
            "SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL"
        ).fetchone()[0]
        return OutboxStats(
            depth=self._depth, oldest_age_s=age, awaiting_ack=int(awaiting), dropped=self.dropped
        )

    def counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])


def _summarise(
    db: sqlite3.Connection, cutoff_id: int, reason: Literal["max_rows", "max_age"]
) -> Dropped:
    ranges = tuple(
        SeqRange(str(counter), int(first), int(last), int(count))
        for counter, first, last, count in db.execute(
            "SELECT coalesce(counter, '?'), min(coalesce(seq, 0)), max(coalesce(seq, 0)), "
            "count(*) FROM outbox WHERE id <= ? GROUP BY 1 ORDER BY 1",
            (cutoff_id,),
        )
    )
    count, oldest, newest = db.execute(
        "SELECT count(*), min(created_at), max(created_at) FROM outbox WHERE id <= ?",
        (cutoff_id,),
    ).fetchone()
    first = db.execute("SELECT event_id FROM outbox ORDER BY id LIMIT 1").fetchone()[0]
    last = db.execute("SELECT event_id FROM outbox WHERE id = ?", (cutoff_id,)).fetchone()[0]
    return Dropped(
        reason=reason,
        count=int(count),
        ranges=ranges,
        first_event_id=str(first),
        last_event_id=str(last),
        oldest_created_at=float(oldest),
        newest_created_at=float(newest),
    )


def _chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class AsyncOutbox:
    """The outbox for the event loop: every call runs on the outbox's own thread."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self.appended = asyncio.Event()

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        limits: OutboxLimits | None = None,
        overflow_event: OverflowEvent | None = None,
    ) -> Self:
        outbox = await asyncio.to_thread(
            Outbox.open, path, limits=limits, overflow_event=overflow_event
        )
        return cls(outbox)

    async def _call(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args, **kwargs))

    async def append(
        self, topic: str, event_id: str, make_payload: Callable[[int], bytes], *, counter: str
    ) -> int:
        appended = await self.append_all([NewEvent(topic, event_id, make_payload, counter)])
        return appended.seqs[0]

    async def append_all(self, events: Sequence[NewEvent]) -> Appended:
        # Shielded: once the commit has started it must finish and be reported, even if the
        # caller is cancelled meanwhile — otherwise a stored event could go unannounced.
        appended = await asyncio.shield(self._call(self._outbox.append_all, list(events)))
        self._announce(appended)
        return appended

    async def expire(self) -> Appended:
        appended = await asyncio.shield(self._call(self._outbox.expire))
        self._announce(appended)
        return appended

    def _announce(self, appended: Appended) -> None:
        if appended.seqs or appended.alarm_event_id is not None:
            self.appended.set()
        if appended.dropped is not None:
            # The same words as the stored alarm (alarms are always logged as well).
            log.error(
                "alarm",
                kind="outbox_overflow",
                severity="critical",
                detail=appended.dropped.describe(),
                event_id=appended.alarm_event_id,
            )

    async def run_expiry(self, every_s: float) -> None:
        """Age rows out even while nothing is appended (the broker may be gone for days)."""
        while True:
            await asyncio.sleep(every_s)
            await self.expire()

    async def pending(self, limit: int, after_id: int = 0) -> list[OutboxRow]:
        return await self._call(self._outbox.pending, limit, after_id)

    async def overdue(self, sent_before: float, limit: int) -> list[OutboxRow]:
        return await self._call(self._outbox.overdue, sent_before, limit)

    async def last_id(self) -> int:
        return await self._call(self._outbox.last_id)

    async def retire(self, ids: Sequence[int]) -> None:
        await self._call(self._outbox.retire, list(ids))

    async def mark_sent(self, ids: Sequence[int]) -> None:
        await self._call(self._outbox.mark_sent, list(ids))

    async def acknowledge(self, event_ids: Sequence[str]) -> int:
        return await self._call(self._outbox.acknowledge, list(event_ids))

    async def unsend_all(self) -> None:
        await self._call(self._outbox.unsend_all)

    async def stats(self) -> OutboxStats:
        return await self._call(self._outbox.stats)

    async def probe(self) -> None:
        """A round trip through the outbox thread: the watchdog's proof that the writer
        still takes work (a wedged fsync or a held lock would keep it busy)."""
        await self._call(lambda: None)

    async def counter(self, name: str) -> int:
        return await self._call(self._outbox.counter, name)

    async def close(self) -> None:
        await self._call(self._outbox.close)
        self._thread.shutdown(wait=True)
