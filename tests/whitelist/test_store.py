"""The SQLite whitelist: atomic applies, sequence rules, lookups, and sharing the file."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgegate.gate.model import Direction
from edgegate.whitelist import store as store_module
from edgegate.whitelist.bundle import BundleKind, VerifiedBundle, public_key_base64
from edgegate.whitelist.errors import BundleError, RejectReason
from edgegate.whitelist.records import (
    DestinationKind,
    EnterpriseRecord,
    Entry,
    ItemRow,
    RecordType,
    Tier,
)
from edgegate.whitelist.store import DB_NAME, StoreError, WhitelistState, WhitelistStore

from .support import (
    DESTINATION,
    ENTERPRISE,
    EPC,
    EXAMPLES,
    ITEM,
    PASS,
    SITE,
    VEHICLE,
    VEHICLE_TAG,
    Forge,
    epc,
    item,
)

NOW = datetime(2026, 11, 25, 8, 5, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[WhitelistStore]:
    with WhitelistStore.open(tmp_path) as opened:
        yield opened


def apply(store: WhitelistStore, bundle: VerifiedBundle, sha256: str = "") -> None:
    digest = sha256 or hashlib.sha256(bundle.data).hexdigest()
    store.apply(bundle, site=SITE, sha256=digest, now=NOW)


def refused(reason: RejectReason, store: WhitelistStore, bundle: VerifiedBundle) -> str:
    """Assert applying ``bundle`` is refused for ``reason`` and changes nothing at all."""
    before = (store.state(), store.lookup_items([epc(n) for n in range(10)] + [EPC]))
    with pytest.raises(BundleError) as caught:
        apply(store, bundle)
    assert caught.value.reason is reason, caught.value
    assert (store.state(), store.lookup_items([epc(n) for n in range(10)] + [EPC])) == before
    return caught.value.message


def row_counts(path: Path) -> dict[str, int]:
    """Counted the slow way, to check the maintained counts against."""
    with sqlite3.connect(path / DB_NAME) as conn:
        return {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("items", "passes", "records")
        }


def test_an_empty_store_has_no_state(store: WhitelistStore) -> None:
    assert store.state() == WhitelistState(None, None, None, None, dict.fromkeys(RecordType, 0))
    assert store.lookup_items([EPC]) == {}
    assert store.item(EPC) is None


def test_a_snapshot_then_a_delta_apply(store: WhitelistStore, forge: Forge) -> None:
    snapshot = forge.snapshot([*EXAMPLES, item(epc(1)), item(epc(2))], seq=41)
    result = store.apply(snapshot, site=SITE, sha256="abc", now=NOW)

    assert (result.kind, result.seq, result.previous_seq, result.records) == (
        BundleKind.SNAPSHOT,
        41,
        None,
        7,
    )
    assert result.counts == {
        RecordType.ITEM: 3,
        RecordType.PASS: 1,
        RecordType.ENTERPRISE: 1,
        RecordType.VEHICLE: 1,
        RecordType.DESTINATION: 1,
    }
    assert store.item(EPC) == next(snapshot.entries())

    delta = forge.delta(
        [
            {"op": "upsert", **item(epc(1), status="seized")},
            {"op": "delete", "type": "item", "epc": epc(2)},
            {"op": "upsert", **item(epc(3))},
            {"op": "delete", "type": "enterprise", "owner": ENTERPRISE["owner"]},
        ],
        seq=42,
    )
    result = store.apply(delta, site=SITE, sha256="def", now=NOW)

    assert (result.kind, result.seq, result.previous_seq, result.records) == (
        BundleKind.DELTA,
        42,
        41,
        4,
    )
    state = store.state()
    assert (state.site, state.seq, state.applied_at) == (SITE, 42, NOW)
    assert state.issued_at == datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    assert state.counts[RecordType.ITEM] == 3
    assert state.counts[RecordType.ENTERPRISE] == 0
    found = store.lookup_items([EPC, epc(1), epc(2), epc(3)])
    assert sorted(found) == sorted([EPC, epc(1), epc(3)])
    assert found[epc(1)].status == "seized"
    assert store.enterprise(str(ENTERPRISE["owner"])) is None


def test_items_taking_the_general_parse_path_keep_every_field_in_place(
    store: WhitelistStore, forge: Forge
) -> None:
    # A lower-case EPC is valid but not the import's clean shape: it arrives as an
    # ItemRecord (a tuple whose fields are in another order than a row), not as a row.
    first_epc, second_epc = epc(0xABC), epc(0xDEF)
    snapshot = forge.snapshot([item(first_epc.lower(), tid="E2801160" * 3)], seq=1)
    store.apply(snapshot, site=SITE, sha256="a", now=NOW)
    delta = forge.delta([{"op": "upsert", **item(second_epc.lower(), status="seized")}], seq=2)
    store.apply(delta, site=SITE, sha256="b", now=NOW)

    first, second = store.item(first_epc), store.item(second_epc)
    assert first is not None
    assert second is not None
    assert (first.epc, first.tid, first.sku, first.status, first.owner) == (
        first_epc,
        "E2801160" * 3,
        ITEM["sku"],
        ITEM["status"],
        ITEM["owner"],
    )
    assert (second.epc, second.sku, second.status) == (second_epc, ITEM["sku"], "seized")


def test_a_snapshot_replaces_every_record_type(store: WhitelistStore, forge: Forge) -> None:
    apply(store, forge.snapshot(EXAMPLES, seq=1))
    apply(store, forge.snapshot([item(epc(1))], seq=2))

    state = store.state()
    assert state.counts == dict.fromkeys(RecordType, 0) | {RecordType.ITEM: 1}
    assert store.item(EPC) is None
    assert store.pass_by_no(str(PASS["pass_no"])) is None
    assert store.vehicle(VEHICLE_TAG) is None


def test_lookups_of_every_record_type(store: WhitelistStore, forge: Forge) -> None:
    records = [*EXAMPLES, {**PASS, "pass_no": "HP2", "vehicle_tag": None}]
    apply(store, forge.snapshot(records))
    parsed = list(forge.snapshot(records).entries())

    assert store.pass_by_no("HP4601202611250001") == parsed[1]
    assert store.enterprise("91460000MA5T000001") == EnterpriseRecord(
        "91460000MA5T000001", Tier.ADVANCED
    )
    assert store.vehicle(VEHICLE_TAG) == parsed[3]
    destination = store.destination(str(DESTINATION["id"]))
    assert destination is not None
    assert destination.kind is DestinationKind.DUTY_FREE_SHOP
    assert store.vehicles_among([EPC, VEHICLE_TAG]) == {VEHICLE_TAG: parsed[3]}
    by_tag = store.passes_for_vehicle(vehicle_tag=VEHICLE_TAG)
    assert [p.pass_no for p in by_tag] == ["HP4601202611250001"]
    by_plate = store.passes_for_vehicle(vehicle_no=str(VEHICLE["vehicle_no"]))
    assert [p.pass_no for p in by_plate] == ["HP2", "HP4601202611250001"]
    assert by_plate[1].direction is Direction.IN
    assert store.passes_for_vehicle() == []


def test_an_older_snapshot_is_a_rollback(store: WhitelistStore, forge: Forge) -> None:
    apply(store, forge.snapshot([item(epc(1))], seq=5))

    message = refused(RejectReason.ROLLBACK, store, forge.snapshot([item(epc(2))], seq=4))
    assert "seq 4" in message
    assert "current seq 5" in message


def test_a_snapshot_of_the_current_seq_is_a_duplicate_not_a_rollback(
    store: WhitelistStore, forge: Forge
) -> None:
    # Another gate's resync answer: this gate reached seq 6 through a delta.
    apply(store, forge.snapshot([item(epc(1))], seq=5))
    apply(store, forge.delta([{"op": "upsert", **item(epc(2))}], seq=6))

    message = refused(
        RejectReason.DUPLICATE, store, forge.snapshot([item(epc(1)), item(epc(2))], seq=6)
    )
    assert "current seq 6" in message


def test_an_already_applied_delta_is_a_rollback_not_a_gap(
    store: WhitelistStore, forge: Forge
) -> None:
    apply(store, forge.snapshot([], seq=5))
    apply(store, forge.delta([{"op": "upsert", **item(epc(1))}], seq=6))

    refused(RejectReason.ROLLBACK, store, forge.delta([], seq=6, base_seq=5))


def test_the_same_bundle_again_is_a_duplicate(store: WhitelistStore, forge: Forge) -> None:
    bundle = forge.snapshot([item(epc(1))], seq=5)
    apply(store, bundle, sha256="same")

    with pytest.raises(BundleError) as caught:
        apply(store, bundle, sha256="same")
    assert caught.value.reason is RejectReason.DUPLICATE


def test_a_delta_that_does_not_follow_is_a_gap_naming_both_seqs(
    store: WhitelistStore, forge: Forge
) -> None:
    apply(store, forge.snapshot([item(epc(1))], seq=3))

    message = refused(RejectReason.GAP, store, forge.delta([], seq=7, base_seq=5))
    assert "base_seq 5" in message
    assert "seq 3" in message


def test_a_delta_on_an_empty_store_is_a_gap(store: WhitelistStore, forge: Forge) -> None:
    message = refused(RejectReason.GAP, store, forge.delta([], seq=1, base_seq=0))
    assert "no whitelist" in message


def test_a_bundle_for_another_site_is_refused(store: WhitelistStore, forge: Forge) -> None:
    apply(store, forge.snapshot([item(epc(1))], seq=1))
    other = forge.verify(forge.sign(forge.body([item(epc(2))], seq=2, site="SHA-FTZ")))

    message = refused(RejectReason.WRONG_SITE, store, other)
    assert "SHA-FTZ" in message
    assert SITE in message


def test_a_re_sited_gate_starts_over_from_a_snapshot(tmp_path: Path, forge: Forge) -> None:
    with WhitelistStore.open(tmp_path) as store:
        apply(store, forge.snapshot([item(epc(1))], seq=90))
        other = forge.verify(forge.sign(forge.body([item(epc(2))], seq=1, site="SHA-FTZ")))

        result = store.apply(other, site="SHA-FTZ", sha256="x", now=NOW)

        assert result.previous_seq is None
        assert (store.state().site, store.state().seq) == ("SHA-FTZ", 1)
        assert sorted(store.lookup_items([epc(1), epc(2)])) == [epc(2)]


@pytest.mark.parametrize("fault", ["bad record at the end", "count too small", "count too big"])
def test_a_fault_found_late_in_a_snapshot_leaves_the_previous_whitelist(
    store: WhitelistStore, forge: Forge, fault: str
) -> None:
    apply(store, forge.snapshot([item(EPC, sku="OLD"), item(epc(1))], seq=1))
    many = [item(EPC, sku="NEW"), *(item(epc(n)) for n in range(2, 1300))]
    if fault == "bad record at the end":
        body = forge.body([*many, item(epc(9999), status="lost")], seq=2)
        reason = RejectReason.BAD_FIELD
    else:
        body = forge.body(many, seq=2, count=len(many) + (-1 if fault == "count too small" else 1))
        reason = RejectReason.COUNT_MISMATCH

    refused(reason, store, forge.verify(forge.sign(body)))
    assert store.state().seq == 1
    assert store.state().counts[RecordType.ITEM] == 2
    old = store.item(EPC)
    assert old is not None
    assert old.sku == "OLD"


def test_a_fault_late_in_a_delta_undoes_its_earlier_deletes(
    store: WhitelistStore, forge: Forge
) -> None:
    apply(store, forge.snapshot([item(EPC), item(epc(1)), VEHICLE], seq=1))
    body = forge.body(
        [
            {"op": "delete", "type": "item", "epc": EPC},
            {"op": "delete", "type": "vehicle", "vehicle_tag": VEHICLE_TAG},
            {"op": "upsert", "type": "bogus"},
        ],
        kind="delta",
        seq=2,
    )

    refused(RejectReason.UNKNOWN_RECORD_TYPE, store, forge.verify(forge.sign(body)))
    assert store.item(EPC) is not None
    assert store.vehicle(VEHICLE_TAG) is not None


def test_delta_operations_apply_in_bundle_order(store: WhitelistStore, forge: Forge) -> None:
    apply(store, forge.snapshot([item(epc(1))], seq=1))
    delta = forge.delta(
        [
            {"op": "upsert", **item(epc(2))},
            {"op": "delete", "type": "item", "epc": epc(2)},
            {"op": "delete", "type": "item", "epc": epc(1)},
            {"op": "upsert", **item(epc(1), sku="BACK")},
        ],
        seq=2,
    )

    apply(store, delta)

    assert sorted(store.lookup_items([epc(1), epc(2)])) == [epc(1)]
    back = store.item(epc(1))
    assert back is not None
    assert back.sku == "BACK"


def test_maintained_counts_match_the_rows(
    store: WhitelistStore, forge: Forge, tmp_path: Path
) -> None:
    # Duplicates inside a snapshot (the later line wins), upserts of existing keys,
    # deletes of absent keys, and runs longer than one batch.
    snapshot = [item(epc(n)) for n in range(1200)] + [item(epc(5), sku="LATER"), PASS, VEHICLE]
    apply(store, forge.snapshot(snapshot, seq=1))
    delta = (
        [{"op": "upsert", **item(epc(n))} for n in range(1100, 1700)]
        + [{"op": "delete", "type": "item", "epc": epc(n)} for n in range(0, 1800, 3)]
        + [{"op": "delete", "type": "vehicle", "vehicle_tag": VEHICLE_TAG}] * 2
        + [{"op": "upsert", **VEHICLE}, {"op": "upsert", **ENTERPRISE}]
    )
    apply(store, forge.delta(delta, seq=2))

    rows = row_counts(tmp_path)
    counts = store.state().counts
    assert counts[RecordType.ITEM] == rows["items"] == 1700 - len(range(0, 1700, 3))
    assert counts[RecordType.PASS] == rows["passes"] == 1
    assert counts[RecordType.VEHICLE] + counts[RecordType.ENTERPRISE] == rows["records"] == 2
    later = store.item(epc(5))
    assert later is not None
    assert later.sku == "LATER"
    assert sum(store.item_status_counts().values()) == rows["items"]


def test_lookup_items_returns_only_known_epcs_in_batches(
    store: WhitelistStore, forge: Forge
) -> None:
    apply(store, forge.snapshot([item(epc(n)) for n in range(0, 1400, 2)]))
    wanted = [epc(n) for n in range(1400)] + [epc(0), "E20034120000000000000000"]

    found = store.lookup_items(wanted)

    assert sorted(found) == sorted(epc(n) for n in range(0, 1400, 2))
    assert all(record.epc == key for key, record in found.items())
    assert store.lookup_items([]) == {}


def test_vehicles_are_recognised_across_applies_here_and_in_another_process(
    tmp_path: Path, forge: Forge
) -> None:
    other_tag = "E2000000000000000000FEED"
    daemon = WhitelistStore.open(tmp_path)
    daemon.apply(forge.snapshot([*EXAMPLES], seq=1), site=SITE, sha256="a", now=NOW)
    assert set(daemon.vehicles_among([EPC, VEHICLE_TAG, other_tag])) == {VEHICLE_TAG}

    second = {**VEHICLE, "vehicle_tag": other_tag}
    daemon.apply(forge.delta([{"op": "upsert", **second}], seq=2), site=SITE, sha256="b", now=NOW)
    assert set(daemon.vehicles_among([EPC, VEHICLE_TAG, other_tag])) == {VEHICLE_TAG, other_tag}

    # ``edgegate whitelist import`` is another connection to the same file.
    with WhitelistStore.open(tmp_path) as importer:
        gone = {"op": "delete", "type": "vehicle", "vehicle_tag": VEHICLE_TAG}
        importer.apply(forge.delta([gone], seq=3), site=SITE, sha256="c", now=NOW)
    assert set(daemon.vehicles_among([EPC, VEHICLE_TAG, other_tag])) == {other_tag}
    daemon.close()


def test_the_whitelist_survives_close_and_reopen(tmp_path: Path, forge: Forge) -> None:
    with WhitelistStore.open(tmp_path) as store:
        apply(store, forge.snapshot(EXAMPLES, seq=9))
        state, item_before = store.state(), store.item(EPC)

    with WhitelistStore.open(tmp_path) as store:
        assert store.state() == state
        assert store.item(EPC) == item_before


def test_another_process_import_is_seen_without_reopening(tmp_path: Path, forge: Forge) -> None:
    with WhitelistStore.open(tmp_path) as daemon:
        apply(daemon, forge.snapshot([item(epc(1))], seq=1))
        assert daemon.item(epc(2)) is None

        with WhitelistStore.open(tmp_path) as cli:
            apply(cli, forge.delta([{"op": "upsert", **item(epc(2))}], seq=2))

        assert daemon.state().seq == 2
        assert daemon.item(epc(2)) is not None


def test_lookups_do_not_wait_for_an_apply_in_progress(store: WhitelistStore, forge: Forge) -> None:
    started, resume = threading.Event(), threading.Event()

    class PausedBundle(VerifiedBundle):
        """Its records stop after the first until ``resume`` is set."""

        __slots__ = ()

        def changes(self) -> Iterator[Entry | ItemRow]:
            records = VerifiedBundle.changes(self)
            yield next(records)
            started.set()
            assert resume.wait(5)
            yield from records

    apply(store, forge.snapshot([item(epc(1))], seq=1))
    new = forge.snapshot([item(epc(2)), item(epc(3))], seq=2)
    paused = PausedBundle(new.header, new.key_id, new.data, new.records_start, new.records_line)
    worker = threading.Thread(target=apply, args=(store, paused))
    worker.start()
    try:
        assert started.wait(5)
        # The snapshot has deleted every item and inserted one, uncommitted: a lookup now
        # must neither block nor see any of it.
        assert sorted(store.lookup_items([epc(1), epc(2)])) == [epc(1)]
        assert store.state().seq == 1
    finally:
        resume.set()
        worker.join(5)
    assert sorted(store.lookup_items([epc(1), epc(2), epc(3)])) == [epc(2), epc(3)]


def test_a_busy_database_is_a_store_error(
    tmp_path: Path, forge: Forge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.05)
    with WhitelistStore.open(tmp_path) as store:
        other = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match="locked"):
                apply(store, forge.snapshot([item(epc(1))]))
        finally:
            other.execute("ROLLBACK")
            other.close()
        apply(store, forge.snapshot([item(epc(1))]))  # the store is still usable
        assert store.state().seq == 1


def test_the_store_opens_while_another_process_is_writing(
    tmp_path: Path, forge: Forge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.05)
    with WhitelistStore.open(tmp_path) as store:
        apply(store, forge.snapshot([item(epc(1))]))
    importer = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    importer.execute("BEGIN IMMEDIATE")
    importer.execute("DELETE FROM items")
    try:
        with WhitelistStore.open(tmp_path) as daemon:
            assert daemon.item(epc(1)) is not None
    finally:
        importer.execute("ROLLBACK")
        importer.close()


def test_history_records_every_applied_bundle(
    store: WhitelistStore, forge: Forge, tmp_path: Path
) -> None:
    apply(store, forge.snapshot([item(epc(1))], seq=1), sha256="aa")
    apply(store, forge.delta([], seq=2), sha256="bb")

    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        rows = conn.execute("SELECT seq, kind, base_seq, sha256, records FROM history").fetchall()
    assert rows == [(1, "snapshot", None, "aa", 1), (2, "delta", 1, "bb", 0)]


def test_a_file_that_is_not_a_whitelist_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite" * 100)

    with pytest.raises(StoreError, match="cannot open"):
        WhitelistStore.open(tmp_path)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    WhitelistStore.open(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("PRAGMA user_version = 99")

    with pytest.raises(StoreError, match="schema version 99"):
        WhitelistStore.open(tmp_path)


def test_apply_needs_an_aware_time(store: WhitelistStore, forge: Forge) -> None:
    with pytest.raises(ValueError, match="timezone"):
        store.apply(forge.snapshot([]), site=SITE, sha256="x", now=datetime(2026, 1, 1))


_CRASHING_IMPORT = """
import sys, time
from datetime import UTC, datetime
from pathlib import Path
from edgegate.whitelist.bundle import TrustedKeys, verify_bundle
from edgegate.whitelist.store import WhitelistStore

