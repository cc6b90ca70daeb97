"""The local whitelist: one SQLite file, ``whitelist.db``, in the state directory.

Owns applying verified bundles (DESIGN.md §7 acceptance rules) and every lookup the gate
makes against the whitelist. The daemon and ``edgegate whitelist import|show|stats`` open the
same file at the same time; SQLite's WAL mode lets readers go on while a writer applies.

Layout, and why:
- ``items`` has a column per field and is ``WITHOUT ROWID``: it is the table that grows to
  millions of rows and is read on every passage, and clustering rows on their EPC key makes a
  lookup one B-tree descent with no separate key index to store or maintain;
- ``passes`` keeps each pass as JSON plus indexed ``vehicle_tag`` / ``vehicle_no`` columns,
  because a pass is also found through the vehicle (DESIGN.md §8), not only by its number;
- ``records(type, key, body)`` holds every other type (enterprise, vehicle, destination) as
  JSON: these are small and only ever read by key, so a new optional field needs no
  migration. JSON is written by :func:`records.to_json` and read back by
  :func:`records.parse_record`, the same validation a bundle line goes through;
- ``counts`` keeps the row count per record type, maintained by each apply, so reporting the
  state never scans millions of rows; ``meta`` is the single row describing what is loaded;
  ``history`` records every applied bundle (sequence, digest, signer) for audit;
- a snapshot's items are staged in a TEMP table in bundle order and moved into ``items``
  sorted by EPC in the same transaction: ten million keys inserted in arrival order would
  touch a random B-tree page each, sorted they fill pages one after another;
- passages read items through the item index (index.py), a file of hash buckets written
  from ``items`` by the apply that needs one; ``item_index`` names the current file, and
  ``items_unindexed`` lists the items changed since it was written, which lookups read
  from ``items`` instead. Every snapshot writes a new index in its transaction (all items
  changed); a delta lists its items and writes a small second index of the listed items
  that exist (``delta_token``), so that recently changed items are found at the index's
  speed too; once more than ``reindex_after`` are listed (or there is no usable index) its
  result says ``index_due``: the caller then calls ``reindex``, a transaction of its own,
  so the delta is in force meanwhile;
- memory: the daemon's connections keep small page caches and never map the file, so its
  RSS does not grow with the whitelist; ``open(bulk=True)`` (``whitelist import``) trades
  memory for speed.

Invariants:
- an apply is one ``BEGIN IMMEDIATE`` transaction: either the whole bundle is applied and
  ``meta``, ``counts`` and ``history`` describe it, or nothing changed (a bundle's records are
  parsed while they are applied, so a fault found late still rolls everything back);
- ``seq`` only grows for a site: a snapshot must be newer, a delta must start at the current
  ``seq``; state for another site counts as no state at all;
- lookups never wait for an apply: they use their own connection, and WAL lets them read the
  last committed state meanwhile; each lookup is one read transaction, so a passage sees one
  consistent whitelist even across several queries;
- the item index answers exactly as ``items`` does: the file named in ``item_index`` holds
  every item as it stood when the file was written, and every item changed since is listed
  in ``items_unindexed`` in the transaction that changed it; an index file is written and
  synced before the transaction naming it commits, removed if it does not, and the file it
  replaces is removed after. Without a usable file, lookups read ``items`` alone;
- every read fetches all rows before returning, so no statement is left open to pin an old
  snapshot (which would hide another process's import and stall WAL checkpoints).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar, cast

from edgegate.gate.model import ItemRecord
from edgegate.whitelist.bundle import BundleKind, VerifiedBundle
from edgegate.whitelist.errors import BundleError, RejectReason
from edgegate.whitelist.index import (
    INDEX_PREFIX,
    INDEX_SUFFIX,
    ItemIndex,
    UnusableIndexError,
    file_name,
    index_usable,
    item_from_db_row,
    write_index,
)
from edgegate.whitelist.records import (
    ITEM_ROW_FIELDS,
    Delete,
    DestinationRecord,
    EnterpriseRecord,
    Entry,
    ItemRow,
    PassRecord,
    Record,
    RecordType,
    VehicleRecord,
    format_timestamp,
    item_to_row,
    parse_record,
    parse_timestamp,
    record_key,
    record_type,
    to_json,
)

DB_NAME = "whitelist.db"
SCHEMA_VERSION = 4
# Rows per executemany / keys per IN list: far below SQLite's bound-parameter limit, large
# enough that per-statement overhead vanishes on multi-million-row snapshots.
BATCH = 500
BUSY_TIMEOUT_S = 10.0
_Result = TypeVar("_Result")
# Items changed since the item index was built are answered from SQLite; past this many, the
# apply that adds them builds a new index (each one listed costs the daemon ~100 bytes).
REINDEX_AFTER = 100_000
# Bounds the WAL file left on disk after a large import has been checkpointed.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
# Page caches, in KiB. The daemon's are small so that its memory does not grow with the
# whitelist (items stay on disk and in the OS page cache; 16 MiB holds the interior pages of
# a 10M-item B-tree, so a lookup reads one leaf). A bulk import (``whitelist import``) may
# take more: the cache bounds both the pages it revisits and SQLite's sort of a snapshot.
DAEMON_CACHE_KIB = 16 * 1024
BULK_CACHE_KIB = 256 * 1024

_SCHEMA = """
CREATE TABLE items (
    epc            TEXT PRIMARY KEY NOT NULL,
    tid            TEXT,
    trace_code     TEXT,
    sku            TEXT,
    gtin           TEXT,
    owner          TEXT,
    status         TEXT NOT NULL,
    directions     TEXT NOT NULL,  -- JSON array
    destinations   TEXT NOT NULL,  -- JSON array
    conversion_ref TEXT,
    declare_by     TEXT,
    valid_until    TEXT
) WITHOUT ROWID;
CREATE TABLE passes (
    pass_no     TEXT PRIMARY KEY NOT NULL,
    vehicle_tag TEXT,
    vehicle_no  TEXT,
    body        TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX passes_by_vehicle_tag ON passes (vehicle_tag) WHERE vehicle_tag IS NOT NULL;
CREATE INDEX passes_by_vehicle_no ON passes (vehicle_no) WHERE vehicle_no IS NOT NULL;
CREATE TABLE records (
    type TEXT NOT NULL,
    key  TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (type, key)
) WITHOUT ROWID;
CREATE TABLE counts (
    type TEXT PRIMARY KEY NOT NULL,
    n    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE meta (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    site       TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    issued_at  TEXT NOT NULL,
    applied_at TEXT NOT NULL
);
CREATE TABLE history (
    id         INTEGER PRIMARY KEY,
    site       TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    base_seq   INTEGER,
    issued_at  TEXT NOT NULL,
    issuer     TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    records    INTEGER NOT NULL,
    applied_at TEXT NOT NULL
);
CREATE INDEX history_by_seq ON history (site, seq);
"""
# Schema 2 adds the item index's bookkeeping (index.py); a schema 1 file is upgraded in place
# and has no index until its next apply builds one.
_SCHEMA_2 = """
CREATE TABLE item_index (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    token    TEXT NOT NULL,
    records  INTEGER NOT NULL,
    built_at TEXT NOT NULL
);
CREATE TABLE items_unindexed (
    epc TEXT PRIMARY KEY NOT NULL
) WITHOUT ROWID;
"""

# Schema 3 records the seq of the delta that listed each item, so that a reader holding the
# list reads only what later deltas added to it (see _view); upgraded rows get 0.
_SCHEMA_3 = """
ALTER TABLE items_unindexed ADD COLUMN listed_seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX items_unindexed_by_seq ON items_unindexed (listed_seq);
"""

# Schema 4 names the index of the listed items (see _build_delta_index); NULL: none.
_SCHEMA_4 = """
ALTER TABLE item_index ADD COLUMN delta_token TEXT;
"""

_ITEM_COLUMNS = ", ".join(ITEM_ROW_FIELDS)
_UNINDEXED_INSERT = (
    "INSERT INTO items_unindexed (epc, listed_seq) VALUES (?, ?) "
    "ON CONFLICT (epc) DO UPDATE SET listed_seq = excluded.listed_seq"
)
_UNINDEXED_SELECT = "SELECT epc FROM items_unindexed WHERE listed_seq > ?"
# A snapshot's items on their way in (see _apply); a TEMP table, so never in whitelist.db.
_STAGED = "temp.staged_items"
_STAGE_SQL = f"INSERT INTO {_STAGED} VALUES ({', '.join('?' * len(ITEM_ROW_FIELDS))})"


class StoreError(Exception):
    """The whitelist database cannot be opened, read or written (one line, for an operator)."""


@dataclass(frozen=True, slots=True)
class WhitelistState:
    """What is loaded; ``site``/``seq``/times are None while no bundle has been applied."""

    site: str | None
    seq: int | None
    issued_at: datetime | None
    applied_at: datetime | None
    counts: dict[RecordType, int]


@dataclass(frozen=True, slots=True)
class AppliedBundle:
    """One row of ``history``: a bundle that was applied, for audit and ``whitelist stats``."""

    site: str
    seq: int
    kind: BundleKind
    base_seq: int | None
    issued_at: datetime
    issuer: str
    key_id: str
    sha256: str
    records: int
    applied_at: datetime


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """One applied bundle: its identity, the seq it replaced and the counts it left."""

    kind: BundleKind
    site: str
    seq: int
    previous_seq: int | None
    records: int
    counts: dict[RecordType, int]
    index_built: bool = False  # this apply wrote a new item index (every snapshot does)
    # A delta left the item index due for a rebuild: call reindex() (see _index_due).
    index_due: bool = False


@dataclass(frozen=True, slots=True)
class IndexState:
    """The item index as recorded: for ``whitelist stats``."""

    file: str | None  # None: no index yet, every lookup reads SQLite
    usable: bool  # False: the file is missing or damaged, every lookup reads SQLite
    records: int
    built_at: datetime | None
    unindexed: int  # items changed since it was built, answered from SQLite


@dataclass(frozen=True, slots=True)
class _View:
    """What the reader knows of the database as of one ``PRAGMA data_version``."""

    version: int
    vehicle_tags: frozenset[str]
    index: ItemIndex | None
    unindexed: frozenset[str]
    listed_to: int  # the highest ``listed_seq`` in ``unindexed``
    listed: ItemIndex | None  # the index of the listed items that exist (see _build_delta_index)


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where one record type's rows live and how they are written."""

    table: str
    key_column: str
    # Selects this type's rows in a shared table: an SQL prefix and its parameters.
    scope_sql: str
    scope: tuple[str, ...]
    upsert_sql: str
    row: Callable[[Record], tuple[object, ...]]
    key_index: int  # where the key sits in ``row``

    def where(self, keys: int) -> str:
        """The WHERE clause matching ``keys`` keys (one ``= ?`` or an ``IN`` list)."""
        test = "= ?" if keys == 1 else f"IN ({', '.join('?' * keys)})"
        return f"{self.scope_sql}{self.key_column} {test}"


def _item_row(record: Record) -> tuple[object, ...]:
    assert isinstance(record, ItemRecord)
    return _item_db_row(item_to_row(record))


def _item_db_row(row: ItemRow) -> tuple[object, ...]:
    """An item row as stored: the two lists as JSON text."""
    epc, tid, trace, sku, gtin, owner, status, directions, destinations, conv, declare, valid = row
    return (
        epc,
        tid,
        trace,
        sku,
        gtin,
        owner,
        status,
        _json_array(directions),
        _json_array(destinations),
        conv,
        declare,
        valid,
    )


def _pass_row(record: Record) -> tuple[object, ...]:
    assert isinstance(record, PassRecord)
    return (record.pass_no, record.vehicle_tag, record.vehicle_no, _json_text(record))


def _record_row(record: Record) -> tuple[object, ...]:
    return (record_type(record).value, record_key(record), _json_text(record))


@functools.lru_cache(maxsize=4096)
def _json_array(values: tuple[str, ...]) -> str:
    # Most items share a handful of direction and destination lists; encode each once.
    return json.dumps(list(values), ensure_ascii=False)


def _json_text(record: Record) -> str:
    return json.dumps(to_json(record), ensure_ascii=False, separators=(",", ":"))


def _generic(rtype: RecordType) -> _Layout:
    return _Layout(
        table="records",
        key_column="key",
        scope_sql="type = ? AND ",
        scope=(rtype.value,),
        upsert_sql="INSERT OR REPLACE INTO records (type, key, body) VALUES (?, ?, ?)",
        row=_record_row,
        key_index=1,
    )


_LAYOUTS: dict[RecordType, _Layout] = {
    RecordType.ITEM: _Layout(
        table="items",
        key_column="epc",
        scope_sql="",
        scope=(),
        upsert_sql=f"INSERT OR REPLACE INTO items ({_ITEM_COLUMNS}) VALUES ({', '.join('?' * 12)})",
        row=_item_row,
        key_index=0,
    ),
    RecordType.PASS: _Layout(
        table="passes",
        key_column="pass_no",
        scope_sql="",
        scope=(),
        upsert_sql="INSERT OR REPLACE INTO passes (pass_no, vehicle_tag, vehicle_no, body) "
        "VALUES (?, ?, ?, ?)",
        row=_pass_row,
        key_index=0,
    ),
    RecordType.ENTERPRISE: _generic(RecordType.ENTERPRISE),
    RecordType.VEHICLE: _generic(RecordType.VEHICLE),
    RecordType.DESTINATION: _generic(RecordType.DESTINATION),
}


class WhitelistStore:
    """The whitelist database. Thread-safe; open with :meth:`open`, close when done."""

    def __init__(
        self,
        path: Path,
        reader: sqlite3.Connection,
        writer: sqlite3.Connection,
        *,
        bulk: bool = False,
        reindex_after: int = REINDEX_AFTER,
    ) -> None:
        self.path = path
        self._bulk = bulk
        self._reindex_after = reindex_after
        self._reader = reader
        self._writer = writer
        # One lock per connection: sqlite3 connections are not safe to share between threads
        # mid-statement, and separate connections keep lookups free of a long apply.
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        # Under the read lock: see _view.
        self._view_cache: _View | None = None
        # Index files the view no longer uses, closed by warm() outside the read lock: the
        # last close of a replaced file frees its page cache and its blocks (the apply that
        # replaced it unlinked it), 130 ms for a 10M-item index, and a passage must not
        # wait for that.
        self._retired: list[ItemIndex] = []

    @property
    def reindex_after(self) -> int:
        """Items changed since the index was built past which a delta makes it due."""
        return self._reindex_after

    @classmethod
    def open(
        cls, state_dir: Path, *, bulk: bool = False, reindex_after: int = REINDEX_AFTER
    ) -> WhitelistStore:
        """Open (creating if needed) ``state_dir/whitelist.db``.

        ``bulk`` gives the writer a large page cache, for one-off imports of big snapshots;
        the daemon opens without it and keeps its memory flat. ``reindex_after``: see
        REINDEX_AFTER.
        """
        path = state_dir / DB_NAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{state_dir}: cannot create the directory: {exc.strerror}") from None
        opened: list[sqlite3.Connection] = []
        try:
            writer = _connect(path)
            opened.append(writer)
            _query(writer, "PRAGMA journal_mode = WAL")
            writer.execute("PRAGMA synchronous = FULL")  # an applied bundle survives power loss
            writer.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            writer.execute(f"PRAGMA cache_size = -{BULK_CACHE_KIB if bulk else DAEMON_CACHE_KIB}")
            # A snapshot's staged items and SQLite's sort of them go to temporary files, not
            # to memory, however SQLite was built.
            writer.execute("PRAGMA temp_store = FILE")
            _ensure_schema(writer, path)
            reader = _connect(path)
            opened.append(reader)
            reader.execute("PRAGMA query_only = ON")
            reader.execute(f"PRAGMA cache_size = -{DAEMON_CACHE_KIB}")
            for conn in opened:
                # Mapped database pages would count in the daemon's RSS; read them instead.
                conn.execute("PRAGMA mmap_size = 0")
        except BaseException as exc:
            for conn in opened:
                conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{path}: cannot open the whitelist database: {exc}") from None
            raise
        return cls(path, reader, writer, bulk=bulk, reindex_after=reindex_after)

    def close(self) -> None:
        with self._read_lock, self._write_lock:
            self._reader.close()
            self._writer.close()
            view = self._view_cache
            for index in (*self._retired, *(() if view is None else (view.index, view.listed))):
                if index is not None:
                    index.close()
            self._view_cache = None
            self._retired.clear()

    def __enter__(self) -> WhitelistStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- applying bundles ---------------------------------------------------------------

    def apply(
        self,
        bundle: VerifiedBundle,
        *,
        site: str,
        sha256: str,
        now: datetime,
        progress: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> ApplyResult:
        """Apply a verified bundle for this gate's ``site`` atomically, or change nothing.

        Raises :class:`BundleError` for a refused bundle, :class:`StoreError` when the database
        fails or stays locked by another writer. ``sha256`` is the digest of the bundle as
        received (kept in ``history``; it tells a redelivered bundle from a rollback); ``now``
        is the wall-clock time of the apply. ``progress``, if given, is called with the
        number of records applied so far after every batch (from the applying thread).
        ``stop``, if set while a snapshot's item index is being written, ends the apply with
        :class:`IndexBuildStoppedError`, changing nothing.
        """

        def applied(conn: sqlite3.Connection) -> ApplyResult:
            result = _apply(conn, bundle, site=site, sha256=sha256, now=now, progress=progress)
            if result.kind is BundleKind.SNAPSHOT:
                return result
            due = _index_due(conn, self.path.parent, self._reindex_after)
            return dataclasses.replace(result, index_due=due)

        result, built = self._write(
            "apply a bundle to",
            applied,
            rebuild=lambda result: result.kind is BundleKind.SNAPSHOT,
            now=now,
            stop=stop,
            listed_by=lambda result: result.seq if result.kind is BundleKind.DELTA else None,
        )
        return dataclasses.replace(result, index_built=built)

    def reindex(self, *, now: datetime, stop: threading.Event | None = None) -> IndexState:
        """Write a new item index of the items as they stand, in a transaction of its own.

        Called when an apply says ``index_due`` (after it committed, so that a delta's
        changes count from the moment they arrive, not after a rebuild of minutes), and by
        ``whitelist reindex`` (after an upgrade that changed the file's format). Lookups go
        on meanwhile, from the index they have; other applies wait. Setting ``stop`` ends
        the build early with :class:`IndexBuildStoppedError`, changing nothing.
        """
        self._write("reindex", lambda conn: None, rebuild=lambda _: True, now=now, stop=stop)
        return self.index_state()

    def _write(
        self,
        doing: str,
        body: Callable[[sqlite3.Connection], _Result],
        *,
        rebuild: Callable[[_Result], bool],
        now: datetime,
        stop: threading.Event | None = None,
        listed_by: Callable[[_Result], int | None] = lambda _: None,
    ) -> tuple[_Result, bool]:
        """Run ``body`` in one write transaction, then, in the same one, a new item index if
        ``rebuild`` says that what ``body`` did calls for it (see _build_index), else a new
        index of the listed items if ``listed_by`` names the delta seq that listed some
        (see _build_delta_index).

        Returns what ``body`` returned and whether a new item index was written.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        with self._write_lock, self._sqlite_errors(doing):
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            change = _IndexChange()
            built = False
            try:
                result = body(conn)
                if rebuild(result):
                    change = _build_index(conn, self.path.parent, now=now, stop=stop)
                    built = True
                elif (seq := listed_by(result)) is not None:
                    change = _build_delta_index(conn, self.path.parent, seq=seq, stop=stop)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                    conn.execute("ROLLBACK")
                for path in change.written:
                    path.unlink(missing_ok=True)
                raise
            finally:
                if not self._bulk:
                    # Give back the pages a large apply pulled in: the daemon's memory stays
                    # flat however big the deltas it applies.
                    conn.execute("PRAGMA shrink_memory")
            for path in change.retired:
                # Readers that still have it open keep reading it until they see the commit.
                path.unlink(missing_ok=True)
            return result, built

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (after a bulk import).

        Waits for readers (up to the busy timeout); a gate's lookups are short, so this
        only returns the disk space the WAL of a big snapshot took.
        """
        with self._write_lock, self._sqlite_errors("checkpoint"):
            _query(self._writer, "PRAGMA wal_checkpoint(TRUNCATE)")

    # -- reading ------------------------------------------------------------------------

    def state(self) -> WhitelistState:
        with self._reading() as conn:
            meta = _query(conn, "SELECT site, seq, issued_at, applied_at FROM meta")
            counts = _query(conn, "SELECT type, n FROM counts")
        all_counts = _counts(counts)
        if not meta:
            return WhitelistState(None, None, None, None, all_counts)
        site, seq, issued_at, applied_at = meta[0]
        return WhitelistState(
            site=str(site),
            seq=_int(seq),
            issued_at=parse_timestamp(str(issued_at)),
            applied_at=parse_timestamp(str(applied_at)),
            counts=all_counts,
        )

    def history(self, limit: int) -> list[AppliedBundle]:
        """The last ``limit`` applied bundles, newest first."""
        with self._reading() as conn:
            rows = _query(
                conn,
                "SELECT site, seq, kind, base_seq, issued_at, issuer, key_id, sha256, records, "
                "applied_at FROM history ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        return [
            AppliedBundle(
                site=str(site),
                seq=_int(seq),
                kind=BundleKind(str(kind)),
                base_seq=None if base_seq is None else _int(base_seq),
                issued_at=_instant(issued_at),
                issuer=str(issuer),
                key_id=str(kid),
                sha256=str(sha),
                records=_int(records),
                applied_at=_instant(applied_at),
            )
            for site, seq, kind, base_seq, issued_at, issuer, kid, sha, records, applied_at in rows
        ]

    def index_state(self) -> IndexState:
        with self._reading() as conn:
            built = _query(conn, "SELECT token, records, built_at FROM item_index")
            unindexed = _int(_query(conn, "SELECT count(*) FROM items_unindexed")[0][0])
        if not built:
            return IndexState(None, False, 0, None, unindexed)
        token, records, built_at = built[0]
        name = file_name(str(token))
        usable = _usable(self.path.parent, str(token))
        return IndexState(name, usable, _int(records), _instant(built_at), unindexed)

    def item_status_counts(self) -> dict[str, int]:
        """Items per status. Scans the items table: for ``whitelist stats``, not per passage."""
        with self._reading() as conn:
            rows = _query(conn, "SELECT status, count(*) FROM items GROUP BY status")
        return {str(status): _int(n) for status, n in rows}

    def lookup_items(self, epcs: Iterable[str]) -> dict[str, ItemRecord]:
        """The known items among ``epcs`` (upper-case hex), read in one transaction.

        This is the batch lookup of a passage: all its EPCs at once. The item index answers
        for every item it holds; items changed since it was built (or all of them, while
        there is no index) come from SQLite in a few ``IN`` queries, keys sorted so that
        SQLite walks its B-tree in order. Both reads see the same committed whitelist: the
        index and the list of items it must not be asked about are those of the
        transaction's snapshot (see _view).
        """
        wanted = set(epcs)
        found: dict[str, ItemRecord] = {}
        with self._reading() as conn:
            view = self._view(conn)
            if view.index is not None:
                elsewhere = wanted & view.unindexed
                view.index.lookup(wanted - elsewhere if elsewhere else wanted, found)
                wanted = elsewhere
                if wanted and view.listed is not None:
                    # Exactly the listed items that exist, as of this snapshot: a listed key
                    # not in it was deleted.
                    view.listed.lookup(wanted, found)
                    wanted = set()
            for chunk in _chunks(sorted(wanted)):
                rows = _query(conn, _item_select(len(chunk)), chunk)
                found.update((str(row[0]), item_from_db_row(row)) for row in rows)
        return found

    def warm(self) -> None:
        """Read now what lookups need after a change: the vehicle tags, the item index files
        opened (bucket offsets, shared parts decoded) and the items they must not be asked
        about; then close the index files that were replaced.

        The daemon calls this before it is ready, after every bundle it applies and when idle
        (see sync.IDLE_WARM_S), so that a passage pays for neither (at 10M items ~30 ms to
        read, ~130 ms to close); a lookup still reads whatever changed since, and leaves the
        closing to this."""
        try:
            with self._reading() as conn:
                self._view(conn)
        finally:
            with self._read_lock:
                retired, self._retired = self._retired, []
            for index in retired:
                index.close()

    def item(self, epc: str) -> ItemRecord | None:
        return self.lookup_items([epc]).get(epc)

    def pass_by_no(self, pass_no: str) -> PassRecord | None:
        record = self._get(RecordType.PASS, pass_no)
        return record if isinstance(record, PassRecord) else None

    def passes_for_vehicle(
        self, *, vehicle_tag: str | None = None, vehicle_no: str | None = None
    ) -> list[PassRecord]:
        """Every pass naming this vehicle tag or plate, whatever its status (the rules judge)."""
        with self._reading() as conn:
            rows = _query(
                conn,
                "SELECT body FROM passes WHERE vehicle_tag = ? "
                "UNION SELECT body FROM passes WHERE vehicle_no = ?",
                (vehicle_tag, vehicle_no),
            )
        records = (_record_from_json(body) for (body,) in rows)
        return sorted((r for r in records if isinstance(r, PassRecord)), key=lambda p: p.pass_no)

    def vehicle(self, vehicle_tag: str) -> VehicleRecord | None:
        record = self._get(RecordType.VEHICLE, vehicle_tag)
        return record if isinstance(record, VehicleRecord) else None

    def vehicles_among(self, epcs: Iterable[str]) -> dict[str, VehicleRecord]:
        """The EPCs of a passage that are vehicle tags (the vehicle, not an item).

        A passage has a thousand EPCs and at most a vehicle or two: they are told apart in
        memory, against the set of vehicle tags (see _view), and only the vehicles are read.
        """
        layout = _LAYOUTS[RecordType.VEHICLE]
        with self._reading() as conn:
            tags = self._view(conn).vehicle_tags
            wanted = [epc for epc in dict.fromkeys(epcs) if epc in tags]
            if not wanted:
                return {}
            sql = f"SELECT body FROM {layout.table} WHERE {layout.where(len(wanted))}"
            rows = _query(conn, sql, (*layout.scope, *wanted))
        records = (_record_from_json(body) for (body,) in rows)
        return {r.vehicle_tag: r for r in records if isinstance(r, VehicleRecord)}

    def _view(self, conn: sqlite3.Connection) -> _View:
        """The vehicle tags, the item index, the items it must not be asked about and the
        index of those items.

        Read again, in the caller's read transaction, whenever the database changed:
        ``PRAGMA data_version`` moves on every commit by another connection (this store's
        writer, or ``whitelist import`` in another process), and as the transaction's first
        read it is that of the snapshot the rest of the transaction sees.
        """
        version = _int(_query(conn, "PRAGMA data_version")[0][0])
        view = self._view_cache
        if view is not None and view.version == version:
            return view
        was = (None, None) if view is None else (view.index, view.listed)
        opened: list[ItemIndex] = []  # files opened here, closed again if this fails
        try:
            sql = "SELECT key FROM records WHERE type = ?"
            rows = _query(conn, sql, (RecordType.VEHICLE.value,))
            vehicles = frozenset(str(key) for (key,) in rows)
            token, listed_token = _recorded(conn)
            index = self._open_named(token, was[0], opened)
            listed = None
            unindexed: frozenset[str] = frozenset()
            listed_to = 0
            if index is not None:
                listed = self._open_named(listed_token, was[1], opened)
                (top,) = _query(conn, "SELECT ifnull(max(listed_seq), 0) FROM items_unindexed")[0]
                listed_to = _int(top)
                if view is not None and view.index is index and listed_to >= view.listed_to:
                    # The same build: its list has only grown since (a new build empties it
                    # and makes a new index), so only what later deltas listed is read. After
                    # a 10,000-record delta at 40,000 listed: ~3 ms, not ~20 ms for all of it.
                    added = _query(conn, _UNINDEXED_SELECT, (view.listed_to,))
                    unindexed = view.unindexed | frozenset(str(epc) for (epc,) in added)
                else:
                    rows = _query(conn, _UNINDEXED_SELECT, (-1,))
                    unindexed = frozenset(str(epc) for (epc,) in rows)
        except BaseException:
            self._retired += opened
            raise
        self._view_cache = _View(version, vehicles, index, unindexed, listed_to, listed)
        # Only now that no view holds them may the files it replaced be closed (see warm).
        self._retired += (old for old in was if old is not None and old not in (index, listed))
        return self._view_cache

    def _open_named(
        self, token: str | None, open_now: ItemIndex | None, opened: list[ItemIndex]
    ) -> ItemIndex | None:
        """The index file ``token`` names: ``open_now`` if it is that one, else opened (and
        added to ``opened``)."""
        if open_now is not None and open_now.token == token:
            return open_now
        if token is None:
            return None
        try:
            index = ItemIndex.open(self.path.parent / file_name(token), token)
        except UnusableIndexError:
            # Deleted by an apply that committed after this snapshot began, or damaged: the
            # database answers instead (same answers, slower) until the next change.
            return None
        opened.append(index)
        return index

    def enterprise(self, owner: str) -> EnterpriseRecord | None:
        record = self._get(RecordType.ENTERPRISE, owner)
        return record if isinstance(record, EnterpriseRecord) else None

    def destination(self, destination_id: str) -> DestinationRecord | None:
        record = self._get(RecordType.DESTINATION, destination_id)
        return record if isinstance(record, DestinationRecord) else None

    def _get(self, rtype: RecordType, key: str) -> Record | None:
        return self._get_many(rtype, [key]).get(key)

    def _get_many(self, rtype: RecordType, keys: Iterable[str]) -> dict[str, Record]:
        layout = _LAYOUTS[rtype]
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Record] = {}
        with self._reading() as conn:
            for chunk in _chunks(wanted):
                sql = f"SELECT {layout.key_column}, body FROM {layout.table} WHERE "
                rows = _query(conn, sql + layout.where(len(chunk)), (*layout.scope, *chunk))
                found.update((str(key), _record_from_json(body)) for key, body in rows)
        return found

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock, self._sqlite_errors("read"):
            self._reader.execute("BEGIN")
            try:
                yield self._reader
            finally:
                self._reader.execute("COMMIT")

    @contextmanager
    def _sqlite_errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot {doing} the whitelist database: {exc}") from None


def _apply(
    conn: sqlite3.Connection,
    bundle: VerifiedBundle,
    *,
    site: str,
    sha256: str,
    now: datetime,
    progress: Callable[[int], None] | None,
) -> ApplyResult:
    header = bundle.header
    if header.site != site:
        raise BundleError(
            RejectReason.WRONG_SITE, f"bundle is for site {header.site!r}, this gate is {site!r}"
        )
    meta = _query(conn, "SELECT site, seq FROM meta")
    # A whitelist loaded for another site (the gate was re-sited) is no base for anything.
    current = _int(meta[0][1]) if meta and meta[0][0] == site else None
    _check_sequence(conn, bundle, current, sha256)

    snapshot = header.kind is BundleKind.SNAPSHOT
    if snapshot:
        for table in ("items", "passes", "records"):
            conn.execute(f"DELETE FROM {table}")
        # Items are staged in bundle order and moved into the table sorted at the end:
        # inserting millions of keys in arbitrary order into the clustered B-tree touches
        # a random page per row, while a sorted insert fills pages one after another.
        conn.execute(f"CREATE TEMP TABLE {_STAGED} ({_ITEM_COLUMNS})")
    counts = _counts(_query(conn, "SELECT type, n FROM counts"))
    records = 0
    for rtype, upserts, deletes in _batches(bundle.changes()):
        records += len(upserts) + len(deletes)
        layout = _LAYOUTS[rtype]
        if rtype is RecordType.ITEM and not snapshot:
            # Whatever the index says of these items is no longer so (see _index_due).
            keys = deletes or [str(row[0]) for row in upserts]
            conn.executemany(_UNINDEXED_INSERT, [(key, bundle.header.seq) for key in keys])
        if deletes:  # never in a snapshot: the parser refuses "op":"delete" there
            counts[rtype] -= _delete(conn, layout, deletes)
        elif snapshot:
            # Into empty tables: one count at the end is exact (a key listed twice is one
            # row) and far cheaper than checking every batch for existing keys.
            sql = _STAGE_SQL if rtype is RecordType.ITEM else layout.upsert_sql
            conn.executemany(sql, upserts)
        else:
            counts[rtype] += _upsert(conn, layout, upserts)
        if progress is not None:
            progress(records)
    if snapshot:
        # rowid breaks ties: of a key listed twice, the later line wins, as it would inline.
        conn.execute(
            f"INSERT OR REPLACE INTO items ({_ITEM_COLUMNS}) "
            f"SELECT {_ITEM_COLUMNS} FROM {_STAGED} ORDER BY epc, rowid"
        )
        conn.execute(f"DROP TABLE {_STAGED}")
        counts = _count_rows(conn)

    conn.executemany(
        "INSERT OR REPLACE INTO counts (type, n) VALUES (?, ?)",
        [(rtype.value, n) for rtype, n in counts.items()],
    )
    conn.execute(
        "INSERT OR REPLACE INTO meta (id, site, seq, issued_at, applied_at) VALUES (1, ?, ?, ?, ?)",
        (site, header.seq, format_timestamp(header.issued_at), format_timestamp(now)),
    )
    conn.execute(
        "INSERT INTO history (site, seq, kind, base_seq, issued_at, issuer, key_id, sha256, "
        "records, applied_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            site,
            header.seq,
            header.kind.value,
            header.base_seq,
            format_timestamp(header.issued_at),
            header.issuer,
            bundle.key_id,
            sha256,
            records,
            format_timestamp(now),
        ),
    )
    return ApplyResult(header.kind, site, header.seq, current, records, counts)


@dataclass(frozen=True, slots=True)
class _IndexChange:
    """Index files an apply leaves behind: delete ``retired`` once committed, ``written`` if not."""

    retired: tuple[Path, ...] = ()
    written: tuple[Path, ...] = ()


def _recorded(conn: sqlite3.Connection) -> tuple[str | None, str | None]:
    """The tokens of the item index and of the listed items' index, as recorded."""
    rows = _query(conn, "SELECT token, delta_token FROM item_index")
    if not rows:
        return None, None
    token, listed = rows[0]
    return str(token), None if listed is None else str(listed)


def _usable(directory: Path, token: str | None) -> bool:
    """Whether ``token`` names a complete index file in ``directory`` (header and size)."""
    return token is not None and index_usable(directory / file_name(token), token)


def _remove_strays(directory: Path, keep: set[Path]) -> None:
    # Called with the write transaction held: no other process is writing an index file now,
    # so any file but the current ones is left over from a build that failed or crashed.
    for stray in directory.glob(f"{INDEX_PREFIX}*{INDEX_SUFFIX}"):
        if stray not in keep:
            stray.unlink(missing_ok=True)


def _index_due(conn: sqlite3.Connection, directory: Path, reindex_after: int) -> bool:
    """Whether the item index should be rebuilt after this delta.

    Due when there is no usable index (a new or upgraded database, a deleted or damaged
    file, an older format) and when more than ``reindex_after`` items have changed since
    the last build. Until then the items deltas change are listed in ``items_unindexed``
    (by _apply) and answered from SQLite.
    """
    token, _ = _recorded(conn)
    if not _usable(directory, token):
        return True
    (pending,) = _query(conn, "SELECT count(*) FROM items_unindexed")[0]
    return _int(pending) > reindex_after


def _build_index(
    conn: sqlite3.Connection, directory: Path, *, now: datetime, stop: threading.Event | None
) -> _IndexChange:
    """Write a new item index of ``items`` as ``conn``'s write transaction sees it, and
    record it as current in that transaction: every item is in it, none is listed."""
    current = tuple(directory / file_name(token) for token in _recorded(conn) if token)
    _remove_strays(directory, set(current))
    written = write_index(conn, directory, stop=stop)
    try:
        conn.execute("DELETE FROM items_unindexed")
        conn.execute(
            "INSERT OR REPLACE INTO item_index (id, token, records, built_at, delta_token) "
            "VALUES (1, ?, ?, ?, NULL)",
            (written.token, written.records, format_timestamp(now)),
        )
    except BaseException:
        written.path.unlink(missing_ok=True)
        raise
    return _IndexChange(retired=current, written=(written.path,))


def _build_delta_index(
    conn: sqlite3.Connection, directory: Path, *, seq: int, stop: threading.Event | None
) -> _IndexChange:
    """After delta ``seq``: a new index of the listed items that exist, recorded in the same
    transaction, when the delta listed items (or the current one is missing or damaged).

    Passages then find recently changed items (goods just released, say) at the index's
    speed rather than SQLite's. Rewritten whole each time: at most REINDEX_AFTER items
    (~7 MB at 100,000), and a second's work for the apply process. Without a usable item
    index there is nothing to complement: lookups read SQLite.
    """
    token, listed = _recorded(conn)
    if token is None or not _usable(directory, token):
        return _IndexChange()
    current = None if listed is None else directory / file_name(listed)
    changed = _query(conn, "SELECT 1 FROM items_unindexed WHERE listed_seq = ? LIMIT 1", (seq,))
    if not changed and (listed is None or _usable(directory, listed)):
        return _IndexChange()  # this delta listed no item: the index of the list still holds
    retired = () if current is None else (current,)
    _remove_strays(directory, {directory / file_name(token), *retired})
    written = write_index(conn, directory, listed_only=True, stop=stop)
    try:
        conn.execute("UPDATE item_index SET delta_token = ?", (written.token,))
    except BaseException:
        written.path.unlink(missing_ok=True)
        raise
    return _IndexChange(retired=retired, written=(written.path,))


def _check_sequence(
    conn: sqlite3.Connection, bundle: VerifiedBundle, current: int | None, sha256: str
) -> None:
    header = bundle.header
    if current is not None and header.seq <= current:
        # MQTT delivers at least once: the very bundle applied before is no rollback attack.
        seen = _query(
            conn,
            "SELECT 1 FROM history WHERE site = ? AND seq = ? AND sha256 = ?",
            (header.site, header.seq, sha256),
        )
        if seen:
            raise BundleError(
                RejectReason.DUPLICATE, f"{header.kind} seq {header.seq} is already applied"
            )
        if header.kind is BundleKind.SNAPSHOT and header.seq == current:
            # The back office answers one gate's resync with a snapshot on the site-wide
            # topic; every gate already at that seq (by deltas) has the very state it
            # describes. Not applying it is right; alarming about it would be noise.
            raise BundleError(
                RejectReason.DUPLICATE,
                f"snapshot seq {header.seq} describes the current seq {current}",
            )
        raise BundleError(
            RejectReason.ROLLBACK,
            f"{header.kind} seq {header.seq} is not newer than the current seq {current}",
        )
    if header.kind is BundleKind.DELTA and header.base_seq != current:
        have = "no whitelist" if current is None else f"the current seq {current}"
        raise BundleError(
            RejectReason.GAP,
            f"delta base_seq {header.base_seq} (seq {header.seq}) does not follow {have}",
        )


_Row = tuple[object, ...]


def _batches(
    changes: Iterable[Entry | ItemRow],
) -> Iterator[tuple[RecordType, list[_Row], list[str]]]:
    """Runs of consecutive changes of one type and op, in bundle order, at most BATCH long.

    Yields ``(type, upserted rows, deleted keys)`` with exactly one list non-empty. Keeping
    the bundle's order matters: a delta may upsert and then delete the same key, or vice
    versa.
    """
    run_type: RecordType | None = None
    run_delete = False
    upserts: list[_Row] = []
    deletes: list[str] = []
    item = RecordType.ITEM
    for change in changes:
        # Rows are told from records by exact type: an ItemRecord is a NamedTuple, a tuple
        # too, whose fields stand in another order than a row's.
        if type(change) is tuple:  # a clean item upsert, the bulk of any snapshot
            if run_type is item and not run_delete and len(upserts) < BATCH:
                upserts.append(_item_db_row(cast(ItemRow, change)))
                continue
            rtype, is_delete = item, False
        elif isinstance(change, Delete):
            rtype, is_delete = change.type, True
        else:
            rtype, is_delete = record_type(cast(Record, change)), False
        if run_type is not None and (
            rtype is not run_type or is_delete != run_delete or len(upserts) + len(deletes) >= BATCH
        ):
            yield run_type, upserts, deletes
            upserts, deletes = [], []
        run_type, run_delete = rtype, is_delete
        if isinstance(change, Delete):
            deletes.append(change.key)
        elif type(change) is tuple:
            upserts.append(_item_db_row(cast(ItemRow, change)))
        else:
            upserts.append(_LAYOUTS[rtype].row(cast(Record, change)))
    if run_type is not None:
        yield run_type, upserts, deletes


def _upsert(conn: sqlite3.Connection, layout: _Layout, rows: list[_Row]) -> int:
    """Write ``rows``; returns how many keys are new (the change in the row count)."""
    keys = list({row[layout.key_index] for row in rows})
    (existing,) = _query(
        conn,
        f"SELECT count(*) FROM {layout.table} WHERE {layout.where(len(keys))}",
        (*layout.scope, *keys),
    )[0]
    conn.executemany(layout.upsert_sql, rows)
    return len(keys) - _int(existing)


def _delete(conn: sqlite3.Connection, layout: _Layout, keys: list[str]) -> int:
    """Delete ``keys`` (absent ones are no error); returns how many rows went."""
    cursor = conn.executemany(
        f"DELETE FROM {layout.table} WHERE {layout.where(1)}",
        [(*layout.scope, key) for key in keys],
    )
    return cursor.rowcount


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are exactly the BEGIN/COMMIT written here, never
    # ones the sqlite3 module opens implicitly. check_same_thread=False: the store's locks
    # serialise use, and the daemon may look up from a worker thread.
    return sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )


