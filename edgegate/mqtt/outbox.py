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

- rows are published only after their COMMIT returned: the in-memory tail the publisher
  reads from (below) takes them only then;
- only this connection writes ``outbox.db``: it keeps the row count, the counters and the
  id sequence in memory and inserts rows with their id and ``seq`` already assigned.

:class:`AsyncOutbox` runs every database call on one dedicated thread so that an fsync never
stalls the event loop (serial reads keep flowing while a decision commits) and the
connection is only ever used from that thread. Appends use group commit: those queued while
a commit is in flight go into the next transaction together — one multi-row INSERT, one
fsync — and each caller still returns only once its own events are durable; a group that
fails (its payload builder raises, its ``event_id`` is taken) fails alone. Rows committed
by this process are kept in a bounded in-memory tail, so the publisher takes new rows
without a query and without waiting behind the next commit's fsync; anything older, or
anything after a drop, comes from the table.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
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
# How much just-committed payload the outbox keeps in memory for the publisher; past it
# (a broker away for long), the publisher reads from the table until it has caught up.
TAIL_MAX_BYTES = 16 * 1024 * 1024
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


class _Tail:
    """The unsent rows committed lately, in memory, so that the publisher can take them
    without a query — and without queueing behind the next commit's fsync.

    Invariant: ``rows`` are exactly the table's unsent rows with an id above ``floor``,
    oldest first. Rows join only after their COMMIT returned (never published before they
    are durable); rows about to be retired or marked sent leave before the table changes;
    anything else that could break the invariant (a drop, ``unsend_all``, a failed write,
    the memory bound) resets the tail — empties it and raises ``floor`` to the newest id —
    which only sends readers back to the table. The outbox thread writes, the event loop
    reads (:meth:`take`), hence the lock.
    """

    def __init__(self, floor: int, max_bytes: int) -> None:
        self._lock = threading.Lock()
        self._rows: deque[OutboxRow] = deque()
        self._bytes = 0
        self._floor = floor
        self._max_bytes = max_bytes

    def take(self, limit: int, after_id: int) -> list[OutboxRow] | None:
        """Up to ``limit`` unsent rows after ``after_id``; None when only the table knows."""
        with self._lock:
            if after_id < self._floor:
                return None
            rows = self._rows
            # A reader past these rows has them: they leave, and the floor follows it.
            while rows and rows[0].id <= after_id:
                self._bytes -= len(rows.popleft().payload)
            self._floor = after_id
            return list(islice(rows, limit))

    def extend(self, committed: Sequence[OutboxRow], newest_id: int) -> None:
        with self._lock:
            for row in committed:
                if row.id > self._floor:
                    self._rows.append(row)
                    self._bytes += len(row.payload)
            if self._bytes > self._max_bytes:
                self._reset(newest_id)

    def discard(self, ids: Collection[int] = (), event_ids: Collection[str] = ()) -> None:
        with self._lock:
            rows = self._rows
            if not rows or not (ids or event_ids):
                return
            if not event_ids and (max(ids) < rows[0].id or min(ids) > rows[-1].id):
                return  # the usual case: what is retired was taken from the tail long ago
            wanted = set(ids)
            named = set(event_ids)
            kept = [r for r in self._rows if r.id not in wanted and r.event_id not in named]
            self._rows = deque(kept)
            self._bytes = sum(len(row.payload) for row in kept)

    def reset(self, newest_id: int) -> None:
        with self._lock:
            self._reset(newest_id)

    def _reset(self, newest_id: int) -> None:
        self._rows.clear()
        self._bytes = 0
        self._floor = max(self._floor, newest_id)


