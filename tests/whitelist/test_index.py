"""The item index beside the whitelist database: same answers as SQLite, whatever happened."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegate.gate.model import ItemRecord
from edgegate.whitelist import index as index_module
from edgegate.whitelist import store as store_module
from edgegate.whitelist.bundle import VerifiedBundle
from edgegate.whitelist.errors import BundleError
from edgegate.whitelist.index import (
    GROUP_BUCKETS,
    INDEX_PREFIX,
    ChunkedWriter,
    ItemIndex,
    UnusableIndexError,
    bucket_of,
    file_name,
    probe_of,
)
from edgegate.whitelist.records import parse_record
from edgegate.whitelist.store import DB_NAME, StoreError, WhitelistStore

from .support import ENTERPRISE, EPC, SITE, Forge, epc, item, open_files

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

NOW = datetime(2026, 11, 25, 8, 5, tzinfo=UTC)
FORGE = Forge(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[WhitelistStore]:
    with WhitelistStore.open(tmp_path, reindex_after=3) as opened:
        yield opened


def apply(store: WhitelistStore, bundle: VerifiedBundle) -> bool:
    """Apply ``bundle`` as the daemon's sync does, rebuilding the index when the apply says
    it is due; whether a new item index was written."""
    digest = hashlib.sha256(bundle.data).hexdigest()
    result = store.apply(bundle, site=SITE, sha256=digest, now=NOW)
    if result.index_due:
        store.reindex(now=NOW)
    return result.index_built or result.index_due


def as_record(fields: Mapping[str, object]) -> ItemRecord:
    record = parse_record(dict(fields), delta=False)
    assert isinstance(record, ItemRecord)
    return record


def index_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob(f"{INDEX_PREFIX}*"))


def the_index(store: WhitelistStore) -> ItemIndex:
    """The current index file, opened on its own: what it answers without the database."""
    state = store.index_state()
    assert state.file is not None
    assert state.usable
    token = state.file.removeprefix(INDEX_PREFIX).removesuffix(".idx")
    return ItemIndex.open(store.path.parent / state.file, token)


def from_index(store: WhitelistStore, epcs: list[str]) -> dict[str, ItemRecord]:
    index = the_index(store)
    found: dict[str, ItemRecord] = {}
    try:
        index.lookup(epcs, found)
    finally:
        index.close()
    return found


VARIED = [
    item(epc(1)),
    item(epc(2), tid=None, trace_code=None, sku=None, gtin=None, owner=None, destinations=[]),
    item(epc(3), status="seized", directions=["out"], conversion_ref="CV-1", valid_until=None),
    item(epc(4), destinations=["DFS-1", "DFS-2"], declare_by="2026-12-01T00:00:00Z"),
    item(epc(5), sku='SKU with spaces, 中文 and "quotes"', owner="O\\1"),
]


def test_a_snapshot_builds_an_index_that_answers_every_item_as_stored(
    store: WhitelistStore,
) -> None:
    apply(store, FORGE.snapshot(VARIED))

    state = store.index_state()
    assert (state.records, state.unindexed, state.usable) == (5, 0, True)
    expected = {str(fields["epc"]): as_record(fields) for fields in VARIED}
    assert from_index(store, [*expected, epc(99)]) == expected
    assert store.lookup_items([*expected, epc(99)]) == expected


def test_an_index_of_more_than_4_gib_of_data_has_8_byte_offsets(
    store: WhitelistStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "NARROW_OFFSETS_BELOW", 0)  # as if it were that big
    apply(store, FORGE.snapshot(VARIED))

    expected = {str(fields["epc"]): as_record(fields) for fields in VARIED}
    assert from_index(store, [*expected, epc(99)]) == expected
    path = store.path.parent / str(store.index_state().file)
    assert path.read_bytes()[index_module.HEADER.size - 1] == 8


class _RecordingFile(io.FileIO):
    """A real file that notes where each write started and how long it was."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "wb")
        self.writes: list[tuple[int, int]] = []

    def write(self, data: ReadableBuffer, /) -> int:
        self.writes.append((self.tell(), memoryview(data).nbytes))
        return super().write(data)