state, bundle, key = sys.argv[1:]
verified = verify_bundle(Path(bundle).read_bytes(), TrustedKeys.from_base64([key]))

def stop_here(done):
    print("inside the transaction", flush=True)
    time.sleep(60)  # killed here

with WhitelistStore.open(Path(state)) as store:
    store.apply(verified, site="HAK-CBZ", sha256="x", now=datetime.now(UTC), progress=stop_here)
"""


def test_a_process_killed_mid_apply_leaves_the_previous_whitelist(
    tmp_path: Path, forge: Forge
) -> None:
    with WhitelistStore.open(tmp_path) as store:
        apply(store, forge.snapshot([item(EPC, sku="OLD"), item(epc(1))], seq=1))
        before = (store.state(), store.lookup_items([EPC, epc(1), epc(2)]))
    bundle = tmp_path / "new.bundle"
    bundle.write_bytes(forge.sign(forge.body([item(epc(n)) for n in range(2, 3000)], seq=2)))
    key = public_key_base64(forge.private)
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_IMPORT, str(tmp_path), str(bundle), key],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"inside the transaction\n"
    finally:
        child.kill()  # SIGKILL: no cleanup, no rollback by the process itself
        child.wait()

    with WhitelistStore.open(tmp_path) as store:
        assert (store.state(), store.lookup_items([EPC, epc(1), epc(2)])) == before
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