class Outbox:
    """Synchronous core; use it from exactly one thread (see :class:`AsyncOutbox`) — all
    but :meth:`fresh`, which any thread may call."""

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
        # Only this connection writes, so counters and the id sequence are kept here too, and
        # rows are inserted with their id and seq already known (no read-back per row).
        # AUTOINCREMENT's sequence: the largest id ever used, even by a row since deleted.
        sequence = connection.execute(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0), "
            "coalesce((SELECT max(id) FROM outbox), 0))"
        ).fetchone()[0]
        self._newest_id = int(sequence)
        self._counters = {
            str(name): int(value)
            for name, value in connection.execute("SELECT name, value FROM counters")
        }
        self._tail = _Tail(self._newest_id, TAIL_MAX_BYTES)
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
        [outcome] = self.append_groups([events])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def append_groups(self, groups: Sequence[Sequence[NewEvent]]) -> list[Appended | Exception]:
        """Store several callers' groups in one transaction: one commit, one fsync (group
        commit). Each group is all or none on its own — a group whose payload builder raises
        or whose ``event_id`` is taken stores nothing and takes no counter value, and its
        exception is its outcome; the others commit. When every group failed nothing is
        committed. A dropped-rows report (``Appended.dropped``) goes with the last group
        stored, whose rows are what crossed the limit.

        All rows go in with one multi-row INSERT: each statement lets go of the GIL and must
        win it back from a busy event loop, so statements per commit — not per event — is
        what keeps a commit short. A taken ``event_id`` fails that INSERT as a whole; then
        the transaction is done again group by group to find the culprit, so payload
        builders must be pure (they may run twice).

        Raises only when the transaction itself fails; then no group is stored.
        """
        try:
            return self._append_groups(groups, one_by_one=False)
        except sqlite3.IntegrityError:
            return self._append_groups(groups, one_by_one=True)

    def _append_groups(
        self, groups: Sequence[Sequence[NewEvent]], *, one_by_one: bool
    ) -> list[Appended | Exception]:
        now = self._clock()
        staging = _Staging(dict(self._counters), self._newest_id)
        outcomes: list[Appended | Exception] = []
        stored: list[_Staged] = []
        last: int | None = None
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for events in groups:
                try:
                    group = staging.stage(events, now)
                except Exception as exc:  # the caller's payload builder: its group fails
                    outcomes.append(exc)
                    continue
                if one_by_one:
                    db.execute("SAVEPOINT grp")
                    try:
                        _insert_rows(db, group.rows)
                    except sqlite3.IntegrityError as exc:
                        db.execute("ROLLBACK TO grp")
                        db.execute("RELEASE grp")
                        outcomes.append(exc)
                        continue
                    db.execute("RELEASE grp")
                staging.keep(group)
                stored.append(group)
                last = len(outcomes)
                outcomes.append(Appended(group.seqs))
            if last is None:
                db.execute("ROLLBACK")
                return outcomes
            rows = [row for group in stored for row in group.rows]
            if not one_by_one:
                _insert_rows(db, rows)
            dropped, depth, alarm = self._enforce(db, staging, now, self._depth + len(rows))
            staging.save_counters(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._committed(staging, depth, dropped, rows)
        if dropped is not None:
            outcomes[last] = Appended(stored[-1].seqs, dropped, alarm)
        return outcomes

    def expire(self) -> Appended:
        """Enforce the limits without appending (rows may age out while nothing happens)."""
        now = self._clock()
        staging = _Staging(dict(self._counters), self._newest_id)
        with self._transaction() as db:
            dropped, depth, alarm = self._enforce(db, staging, now, self._depth)
            staging.save_counters(db)
        self._committed(staging, depth, dropped, [])
        return Appended((), dropped, alarm)

    def _enforce(
        self, db: sqlite3.Connection, staging: _Staging, now: float, depth: int
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
        # Before the rows go: a reader must not take one of them and publish it after all.
        self._tail.reset(self._newest_id)
        db.execute("DELETE FROM outbox WHERE id <= ?", (cutoff_id,))
        depth -= dropped.count
        if self._overflow_event is None:
            return dropped, depth, None
        alarm = self._overflow_event(dropped)
        group = staging.stage([alarm], now)
        _insert_rows(db, group.rows)
        staging.keep(group)
        return dropped, depth + 1, alarm.event_id

    def _committed(
        self, staging: _Staging, depth: int, dropped: Dropped | None, rows: Sequence[_Row]
    ) -> None:
        """Bookkeeping after COMMIT (a rolled-back transaction changes none of it)."""
        self._counters = staging.counters
        self._newest_id = staging.last_id
        self._commit_drop(depth, dropped)
        if dropped is None:
            self._tail.extend([OutboxRow(*row[:6]) for row in rows], self._newest_id)
        else:
            self._tail.reset(self._newest_id)

    def _commit_drop(self, depth: int, dropped: Dropped | None) -> None:
        # Called only after COMMIT: a rolled-back transaction changes no bookkeeping.
        self._depth = depth
        if dropped is not None:
            self.dropped += dropped.count

    def fresh(self, limit: int, after_id: int) -> list[OutboxRow] | None:
        """What :meth:`pending` would return, from memory — or None when only the table
        knows (rows from before this process, or after a drop). Safe from any thread."""
        return self._tail.take(limit, after_id)

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
        with self._leaving_tail(ids=ids), self._transaction(durable=False) as db:
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                removed += db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk).rowcount
        self._depth -= removed

    def mark_sent(self, ids: Sequence[int]) -> None:
        """Record the PUBACK of rows that stay until the back office acknowledges them."""
        if not ids:
            return
        now = self._clock()
        with self._leaving_tail(ids=ids), self._transaction(durable=False) as db:
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                db.execute(f"UPDATE outbox SET sent_at = ? WHERE id IN ({marks})", (now, *chunk))

    def acknowledge(self, event_ids: Sequence[str]) -> int:
        """Delete the rows the back office acknowledged; returns how many were still here."""
        if not event_ids:
            return 0
        removed = 0
        with self._leaving_tail(event_ids=event_ids), self._transaction(durable=False) as db:
            for chunk in _chunks(event_ids):
                marks = ",".join("?" * len(chunk))
                removed += db.execute(
                    f"DELETE FROM outbox WHERE event_id IN ({marks})", chunk
                ).rowcount
        self._depth -= removed
        return removed

    def unsend_all(self) -> None:
        """Make every sent but unacknowledged row due again (after a reconnect)."""
        # Those rows are older than anything in the tail: readers find them in the table.
        self._tail.reset(self._newest_id)
        self._db.execute("UPDATE outbox SET sent_at = NULL WHERE sent_at IS NOT NULL")

    @contextmanager
    def _leaving_tail(
        self, ids: Collection[int] = (), event_ids: Collection[str] = ()
    ) -> Iterator[None]:
        """Rows about to stop being unsent leave the tail first; if the change fails, the
        tail is reset (they are unsent after all, and only the table says so)."""
        self._tail.discard(ids, event_ids)
        try:
            yield
        except BaseException:
            self._tail.reset(self._newest_id)
            raise

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


@dataclass(frozen=True, slots=True)
class _Queued:
    """One caller's events awaiting the next group commit, and where its outcome goes."""

    events: list[NewEvent]
    done: asyncio.Future[Appended]


# An outbox row as inserted: id, event_id, topic, payload, qos, created_at, counter, seq.
_Row = tuple[int, str, str, bytes, int, float, str, int]
_INSERT = "INSERT INTO outbox(id, event_id, topic, payload, qos, created_at, counter, seq) VALUES "
# 8 parameters per row: 400 rows stay far below SQLite's limit on host parameters.
_INSERT_CHUNK = 400


def _insert_rows(db: sqlite3.Connection, rows: Sequence[_Row]) -> None:
    """One multi-row INSERT per chunk: one statement, one GIL release, however many rows."""
    for start in range(0, len(rows), _INSERT_CHUNK):
        chunk = rows[start : start + _INSERT_CHUNK]
        db.execute(
            _INSERT + ",".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk)),
            [value for row in chunk for value in row],
        )