@given(st.lists(st.binary(max_size=40), max_size=30))
@settings(max_examples=60)
def test_the_chunked_writer_writes_whole_chunks_at_their_own_offsets(pieces: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "out"
        with _RecordingFile(path) as file:
            out = ChunkedWriter(file, 16)
            for piece in pieces:
                out.write(piece)
            out.flush()
            writes = file.writes
        assert path.read_bytes() == b"".join(pieces)
    *whole, last = writes or [(0, 0)]
    assert all(length == 16 and start % 16 == 0 for start, length in whole)
    assert last[0] % 16 == 0
    assert last[1] <= 16


def test_an_index_written_in_many_chunks_answers_every_item_as_stored(
    store: WhitelistStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "WRITE_CHUNK_BYTES", 64)  # the records span chunks
    apply(store, FORGE.snapshot(VARIED))

    expected = {str(fields["epc"]): as_record(fields) for fields in VARIED}
    assert from_index(store, [*expected, epc(99)]) == expected
    assert (store.path.parent / str(store.index_state().file)).stat().st_size > 64 * 10


def test_fields_holding_a_separator_or_a_newline_are_found_through_an_escaped_record(
    store: WhitelistStore,
) -> None:
    awkward = [
        item(epc(1), owner="A\x1fB"),
        item(epc(2), sku="line one\nline two", trace_code="\x1f\n\x1e"),
        item(epc(3), destinations=["D\x1f1", "D\n2"]),
        item(epc(4)),
    ]
    apply(store, FORGE.snapshot(awkward))

    expected = {str(fields["epc"]): as_record(fields) for fields in awkward}
    assert from_index(store, list(expected)) == expected


@pytest.mark.parametrize("limit", ["SHARED_PARTS_MAX", "SHARED_BYTES_MAX"])
def test_past_the_shared_parts_limits_records_carry_their_own_fields(
    store: WhitelistStore, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    monkeypatch.setattr(index_module, limit, 2 if limit == "SHARED_PARTS_MAX" else 300)
    apply(store, FORGE.snapshot(VARIED))

    expected = {str(fields["epc"]): as_record(fields) for fields in VARIED}
    assert from_index(store, [*expected, epc(99)]) == expected
    raw = (store.path.parent / str(store.index_state().file)).read_bytes()
    header = index_module.HEADER.unpack(raw[: index_module.HEADER.size])
    data_len, shared_parts, shared_len = header[4:7]
    assert 1 <= shared_parts < len(VARIED)  # five items, five different shared parts
    assert shared_len <= (300 if limit == "SHARED_BYTES_MAX" else 2_000)
    data = raw[index_module.HEADER_BYTES : index_module.HEADER_BYTES + data_len]
    carrying = [line for line in data.split(b"\n") if line.count(b"\x1f") == 11]
    assert len(carrying) == len(VARIED) - shared_parts


def test_the_sixteen_epcs_of_a_serial_run_fill_one_group_and_are_read_at_once(
    store: WhitelistStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = [epc(0x120 + n) for n in range(16)]  # differ only in the last hex digit
    apply(store, FORGE.snapshot([item(key) for key in [*run, *(epc(n) for n in range(600))]]))
    groups = -(-616 // (2 * GROUP_BUCKETS))
    buckets = {bucket_of(probe_of(key), groups) for key in run}
    assert len(buckets) == GROUP_BUCKETS
    assert len({bucket // GROUP_BUCKETS for bucket in buckets}) == 1

    reads: list[int] = []
    real_pread = os.pread

    def counted(fd: int, length: int, offset: int) -> bytes:
        reads.append(length)
        return real_pread(fd, length, offset)

    index = the_index(store)
    monkeypatch.setattr(os, "pread", counted)
    found: dict[str, ItemRecord] = {}
    index.lookup(run, found)
    monkeypatch.undo()
    index.close()
    assert sorted(found) == run
    assert len(reads) == 1


def test_epcs_ending_alike_still_spread_over_their_group() -> None:
    # Serial numbers that all end in 0 (a numbering step of 16) must not share one bucket.
    keys = [f"30740000000000{n:09X}0" for n in range(4096)]
    per_bucket: dict[int, int] = {}
    for key in keys:
        bucket = bucket_of(probe_of(key), 128)
        per_bucket[bucket] = per_bucket.get(bucket, 0) + 1
    assert len(per_bucket) > 128 * GROUP_BUCKETS * 0.8
    assert max(per_bucket.values()) <= 12


def test_an_epc_holding_a_separator_or_a_newline_finds_nothing(store: WhitelistStore) -> None:
    apply(store, FORGE.snapshot([item(epc(1)), item(epc(2))]))

    # Such a probe could otherwise match the end of one record and the start of the next.
    spanning = f"{epc(1)}\x1f\n{epc(2)}"
    assert from_index(store, [spanning, "\x1f", "\n", ""]) == {}
    assert store.lookup_items([spanning]) == {}


def test_items_a_delta_changes_are_answered_from_the_database(store: WhitelistStore) -> None:
    apply(store, FORGE.snapshot([item(EPC), item(epc(1)), item(epc(2))]))
    built = store.index_state().file
    apply(
        store,
        FORGE.delta(
            [
                {"op": "upsert", **item(epc(1), status="seized")},
                {"op": "delete", "type": "item", "epc": epc(2)},
            ],
            seq=2,
        ),
    )

    state = store.index_state()
    assert (state.file, state.unindexed) == (built, 2)
    # The file still holds the old items: the database must be what answers for them.
    stale = from_index(store, [epc(1), epc(2)])
    assert (stale[epc(1)].status, epc(2) in stale) == ("bonded", True)
    found = store.lookup_items([EPC, epc(1), epc(2)])
    assert sorted(found) == sorted([EPC, epc(1)])
    assert found[epc(1)].status == "seized"


def listed_token(store: WhitelistStore) -> str | None:
    with sqlite3.connect(store.path) as conn:
        (token,) = conn.execute("SELECT delta_token FROM item_index").fetchone()
    conn.close()
    return None if token is None else str(token)


def test_the_items_a_delta_changed_are_found_in_an_index_of_their_own(
    store: WhitelistStore,
) -> None:
    apply(store, FORGE.snapshot([item(epc(n)) for n in range(10)]))
    changes = [
        {"op": "upsert", **item(epc(1), status="seized")},
        {"op": "delete", "type": "item", "epc": epc(2)},
        {"op": "upsert", **item(epc(20))},
    ]
    apply(store, FORGE.delta(changes, seq=2))

    token = listed_token(store)
    assert token is not None
    listed = ItemIndex.open(store.path.parent / file_name(token), token)
    found: dict[str, ItemRecord] = {}
    listed.lookup([epc(1), epc(2), epc(20), epc(3)], found)
    listed.close()
    assert {key: record.status for key, record in found.items()} == {
        epc(1): "seized",
        epc(20): "bonded",
    }
    # Behind the store's back the rows go: it still answers, so it read the listed index.
    with sqlite3.connect(store.path) as conn:
        conn.execute("DELETE FROM items WHERE epc IN (?, ?)", (epc(1), epc(20)))
    conn.close()
    answer = store.lookup_items([epc(1), epc(2), epc(20), epc(3)])
    assert {key: record.status for key, record in answer.items()} == {
        epc(1): "seized",
        epc(20): "bonded",
        epc(3): "bonded",
    }


def test_a_missing_index_of_the_listed_items_costs_speed_not_answers_and_comes_back(
    store: WhitelistStore,
) -> None:
    apply(store, FORGE.snapshot([item(epc(n)) for n in range(10)]))
    apply(store, FORGE.delta([{"op": "upsert", **item(epc(1), status="seized")}], seq=2))
    lost = listed_token(store)
    assert lost is not None
    (store.path.parent / file_name(lost)).unlink()

    assert store.item(epc(1)).status == "seized"  # type: ignore[union-attr]
    # A delta that lists no item still writes it again: the recorded one is unusable.
    apply(store, FORGE.delta([{"op": "upsert", **ENTERPRISE}], seq=3))

    again = listed_token(store)
    assert again not in (None, lost)
    assert len(index_files(store.path.parent)) == 2
    assert store.item(epc(1)).status == "seized"  # type: ignore[union-attr]


def test_each_delta_below_the_threshold_rewrites_the_index_of_the_listed_items(
    tmp_path: Path,
) -> None:
    with WhitelistStore.open(tmp_path, reindex_after=10) as store:
        apply(store, FORGE.snapshot([item(epc(n)) for n in range(6)]))
        tokens = []
        for seq, n in enumerate([1, 2, 1, 3], start=2):
            status = "seized" if seq % 2 == 0 else "released"
            apply(store, FORGE.delta([{"op": "upsert", **item(epc(n), status=status)}], seq=seq))
            tokens.append(listed_token(store))

            found = store.lookup_items([epc(k) for k in range(6)])
            assert found[epc(n)].status == status

        assert len(set(tokens)) == 4  # a new one each time, the old one gone
        assert len(index_files(tmp_path)) == 2
        found = store.lookup_items([epc(k) for k in range(6)])
        assert [found[epc(k)].status for k in range(5)] == [
            "bonded",
            "seized",
            "released",
            "released",
            "bonded",
        ]


def test_a_delta_that_lists_no_item_keeps_the_index_of_the_listed_items(
    store: WhitelistStore,
) -> None:
    apply(store, FORGE.snapshot([item(epc(n)) for n in range(10)]))
    apply(store, FORGE.delta([{"op": "upsert", **item(epc(1), status="seized")}], seq=2))
    before = (listed_token(store), index_files(store.path.parent))

    apply(store, FORGE.delta([{"op": "upsert", **ENTERPRISE}], seq=3))

    assert (listed_token(store), index_files(store.path.parent)) == before


def test_more_changes_than_reindex_after_build_a_new_index_and_retire_the_old_file(
    store: WhitelistStore,
) -> None:
    assert apply(store, FORGE.snapshot([item(epc(n)) for n in range(10)]))
    first = index_files(store.path.parent)
    seized = [{"op": "upsert", **item(epc(n), status="seized")} for n in range(3)]
    assert not apply(store, FORGE.delta(seized, seq=2))
    # Three changes: not yet; beside the index, one of the three changed items.
    assert store.index_state().file in first
    assert len(set(index_files(store.path.parent)) - set(first)) == 1
    assert apply(store, FORGE.delta([{"op": "delete", "type": "item", "epc": epc(9)}], seq=3))

    state = store.index_state()
    assert (state.records, state.unindexed) == (9, 0)
    assert index_files(store.path.parent) == [state.file] != first
    found = from_index(store, [epc(n) for n in range(10)])
    assert sorted(found) == [epc(n) for n in range(9)]
    assert [found[epc(n)].status for n in range(4)] == ["seized"] * 3 + ["bonded"]


def test_a_delta_past_reindex_after_is_in_force_before_the_index_is_rebuilt(
    store: WhitelistStore,
) -> None:
    apply(store, FORGE.snapshot([item(epc(n)) for n in range(10)]))
    first = store.index_state().file
    seized = [{"op": "upsert", **item(epc(n), status="seized")} for n in range(5)]
    delta = FORGE.delta(seized, seq=2)

    result = store.apply(delta, site=SITE, sha256="d", now=NOW)

    assert (result.index_due, result.index_built) == (True, False)
    state = store.index_state()
    assert (state.file, state.unindexed) == (first, 5)  # committed; the old file still current
    assert {r.status for r in store.lookup_items([epc(n) for n in range(5)]).values()} == {"seized"}

    state = store.reindex(now=NOW)

    assert (state.unindexed, state.usable) == (0, True)
    assert index_files(store.path.parent) == [state.file] != [first]
    assert {r.status for r in from_index(store, [epc(n) for n in range(5)]).values()} == {"seized"}


class _StopAfter(threading.Event):
    """Asked ``checks`` times whether to stop, says no; then yes."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.checks = checks

    def is_set(self) -> bool:
        self.checks -= 1
        return self.checks < 0


@pytest.mark.parametrize("checks", [0, 3, 9], ids=["at once", "while sorting", "while writing"])
def test_a_stopped_build_changes_nothing_and_leaves_no_file(
    store: WhitelistStore, checks: int
) -> None:
    # 2,000 items: the build asks every 256 rows, 8 times while SQLite sorts, then while the
    # rows are written out.
    apply(store, FORGE.snapshot([item(epc(n)) for n in range(2000)]))
    built = store.index_state().file
    store.apply(
        FORGE.delta([{"op": "upsert", **item(epc(1), status="seized")}], seq=2),
        site=SITE,
        sha256="d",
        now=NOW,
    )
    listed = (store.index_state(), index_files(store.path.parent))

    with pytest.raises(index_module.IndexBuildStoppedError):
        store.reindex(now=NOW, stop=_StopAfter(checks))

    assert (store.index_state(), index_files(store.path.parent)) == listed
    assert listed[0].file == built
    assert store.item(epc(1)).status == "seized"  # type: ignore[union-attr]


def test_a_refused_apply_leaves_the_index_and_its_files_as_they_were(
    store: WhitelistStore,
) -> None:
    apply(store, FORGE.snapshot([item(epc(n)) for n in range(5)]))
    before = (store.index_state(), index_files(store.path.parent))
    late_fault = FORGE.body([item(epc(n)) for n in range(5, 600)], seq=2, count=1)

    with pytest.raises(BundleError):
        apply(store, FORGE.verify(FORGE.sign(late_fault)))

    assert (store.index_state(), index_files(store.path.parent)) == before


def test_a_missing_index_file_costs_speed_not_answers_and_the_next_apply_rebuilds_it(
    tmp_path: Path,
) -> None:
    with WhitelistStore.open(tmp_path) as first:
        apply(first, FORGE.snapshot([item(epc(1)), item(epc(2), status="seized")]))
        lost = first.index_state().file
    assert lost is not None
    (tmp_path / lost).unlink()

    with WhitelistStore.open(tmp_path) as store:
        state = store.index_state()
        assert (state.file, state.usable) == (lost, False)
        found = store.lookup_items([epc(1), epc(2)])
        assert (found[epc(1)].status, found[epc(2)].status) == ("bonded", "seized")

        apply(store, FORGE.delta([{"op": "upsert", **item(epc(3))}], seq=2))

        state = store.index_state()
        assert state.usable
        assert state.file != lost
        assert state.unindexed == 0
        assert sorted(from_index(store, [epc(1), epc(2), epc(3)])) == [epc(1), epc(2), epc(3)]


@pytest.mark.parametrize(
    "damage", ["truncated", "another build", "not an index", "bad offsets", "empty"]
)
def test_a_damaged_index_file_is_refused_and_lookups_read_the_database(
    tmp_path: Path, damage: str
) -> None:
    with WhitelistStore.open(tmp_path) as store:
        apply(store, FORGE.snapshot([item(epc(1)), item(epc(2))]))
        name = store.index_state().file
    assert name is not None
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        del data[-1]
    elif damage == "another build":
        data[8] ^= 0xFF  # the token
    elif damage == "not an index":
        data[0:8] = b"SQLite f"
    elif damage == "bad offsets":
        data[-4:] = (len(data)).to_bytes(4, "little")
    else:
        data.clear()
    path.write_bytes(bytes(data))

    token = name.removeprefix(INDEX_PREFIX).removesuffix(".idx")
    with pytest.raises(UnusableIndexError, match=name):
        ItemIndex.open(path, token)
    with WhitelistStore.open(tmp_path) as store:
        assert sorted(store.lookup_items([epc(1), epc(2), epc(3)])) == [epc(1), epc(2)]
        assert store.index_state().usable is (damage == "bad offsets")


def test_an_index_of_an_older_format_is_refused_until_reindex_writes_a_new_one(
    tmp_path: Path,
) -> None:
    with WhitelistStore.open(tmp_path) as store:
        apply(store, FORGE.snapshot([item(epc(1)), item(epc(2), status="seized")]))
        old = store.index_state().file
    assert old is not None
    data = bytearray((tmp_path / old).read_bytes())
    data[0:8] = b"EGITEMS1"  # as the previous release wrote it
    (tmp_path / old).write_bytes(bytes(data))

    with WhitelistStore.open(tmp_path) as store:
        assert store.index_state().usable is False
        found = store.lookup_items([epc(1), epc(2)])
        assert (found[epc(1)].status, found[epc(2)].status) == ("bonded", "seized")

        state = store.reindex(now=NOW)

        assert (state.usable, state.records, state.unindexed) == (True, 2, 0)
        assert index_files(tmp_path) == [state.file] != [old]
        assert store.lookup_items([epc(1), epc(2)]) == found


def test_files_left_by_an_apply_that_died_are_removed_by_the_next_build(
    store: WhitelistStore,
) -> None:
    stray = store.path.parent / file_name("0" * 32)
    stray.write_bytes(b"half written")

    apply(store, FORGE.snapshot([item(epc(1))]))

    assert index_files(store.path.parent) == [store.index_state().file]


def test_a_schema_1_database_is_upgraded_and_indexed_by_its_next_apply(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        # Schema 1 exactly as it was shipped: the tables without the index's bookkeeping.
        conn.executescript(store_module._SCHEMA)
        conn.execute(
            "INSERT INTO items (epc, status, directions, destinations) "
            "VALUES (?, 'bonded', '[\"in\", \"out\"]', '[]')",
            (epc(1),),
        )
        conn.execute(
            "INSERT INTO meta VALUES (1, ?, 1, '2026-11-25T08:00:00Z', '2026-11-25T08:01:00Z')",
            (SITE,),
        )
        conn.execute("PRAGMA user_version = 1")
    conn.close()

    with WhitelistStore.open(tmp_path) as store:
        assert store.index_state().file is None
        assert sorted(store.lookup_items([epc(1), epc(2)])) == [epc(1)]

        apply(store, FORGE.delta([{"op": "upsert", **item(epc(2))}], seq=2))

        assert store.index_state().records == 2
        assert sorted(from_index(store, [epc(1), epc(2)])) == [epc(1), epc(2)]
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (4,)
    conn.close()


def test_a_schema_2_database_keeps_its_list_of_changed_items_through_the_upgrade(
    tmp_path: Path,
) -> None:
    with WhitelistStore.open(tmp_path, reindex_after=10) as store:
        apply(store, FORGE.snapshot([item(epc(n)) for n in range(5)]))
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        # As schema 2 left it: a delta changed epc(1) and the list has no seq column.
        conn.execute("DROP INDEX items_unindexed_by_seq")
        conn.execute("ALTER TABLE items_unindexed DROP COLUMN listed_seq")
        conn.execute("ALTER TABLE item_index DROP COLUMN delta_token")
        conn.execute("UPDATE items SET status = 'seized' WHERE epc = ?", (epc(1),))
        conn.execute("INSERT INTO items_unindexed (epc) VALUES (?)", (epc(1),))
        conn.execute("PRAGMA user_version = 2")
    conn.close()

    with WhitelistStore.open(tmp_path, reindex_after=10) as store:
        assert store.index_state().unindexed == 1
        assert store.item(epc(1)).status == "seized"  # type: ignore[union-attr]
        apply(store, FORGE.delta([{"op": "upsert", **item(epc(2), status="seized")}], seq=2))
        found = store.lookup_items([epc(n) for n in range(5)])
        assert [found[epc(n)].status for n in range(4)] == ["bonded", "seized", "seized", "bonded"]
        assert store.index_state().unindexed == 2


def test_an_open_store_reads_only_what_each_delta_adds_to_the_list_and_misses_nothing(
    store: WhitelistStore,
) -> None:
    with WhitelistStore.open(store.path.parent, reindex_after=100) as other_process:
        apply(store, FORGE.snapshot([item(epc(n)) for n in range(20)]))
        assert len(other_process.lookup_items([epc(n) for n in range(20)])) == 20
        for seq, n in enumerate([3, 7, 3, 11], start=2):  # epc(3) listed twice
            status = "seized" if seq % 2 == 0 else "released"
            delta = FORGE.delta([{"op": "upsert", **item(epc(n), status=status)}], seq=seq)
            other_process.apply(delta, site=SITE, sha256=str(seq), now=NOW)
            assert store.item(epc(n)).status == status  # type: ignore[union-attr]
        found = store.lookup_items([epc(n) for n in range(20)])
        assert {n: found[epc(n)].status for n in (3, 7, 11)} == {
            3: "seized",
            7: "released",
            11: "released",
        }
        assert store.index_state().unindexed == 3


def test_another_process_s_snapshot_moves_an_open_store_to_the_new_index(
    tmp_path: Path,
) -> None:
    with WhitelistStore.open(tmp_path) as daemon:
        apply(daemon, FORGE.snapshot([item(epc(1))]))
        assert sorted(daemon.lookup_items([epc(1), epc(2)])) == [epc(1)]

        with WhitelistStore.open(tmp_path) as cli:
            apply(cli, FORGE.snapshot([item(epc(2), status="seized")], seq=2))

        # The daemon's old file is gone; it reads the new one without reopening.
        assert len(index_files(tmp_path)) == 1
        found = daemon.lookup_items([epc(1), epc(2)])
        assert sorted(found) == [epc(2)]
        assert found[epc(2)].status == "seized"


def test_warming_opens_the_index_another_process_wrote_before_any_lookup(
    tmp_path: Path,
) -> None:
    with WhitelistStore.open(tmp_path) as daemon:
        daemon.warm()
        with WhitelistStore.open(tmp_path) as cli:
            apply(cli, FORGE.snapshot([item(epc(1))]))
        path = tmp_path / str(daemon.index_state().file)
        assert path not in open_files()

        daemon.warm()

        assert path in open_files()
        assert sorted(daemon.lookup_items([epc(1), epc(2)])) == [epc(1)]


def replaced_by_another_process(daemon: WhitelistStore) -> tuple[Path, Path]:
    """A snapshot the daemon has open, then another one applied by another store (as by
    ``whitelist import``): the old index file and the new one."""
    directory = daemon.path.parent
    apply(daemon, FORGE.snapshot([item(epc(1))]))
    daemon.warm()
    old = directory / str(daemon.index_state().file)
    with WhitelistStore.open(directory) as cli:
        apply(cli, FORGE.snapshot([item(epc(2))], seq=2))
    return old, directory / str(daemon.index_state().file)


def test_an_index_file_a_rebuild_replaced_is_closed_by_warm_not_by_a_lookup(
    tmp_path: Path,
) -> None:
    with WhitelistStore.open(tmp_path) as daemon:
        old, new = replaced_by_another_process(daemon)

        assert sorted(daemon.lookup_items([epc(1), epc(2)])) == [epc(2)]
        # Removed by the apply, still open: its last close frees it, which takes a while.
        assert not old.exists()
        assert {old, new} <= open_files()

        daemon.warm()

        assert old not in open_files()
        assert new in open_files()


def test_a_view_that_fails_to_load_keeps_the_last_one_and_leaves_no_file_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with WhitelistStore.open(tmp_path) as daemon:
        old, new = replaced_by_another_process(daemon)
        # The read after the new file is opened fails (as SQLite may: busy, I/O error).
        monkeypatch.setattr(store_module, "_UNINDEXED_SELECT", "SELECT no_such_column")
        with pytest.raises(StoreError):
            daemon.warm()
        assert new not in open_files()

        monkeypatch.undo()
        assert sorted(daemon.lookup_items([epc(1), epc(2)])) == [epc(2)]
        daemon.warm()
        assert old not in open_files()
        assert new in open_files()


def test_an_index_whose_shared_parts_are_damaged_is_refused_when_opened(tmp_path: Path) -> None:
    with WhitelistStore.open(tmp_path) as store:
        apply(store, FORGE.snapshot([item(epc(1)), item(epc(2), directions=["in"])]))
        name = str(store.index_state().file)
    path = tmp_path / name
    data = path.read_bytes()
    # A list field of a shared part that is not JSON any more: same length, so the header
    # and the offsets still agree.
    damaged = data.replace(b'["in"]', b'["in" ', 1)
    assert damaged != data
    path.write_bytes(damaged)

    token = name.removeprefix(INDEX_PREFIX).removesuffix(".idx")
    with pytest.raises(UnusableIndexError, match="shared parts damaged"):
        ItemIndex.open(path, token)
    with WhitelistStore.open(tmp_path) as store:
        found = store.lookup_items([epc(1), epc(2), epc(3)])
    assert found[epc(2)].directions == ("in",)
    assert sorted(found) == [epc(1), epc(2)]


# -- the index and the database never disagree ------------------------------------------------

_EPCS = [epc(n) for n in range(12)]
_TEXT = st.text(st.sampled_from('ab\x1f\n\x1e\\"中 '), min_size=1, max_size=6)
_ITEMS = st.builds(
    lambda key, status, owner, sku, destinations: item(
        key, status=status, owner=owner, sku=sku, destinations=destinations
    ),
    st.sampled_from(_EPCS),
    st.sampled_from(["bonded", "released", "seized", "duty_free"]),
    st.none() | _TEXT,
    st.none() | _TEXT,
    st.lists(_TEXT, max_size=2),
)
_CHANGE = st.one_of(
    _ITEMS.map(lambda fields: {"op": "upsert", **fields}),
    st.sampled_from(_EPCS).map(lambda key: {"op": "delete", "type": "item", "epc": key}),
)
_BUNDLES = st.lists(
    st.one_of(
        st.tuples(st.just("snapshot"), st.lists(_ITEMS, max_size=8)),
        st.tuples(st.just("delta"), st.lists(_CHANGE, min_size=1, max_size=5)),
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    bundles=_BUNDLES,
    reindex_after=st.integers(0, 6),
    reindex_at=st.sets(st.integers(1, 6)),
    shared_parts=st.sampled_from([0, 1, 3, index_module.SHARED_PARTS_MAX]),
)
def test_lookups_always_answer_what_the_bundles_applied_say(
    tmp_path_factory: pytest.TempPathFactory,
    bundles: list[tuple[str, list[dict[str, object]]]],
    reindex_after: int,
    reindex_at: set[int],
    shared_parts: int,
) -> None:
    model: dict[str, ItemRecord] = {}
    with (
        mock.patch.object(index_module, "SHARED_PARTS_MAX", shared_parts),
        WhitelistStore.open(tmp_path_factory.mktemp("s"), reindex_after=reindex_after) as store,
    ):
        for seq, (kind, records) in enumerate(bundles, start=1):
            if seq in reindex_at and store.state().seq is not None:
                store.reindex(now=NOW)
            if kind == "snapshot":
                apply(store, FORGE.snapshot(records, seq=seq))
                model = {str(fields["epc"]): as_record(fields) for fields in records}
            elif store.state().seq is not None:
                apply(store, FORGE.delta(records, seq=seq))
                for change in records:
                    key = str(change["epc"])
                    if change["op"] == "delete":
                        model.pop(key, None)
                    else:
                        model[key] = as_record({k: v for k, v in change.items() if k != "op"})
            assert store.lookup_items(_EPCS) == model
            state = store.index_state()
            if state.file is not None:
                assert state.usable
                assert state.unindexed <= reindex_after
