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
  ``history`` records every applied bundle (sequence, digest, signer) for audit.

Invariants:
- an apply is one ``BEGIN IMMEDIATE`` transaction: either the whole bundle is applied and
  ``meta``, ``counts`` and ``history`` describe it, or nothing changed (a bundle's records are
  parsed while they are applied, so a fault found late still rolls everything back);
- ``seq`` only grows for a site: a snapshot must be newer, a delta must start at the current
  ``seq``; state for another site counts as no state at all;
- lookups never wait for an apply: they use their own connection, and WAL lets them read the
  last committed state meanwhile; each lookup is one read transaction, so a passage sees one
  consistent whitelist even across several queries;
- every read fetches all rows before returning, so no statement is left open to pin an old
  snapshot (which would hide another process's import and stall WAL checkpoints).
"""

from __future__ import annotations

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

from edgegate.gate.model import ItemRecord
from edgegate.whitelist.bundle import BundleKind, VerifiedBundle
from edgegate.whitelist.errors import BundleError, RejectReason
from edgegate.whitelist.records import (
    Delete,
    DestinationRecord,
    EnterpriseRecord,
    Entry,
    PassRecord,
    Record,
    RecordType,
    VehicleRecord,
    format_timestamp,
    parse_record,
    parse_timestamp,
    record_key,
    record_type,
    to_json,
)

DB_NAME = "whitelist.db"
SCHEMA_VERSION = 1
# Rows per executemany / keys per IN list: far below SQLite's bound-parameter limit, large
# enough that per-statement overhead vanishes on multi-million-row snapshots.
BATCH = 500
BUSY_TIMEOUT_S = 10.0
# Bounds the WAL file left on disk after a large import has been checkpointed.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
# Negative = KiB. A big page cache keeps a multi-million-row snapshot import from thrashing.
WRITER_CACHE_KIB = 64 * 1024

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

_ITEM_COLUMNS = (
    "epc, tid, trace_code, sku, gtin, owner, status, directions, destinations, "
    "conversion_ref, declare_by, valid_until"
)


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
class ApplyResult:
    """One applied bundle: its identity, the seq it replaced and the counts it left."""

    kind: BundleKind
    site: str
    seq: int
    previous_seq: int | None
    records: int
    counts: dict[RecordType, int]


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

    def where(self, keys: int) -> str:
        """The WHERE clause matching ``keys`` keys (one ``= ?`` or an ``IN`` list)."""
        test = "= ?" if keys == 1 else f"IN ({', '.join('?' * keys)})"
        return f"{self.scope_sql}{self.key_column} {test}"


def _item_row(record: Record) -> tuple[object, ...]:
    assert isinstance(record, ItemRecord)
    return (
        record.epc,
        record.tid,
        record.trace_code,
        record.sku,
        record.gtin,
        record.owner,
        record.status,
        _json_array(record.directions),
        _json_array(record.destinations),
        record.conversion_ref,
        record.declare_by,
        record.valid_until,
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
    )


_LAYOUTS: dict[RecordType, _Layout] = {
    RecordType.ITEM: _Layout(
        table="items",
        key_column="epc",
        scope_sql="",
        scope=(),
        upsert_sql=f"INSERT OR REPLACE INTO items ({_ITEM_COLUMNS}) VALUES ({', '.join('?' * 12)})",
        row=_item_row,
    ),
    RecordType.PASS: _Layout(
        table="passes",
        key_column="pass_no",
        scope_sql="",
        scope=(),
        upsert_sql="INSERT OR REPLACE INTO passes (pass_no, vehicle_tag, vehicle_no, body) "
        "VALUES (?, ?, ?, ?)",
        row=_pass_row,
    ),
    RecordType.ENTERPRISE: _generic(RecordType.ENTERPRISE),
    RecordType.VEHICLE: _generic(RecordType.VEHICLE),
    RecordType.DESTINATION: _generic(RecordType.DESTINATION),
}


class WhitelistStore:
    """The whitelist database. Thread-safe; open with :meth:`open`, close when done."""

    def __init__(self, path: Path, reader: sqlite3.Connection, writer: sqlite3.Connection):
        self.path = path
        self._reader = reader
        self._writer = writer
        # One lock per connection: sqlite3 connections are not safe to share between threads
        # mid-statement, and separate connections keep lookups free of a long apply.
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()

    @classmethod
    def open(cls, state_dir: Path) -> WhitelistStore:
        """Open (creating if needed) ``state_dir/whitelist.db``."""
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
            writer.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            _ensure_schema(writer, path)
            reader = _connect(path)
            opened.append(reader)
            reader.execute("PRAGMA query_only = ON")
        except BaseException as exc:
            for conn in opened:
                conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{path}: cannot open the whitelist database: {exc}") from None
            raise
        return cls(path, reader, writer)

    def close(self) -> None:
        with self._read_lock, self._write_lock:
            self._reader.close()
            self._writer.close()

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
        self, bundle: VerifiedBundle, *, site: str, sha256: str, now: datetime
    ) -> ApplyResult:
        """Apply a verified bundle for this gate's ``site`` atomically, or change nothing.

        Raises :class:`BundleError` for a refused bundle, :class:`StoreError` when the database
        fails or stays locked by another writer. ``sha256`` is the digest of the bundle as
        received (kept in ``history``; it tells a redelivered bundle from a rollback); ``now``
        is the wall-clock time of the apply.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        with self._write_lock, self._sqlite_errors("apply a bundle to"):
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = _apply(conn, bundle, site=site, sha256=sha256, now=now)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                    conn.execute("ROLLBACK")
                raise
            return result

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

    def item_status_counts(self) -> dict[str, int]:
        """Items per status. Scans the items table: for ``whitelist stats``, not per passage."""
        with self._reading() as conn:
            rows = _query(conn, "SELECT status, count(*) FROM items GROUP BY status")
        return {str(status): _int(n) for status, n in rows}

    def lookup_items(self, epcs: Iterable[str]) -> dict[str, ItemRecord]:
        """The known items among ``epcs`` (upper-case hex), read in one transaction."""
        wanted = list(dict.fromkeys(epcs))
        found: dict[str, ItemRecord] = {}
        with self._reading() as conn:
            for chunk in _chunks(wanted):
                rows = _query(conn, _item_select(len(chunk)), chunk)
                found.update((str(row[0]), _item_from_row(row)) for row in rows)
        return found

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
        """The EPCs of a passage that are vehicle tags (the vehicle, not an item)."""
        found = self._get_many(RecordType.VEHICLE, epcs)
        return {k: r for k, r in found.items() if isinstance(r, VehicleRecord)}

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
    conn: sqlite3.Connection, bundle: VerifiedBundle, *, site: str, sha256: str, now: datetime
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
    counts = _counts(_query(conn, "SELECT type, n FROM counts"))
    records = 0
    for rtype, upserts, deletes in _batches(bundle.entries()):
        records += len(upserts) + len(deletes)
        layout = _LAYOUTS[rtype]
        if deletes:  # never in a snapshot: the parser refuses "op":"delete" there
            counts[rtype] -= _delete(conn, layout, deletes)
        elif snapshot:
            # Into empty tables: one count at the end is exact (a key listed twice is one
            # row) and far cheaper than checking every batch for existing keys.
            conn.executemany(layout.upsert_sql, [layout.row(r) for r in upserts])
        else:
            counts[rtype] += _upsert(conn, layout, upserts)
    if snapshot:
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


def _batches(entries: Iterable[Entry]) -> Iterator[tuple[RecordType, list[Record], list[str]]]:
    """Runs of consecutive entries of one type and op, in bundle order, at most BATCH long.

    Yields ``(type, upserts, deleted keys)`` with exactly one list non-empty. Keeping the
    bundle's order matters: a delta may upsert and then delete the same key, or vice versa.
    """
    run_type: RecordType | None = None
    upserts: list[Record] = []
    deletes: list[str] = []
    for entry in entries:
        if isinstance(entry, Delete):
            rtype, is_delete = entry.type, True
        else:
            rtype, is_delete = record_type(entry), False
        size = len(upserts) + len(deletes)
        if run_type is not None and (
            rtype is not run_type or is_delete != bool(deletes) or size >= BATCH
        ):
            yield run_type, upserts, deletes
            upserts, deletes = [], []
        run_type = rtype
        if isinstance(entry, Delete):
            deletes.append(entry.key)
        else:
            upserts.append(entry)
    if run_type is not None:
        yield run_type, upserts, deletes


def _upsert(conn: sqlite3.Connection, layout: _Layout, records: list[Record]) -> int:
    """Write ``records``; returns how many keys are new (the change in the row count)."""
    keys = list({record_key(r) for r in records})
    (existing,) = _query(
        conn,
        f"SELECT count(*) FROM {layout.table} WHERE {layout.where(len(keys))}",
        (*layout.scope, *keys),
    )[0]
    conn.executemany(layout.upsert_sql, [layout.row(r) for r in records])
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
    if version == 0:
        # IMMEDIATE, then look again: two processes opening a new file at once must not
        # both create the schema.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = _int(_query(conn, "PRAGMA user_version")[0][0])
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                version = SCHEMA_VERSION
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    if version != SCHEMA_VERSION:
        raise StoreError(f"{path}: schema version {version} is not the supported {SCHEMA_VERSION}")


def _query(
    conn: sqlite3.Connection, sql: str, params: Sequence[object] = ()
) -> list[tuple[object, ...]]:
    return conn.execute(sql, params).fetchall()


def _chunks(keys: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(keys), BATCH):
        yield keys[start : start + BATCH]


def _item_select(keys: int) -> str:
    return f"SELECT {_ITEM_COLUMNS} FROM items WHERE {_LAYOUTS[RecordType.ITEM].where(keys)}"


def _item_from_row(row: tuple[object, ...]) -> ItemRecord:
    epc, tid, trace, sku, gtin, owner, status, directions, destinations, conv, declare, valid = row
    return ItemRecord(
        epc=str(epc),
        tid=_opt(tid),
        trace_code=_opt(trace),
        sku=_opt(sku),
        gtin=_opt(gtin),
        owner=_opt(owner),
        status=str(status),
        directions=tuple(json.loads(str(directions))),
        destinations=tuple(json.loads(str(destinations))),
        conversion_ref=_opt(conv),
        declare_by=_opt(declare),
        valid_until=_opt(valid),
    )


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


def _opt(value: object) -> str | None:
    return None if value is None else str(value)
