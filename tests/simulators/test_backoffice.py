"""The back-office simulator's catalog: real identifiers, passes that match their items,
bundles that a gate verifies and applies."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgegate.whitelist.bundle import TrustedKeys, public_key_base64, verify_bundle
from edgegate.whitelist.records import normalize_epc
from simulators.backoffice import (
    BackOffice,
    BackOfficeSettings,
    Catalog,
    CatalogSpec,
    gtin14,
    sgtin96,
    uscc,
    write_bundle_file,
)

SPEC = CatalogSpec(items=3_000, issued_at=datetime(2026, 11, 25, 8, tzinfo=UTC))


def test_identifiers_carry_their_check_digits() -> None:
    assert gtin14(0, "0614141", "12345") == "00614141123452"  # the GS1 example
    # SGTIN-96 of urn:epc:id:sgtin:0614141.812345.6789 (TDS 1.13 example, filter 3, part 5)
    assert sgtin96("0614141", "812345", 6789, filter_value=3) == "3074257BF7194E4000001A85"
    assert uscc("350100", "M000100Y4") == "91350100M000100Y43"  # a published valid code
    assert len(uscc("460000", "MA5T00001")) == 18


def test_the_catalog_is_deterministic_and_its_epcs_are_unique_and_valid() -> None:
    lines = list(Catalog(SPEC).item_lines())
    assert lines == list(Catalog(SPEC).item_lines())
    items = [json.loads(line) for line in lines]
    epcs = [item["epc"] for item in items]
    assert len(set(epcs)) == len(epcs) == SPEC.items
    assert all(normalize_epc(epc) == epc for epc in epcs)
    assert len({item["trace_code"] for item in items}) == SPEC.items
    assert {item["status"] for item in items} >= {"bonded", "duty_free", "released"}
    catalog = Catalog(SPEC)
    assert [catalog.epc(n) for n in (0, 1234, SPEC.items - 1)] == [
        epcs[0],
        epcs[1234],
        epcs[-1],
    ]


def test_pass_lines_match_whole_pallets_of_the_owners_items() -> None:
    catalog = Catalog(SPEC)
    items = [json.loads(line) for line in catalog.item_lines()]
    per_owner_sku = Counter((item["owner"], item["sku"]) for item in items)
    for gate_pass in catalog.passes:
        for line in gate_pass["lines"]:  # type: ignore[attr-defined]
            assert 0 < line["qty"] <= per_owner_sku[(gate_pass["owner"], line["sku"])]


def test_a_written_snapshot_verifies_and_holds_every_record(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    catalog = Catalog(SPEC)
    path = tmp_path / "snapshot.bundle"
    write_bundle_file(path, catalog.snapshot_lines(seq=3), key, compress=True)

    data = path.read_bytes()
    assert data[:2] == b"\x1f\x8b"
    bundle = verify_bundle(data, TrustedKeys.from_base64([public_key_base64(key)]))
    assert (bundle.header.seq, bundle.header.count) == (3, catalog.record_count)
    assert sum(1 for _ in bundle.entries()) == catalog.record_count


def test_resync_answers_are_the_bytes_first_published_or_a_snapshot() -> None:
    office = BackOffice(
        BackOfficeSettings("127.0.0.1", 1, items=200, keep_deltas=3), Ed25519PrivateKey.generate()
    )
    deltas = [office.next_delta() for _ in range(5)]  # seq 2..6; deltas 4..6 kept

    assert office.answer(6) == []
    assert office.answer(4) == deltas[3:]
    snapshot = office.answer(1)
    assert len(snapshot) == 1
    assert b'"kind":"snapshot"' in snapshot[0]
    assert b'"seq":6' in snapshot[0]
    assert office.answer(None) == snapshot  # the same bytes for the same seq