def _ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    # Read first, without the write lock: the daemon must be able to start while another
    # process spends minutes importing a large snapshot.
    version = _int(_query(conn, "PRAGMA user_version")[0][0])
    if version in _UPGRADES:
        # IMMEDIATE, then look again: two processes opening the file at once must not both
        # create (or upgrade) the schema.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = _int(_query(conn, "PRAGMA user_version")[0][0])
            if version in _UPGRADES:
                _execute_script(conn, _UPGRADES[version])
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                version = SCHEMA_VERSION
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    if version != SCHEMA_VERSION:
        raise StoreError(f"{path}: schema version {version} is not the supported {SCHEMA_VERSION}")


# From each older schema version (0: a new file) to SCHEMA_VERSION.
_UPGRADES = {
    0: _SCHEMA + _SCHEMA_2 + _SCHEMA_3 + _SCHEMA_4,
    1: _SCHEMA_2 + _SCHEMA_3 + _SCHEMA_4,
    2: _SCHEMA_3 + _SCHEMA_4,
    3: _SCHEMA_4,
}


def _execute_script(conn: sqlite3.Connection, script: str) -> None:
    # Statement by statement: executescript() would COMMIT the caller's transaction first.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _query(
    conn: sqlite3.Connection, sql: str, params: Sequence[object] = ()
) -> list[tuple[object, ...]]:
    return conn.execute(sql, params).fetchall()