@dataclass(frozen=True, slots=True)
class _Staged:
    """One group's rows with their ids and seqs, and the counters they leave behind."""

    seqs: tuple[int, ...]
    rows: list[_Row]
    counters: dict[str, int]
    last_id: int


@dataclass(slots=True)
class _Staging:
    """Counter values and the id sequence within one transaction; the outbox takes them
    over only after COMMIT. A group is staged (ids, seqs, payloads built) and then kept, or
    dropped without a trace when its payload builder or its INSERT fails."""

    counters: dict[str, int]
    last_id: int
    touched: set[str] = field(default_factory=set)

    def stage(self, events: Sequence[NewEvent], now: float) -> _Staged:
        counters: dict[str, int] = {}
        rows: list[_Row] = []
        row_id = self.last_id
        for event in events:
            seq = counters.get(event.counter, self.counters.get(event.counter, 0)) + 1
            counters[event.counter] = seq
            payload = event.make_payload(seq)
            row_id += 1
            rows.append(
                (row_id, event.event_id, event.topic, payload, event.qos, now, event.counter, seq)
            )
        return _Staged(tuple(row[7] for row in rows), rows, counters, row_id)

    def keep(self, group: _Staged) -> None:
        self.counters.update(group.counters)
        self.touched.update(group.counters)
        self.last_id = group.last_id

    def save_counters(self, db: sqlite3.Connection) -> None:
        if not self.touched:
            return
        names = sorted(self.touched)
        db.execute(
            "INSERT INTO counters(name, value) VALUES "
            + ",".join(["(?, ?)"] * len(names))
            + " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            [value for name in names for value in (name, self.counters[name])],
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
        # Appends waiting for the next group commit, shared with the outbox thread.
        self._queue_lock = threading.Lock()
        self._queued: list[_Queued] = []
        self._commit_scheduled = False

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
        """Store ``events`` (all or none); returns once they are durable (fsync'd).

        Group commit: appends made while a commit is in flight go into the next single
        transaction together, so concurrent producers share one fsync, and each still
        returns only after its own events are on disk. An append is queued before this
        coroutine first suspends and is committed and announced even if the caller is
        cancelled meanwhile — a stored event never goes unannounced.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Appended] = loop.create_future()
        with self._queue_lock:
            self._queued.append(_Queued(list(events), done))
            schedule = not self._commit_scheduled
            self._commit_scheduled = True
        if schedule:
            self._thread.submit(self._commit_queued, loop)
        return await done

    def _commit_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the outbox thread: commit everything queued so far in one transaction."""
        with self._queue_lock:
            queued, self._queued = self._queued, []
            self._commit_scheduled = False
        outcomes: list[Appended | BaseException]
        try:
            outcomes = list(self._outbox.append_groups([q.events for q in queued]))
        except BaseException as exc:  # delivered to every waiter; none of them was stored
            outcomes = [exc] * len(queued)
        loop.call_soon_threadsafe(self._committed, queued, outcomes)

    def _committed(
        self, queued: Sequence[_Queued], outcomes: Sequence[Appended | BaseException]
    ) -> None:
        """On the event loop: announce the commit, then wake each waiter with its outcome."""
        for outcome in outcomes:
            if isinstance(outcome, Appended):
                self._announce(outcome)
        for waiter, outcome in zip(queued, outcomes, strict=True):
            if waiter.done.cancelled():
                if isinstance(outcome, BaseException):
                    # Nobody waits for it any more; still, a failed append is never silent.
                    log.error("outbox.append_failed", error=f"{type(outcome).__name__}: {outcome}")
                continue
            if isinstance(outcome, BaseException):
                waiter.done.set_exception(outcome)
            else:
                waiter.done.set_result(outcome)

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
        """Unsent rows after ``after_id``, oldest first: from memory when the outbox has
        them there (no thread hop, no wait behind a commit), else from the table."""
        rows = self._outbox.fresh(limit, after_id)
        if rows is not None:
            return rows
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