def _chunks(keys: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(keys), BATCH):
        yield keys[start : start + BATCH]


def _item_select(keys: int) -> str:
    return f"SELECT {_ITEM_COLUMNS} FROM items WHERE {_LAYOUTS[RecordType.ITEM].where(keys)}"


def _record_from_json(body: object) -> Record:
    entry = parse_record(json.loads(str(body)), delta=False)
    assert not isinstance(entry, Delete)  # a snapshot-mode parse never yields a Delete
    return entry


def _counts(rows: list[tuple[object, ...]]) -> dict[RecordType, int]:
    loaded = {str(rtype): _int(n) for rtype, n in rows}
    return {rtype: loaded.get(rtype.value, 0) for rtype in RecordType}


def _count_rows(conn: sqlite3.Connection) -> dict[RecordType, int]:
    rows = [
        (RecordType.ITEM.value, *_query(conn, "SELECT count(*) FROM items")[0]),
        (RecordType.PASS.value, *_query(conn, "SELECT count(*) FROM passes")[0]),
        *_query(conn, "SELECT type, count(*) FROM records GROUP BY type"),
    ]
    return _counts(rows)


def _int(value: object) -> int:
    assert isinstance(value, int)  # an INTEGER column of our own schema
    return value


def _instant(value: object) -> datetime:
    at = parse_timestamp(str(value))
    assert at is not None  # written by format_timestamp
    return at


def _opt(value: object) -> str | None:
    return None if value is None else str(value)
