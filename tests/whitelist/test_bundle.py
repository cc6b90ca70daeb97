"""Bundle verification: signature first, then header and records, per DESIGN.md §7."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Mapping

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgegate.gate.model import Direction, ItemRecord
from edgegate.whitelist.bundle import (
    SIGNATURE_LINE_MAX,
    BundleKind,
    TrustedKeys,
    generate_keypair,
    key_id,
    load_private_key,
    public_key_base64,
    sign_body,
    verify_bundle,
)
from edgegate.whitelist.errors import BundleError, RejectReason
from edgegate.whitelist.records import (
    KEY_FIELDS,
    Delete,
    DestinationKind,
    DestinationRecord,
    EnterpriseRecord,
    PassLine,
    PassRecord,
    PassType,
    RecordType,
    Tier,
    VehicleRecord,
)

from .support import EPC, EXAMPLES, ITEM, SITE, VEHICLE_TAG, Forge, epc, item


def rejects(reason: RejectReason, data: bytes, keys: TrustedKeys, **kw: int) -> BundleError:
    """Assert ``data`` is refused for ``reason`` — whether at verification or while parsing."""
    with pytest.raises(BundleError) as caught:
        list(verify_bundle(data, keys, **kw).entries())
    assert caught.value.reason is reason, caught.value
    assert "\n" not in str(caught.value)
    return caught.value


def test_a_good_snapshot_yields_every_record_type(forge: Forge) -> None:
    bundle = forge.snapshot(EXAMPLES, seq=42)

    header = bundle.header
    assert (header.kind, header.site, header.seq, header.base_seq) == (
        BundleKind.SNAPSHOT,
        SITE,
        42,
        None,
    )
    assert header.issued_at.isoformat() == "2026-11-25T08:00:00+00:00"
    assert header.count == 5
    assert bundle.key_id == key_id(forge.private.public_key().public_bytes_raw())
    assert list(bundle.entries()) == [
        ItemRecord(
            epc=EPC,
            tid="E2801160200074CF085B0A9B",
            trace_code="1234567890123456",
            sku="SKU-LANCOME-50ML",
            gtin="06141411234567",
            owner="91460000MA5T000001",
            status="bonded",
            directions=("in", "out"),
            destinations=("DFS-HAIKOU-01",),
            declare_by="2026-12-09T00:00:00Z",
        ),
        PassRecord(
            pass_no="HP4601202611250001",
            pass_type=PassType.ENTER_FIRST_DECLARE_LATER,
            direction=Direction.IN,
            status="approved",
            vehicle_no="琼A12345",
            vehicle_tag=VEHICLE_TAG,
            owner="91460000MA5T000001",
            lines=(PassLine("SKU-LANCOME-50ML", 120),),
            valid_until="2026-11-26T00:00:00Z",
        ),
        EnterpriseRecord(owner="91460000MA5T000001", tier=Tier.ADVANCED),
        VehicleRecord(VEHICLE_TAG, vehicle_no="琼A12345", owner="91460000MA5T000001"),
        DestinationRecord(id="DFS-HAIKOU-01", kind=DestinationKind.DUTY_FREE_SHOP),
    ]


def test_entries_can_be_read_again_and_are_parsed_lazily(forge: Forge) -> None:
    bad_last = [item(epc(1)), item(epc(2), status="lost")]
    bundle = forge.verify(forge.sign(forge.body(bad_last)))  # verification parses no record

    entries = bundle.entries()
    assert next(entries) == next(forge.snapshot([item(epc(1))]).entries())
    with pytest.raises(BundleError, match="body line 3"):
        next(entries)
    again = next(bundle.entries())
    assert isinstance(again, ItemRecord)
    assert again.epc == epc(1)


def test_a_tampered_body_byte_fails_the_signature(forge: Forge) -> None:
    data = bytearray(forge.sign(forge.body([ITEM])))
    data[data.index(b'"bonded"') + 1] ^= 0x01  # "bonded" -> "conded"

    rejects(RejectReason.BAD_SIGNATURE, bytes(data), forge.keys)


def test_the_signature_is_checked_before_the_body_is_parsed(forge: Forge) -> None:
    signed = forge.sign(b"this is not json at all\n")
    first_line = signed.split(b"\n", 1)[0]

    rejects(RejectReason.MALFORMED_JSON, signed, forge.keys)
    rejects(RejectReason.BAD_SIGNATURE, first_line + b"\nneither is this\n", forge.keys)


def test_an_unknown_key_id_is_rejected(forge: Forge) -> None:
    stranger = Forge(Ed25519PrivateKey.generate())

    error = rejects(RejectReason.UNKNOWN_KEY, stranger.sign(forge.body([ITEM])), forge.keys)
    assert key_id(stranger.private.public_key().public_bytes_raw()) in error.message


def test_a_signature_by_another_key_under_a_trusted_key_id_is_rejected(forge: Forge) -> None:
    body = forge.body([ITEM])
    forged = Ed25519PrivateKey.generate().sign(body)
    trusted_id = key_id(forge.private.public_key().public_bytes_raw())
    line = {"alg": "ed25519", "key_id": trusted_id, "sig": base64.b64encode(forged).decode()}

    rejects(RejectReason.BAD_SIGNATURE, json.dumps(line).encode() + b"\n" + body, forge.keys)


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1, 2]",
        b'{"alg":"rsa","key_id":"0011223344556677","sig":"AAAA"}',
        b'{"alg":"ed25519","key_id":7,"sig":"AAAA"}',
        b'{"alg":"ed25519","key_id":"0011223344556677","sig":"not base64!"}',
        b'{"alg":"ed25519","key_id":"0011223344556677","sig":"AAAA"}',  # 3 bytes, not 64
        b'{"alg":"ed25519","key_id":"0011223344556677","sig":"' + b"A" * 2000 + b'"}',
        b"\xff\xfe",
        b"no newline anywhere",
    ],
)
def test_a_malformed_signature_line_is_rejected(forge: Forge, line: bytes) -> None:
    data = line if b"newline" in line else line + b"\n" + forge.body([ITEM])

    rejects(RejectReason.MALFORMED_SIGNATURE_LINE, data, forge.keys)


def test_the_signature_line_is_bounded(forge: Forge) -> None:
    padded = b" " * SIGNATURE_LINE_MAX + forge.sign(forge.body([ITEM]))

    rejects(RejectReason.MALFORMED_SIGNATURE_LINE, padded, forge.keys)


def test_a_gzip_bundle_is_accepted_including_multiple_members(forge: Forge) -> None:
    data = forge.sign(forge.body([ITEM]))
    half = len(data) // 2

    for packed in (gzip.compress(data), gzip.compress(data[:half]) + gzip.compress(data[half:])):
        assert list(forge.verify(packed).entries()) == list(forge.verify(data).entries())


def test_oversized_bundles_are_rejected_raw_and_inflated(forge: Forge) -> None:
    padding = [item(epc(n)) for n in range(200)]
    data = forge.sign(forge.body(padding))

    rejects(RejectReason.OVERSIZED, data, forge.keys, max_bytes=len(data) - 1)
    bomb = gzip.compress(data)
    assert len(bomb) < len(data) // 4
    rejects(RejectReason.OVERSIZED, bomb, forge.keys, max_bytes=len(data) - 1)
    assert verify_bundle(bomb, forge.keys, max_bytes=len(data)).header.count == 200


def test_a_corrupt_or_truncated_gzip_is_rejected(forge: Forge) -> None:
    packed = gzip.compress(forge.sign(forge.body([ITEM])))

    rejects(RejectReason.BAD_GZIP, packed[:-12], forge.keys)
    rejects(RejectReason.BAD_GZIP, packed[:10] + b"\x00" * 20 + packed[30:], forge.keys)
    rejects(RejectReason.BAD_GZIP, packed + b"trailing junk", forge.keys)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_a_count_that_disagrees_with_the_records_is_rejected(forge: Forge, count: int) -> None:
    body = forge.body([item(epc(1)), item(epc(2))], count=count)

    rejects(RejectReason.COUNT_MISMATCH, forge.sign(body), forge.keys)


def test_an_unknown_record_type_is_rejected(forge: Forge) -> None:
    for record in ({"type": "container", "id": "X"}, {"epc": EPC}, {"type": 1}):
        body = forge.body([ITEM, record])

        error = rejects(RejectReason.UNKNOWN_RECORD_TYPE, forge.sign(body), forge.keys)
        assert error.message.startswith("body line 3:")


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: str(r["type"]))
def test_a_record_without_its_key_is_rejected(forge: Forge, record: Mapping[str, object]) -> None:
    key = KEY_FIELDS[RecordType(str(record["type"]))]
    without = {k: v for k, v in record.items() if k != key}

    rejects(RejectReason.MISSING_KEY_FIELD, forge.sign(forge.body([without])), forge.keys)
    blank = dict(record) | {key: ""}
    rejects(RejectReason.MISSING_KEY_FIELD, forge.sign(forge.body([blank])), forge.keys)


def test_a_delta_delete_needs_only_type_and_key(forge: Forge) -> None:
    records: list[Mapping[str, object]] = [
        {"op": "delete", "type": "item", "epc": EPC.lower()},
        {"op": "delete", "type": "pass", "pass_no": "HP1"},
        {"op": "upsert", **ITEM},
        {"op": "delete", "type": "vehicle"},
    ]

    bundle = forge.delta(records[:3], seq=8, base_seq=7)
    assert bundle.header.base_seq == 7
    entries = list(bundle.entries())
    assert entries[:2] == [Delete(RecordType.ITEM, EPC), Delete(RecordType.PASS, "HP1")]
    assert isinstance(entries[2], ItemRecord)
    body = forge.body(records, kind="delta", seq=8)
    rejects(RejectReason.MISSING_KEY_FIELD, forge.sign(body), forge.keys)


@pytest.mark.parametrize(
    ("kind", "op"),
    [("delta", None), ("delta", "replace"), ("snapshot", "delete"), ("snapshot", 1)],
)
def test_op_is_required_in_deltas_and_delete_is_refused_in_snapshots(
    forge: Forge, kind: str, op: object
) -> None:
    record = dict(ITEM) if op is None else dict(ITEM) | {"op": op}

    rejects(RejectReason.BAD_FIELD, forge.sign(forge.body([record], kind=kind)), forge.keys)


def test_two_trusted_keys_at_once_select_by_key_id(forge: Forge) -> None:
    old, new = Forge(Ed25519PrivateKey.generate()), Forge(Ed25519PrivateKey.generate())
    both = TrustedKeys.from_base64(
        [public_key_base64(old.private), " " + public_key_base64(new.private) + "\n"]
    )

    for signer in (old, new):
        verified = verify_bundle(signer.sign(signer.body([ITEM])), both)
        assert verified.key_id == key_id(signer.private.public_key().public_bytes_raw())
    rejects(RejectReason.UNKNOWN_KEY, forge.sign(forge.body([ITEM])), both)


def test_key_id_is_the_first_16_hex_digits_of_sha256_of_the_raw_key() -> None:
    raw = bytes(range(32))

    assert key_id(raw) == "630dcd2966c43366"
    assert key_id(raw) == hashlib.sha256(raw).hexdigest()[:16]


def test_sign_body_names_the_signing_key_and_prepends_one_line() -> None:
    private = Ed25519PrivateKey.from_private_bytes(bytes(32))
    bundle = sign_body(b"body\n", private)

    line, body = bundle.split(b"\n", 1)
    signature = json.loads(line)
    assert body == b"body\n"
    assert signature["alg"] == "ed25519"
    assert signature["key_id"] == key_id(private.public_key().public_bytes_raw())
    private.public_key().verify(base64.b64decode(signature["sig"]), body)


def test_keypairs_round_trip_through_their_text_forms() -> None:
    private_b64, public_b64 = generate_keypair()
    private = load_private_key(private_b64 + "\n")

    assert len(base64.b64decode(private_b64)) == len(base64.b64decode(public_b64)) == 32
    assert public_key_base64(private) == public_b64
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    assert public_key_base64(load_private_key(pem)) == public_b64


@pytest.mark.parametrize("text", ["", "AAAA", "not base64!", "-----BEGIN PRIVATE KEY-----\nx"])
def test_a_malformed_private_key_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="key"):
        load_private_key(text)


@pytest.mark.parametrize("text", ["", "AAAA", "not base64!", base64.b64encode(bytes(33)).decode()])
def test_a_malformed_trusted_key_is_refused(text: str) -> None:
    with pytest.raises(BundleError) as caught:
        TrustedKeys.from_base64([text])
    assert caught.value.reason is RejectReason.BAD_TRUSTED_KEY


@pytest.mark.parametrize(
    "change",
    [
        {"format": "edgegate.blacklist"},
        {"version": 2},
        {"version": True},
        {"kind": "patch"},
        {"site": ""},
        {"seq": -1},
        {"seq": "1"},
        {"seq": 1.0},
        {"base_seq": 0},  # in a snapshot
        {"issued_at": "2026-11-25T08:00:00+08:00"},
        {"issued_at": "2026-11-25 08:00:00Z"},
        {"issued_at": "2026-02-30T08:00:00Z"},
        {"issuer": None},
        {"count": None},
    ],
    ids=repr,
)
def test_a_bad_header_is_rejected(forge: Forge, change: dict[str, object]) -> None:
    head, records = forge.body([ITEM]).split(b"\n", 1)
    body = json.dumps(json.loads(head) | change).encode() + b"\n" + records

    rejects(RejectReason.BAD_HEADER, forge.sign(body), forge.keys)


@pytest.mark.parametrize(("seq", "base_seq"), [(5, 5), (5, 6)])
def test_a_delta_must_move_forward(forge: Forge, seq: int, base_seq: int) -> None:
    body = forge.body([], kind="delta", seq=seq, base_seq=base_seq)

    rejects(RejectReason.BAD_HEADER, forge.sign(body), forge.keys)


def test_a_delta_without_base_seq_is_rejected(forge: Forge) -> None:
    body = forge.body([], kind="snapshot", seq=5).replace(b'"snapshot"', b'"delta"')

    rejects(RejectReason.BAD_HEADER, forge.sign(body), forge.keys)


def test_an_empty_body_has_no_header(forge: Forge) -> None:
    rejects(RejectReason.BAD_HEADER, forge.sign(b"\n\n"), forge.keys)


@pytest.mark.parametrize(
    "record",
    [
        item(EPC, status="lost"),
        item(EPC, status=None),
        item("3074257BF7194E4000001A8"),  # not whole 16-bit words
        item("3074257BF7194E4000001AXY"),
        item("３０７４"),  # full-width digits are not hex
        item(EPC, tid="E28011"),
        item(EPC, directions=["in", "up"]),
        item(EPC, directions="in"),
        item(EPC, destinations=["DFS", ""]),
        item(EPC, sku=12),
        item(EPC, declare_by="2026-12-09"),
        item(EPC, valid_until="tomorrow"),
        {**ITEM, "epc": 3074},
        {"type": "pass", "pass_no": "P", "pass_type": 7, "direction": "in", "status": "approved"},
        {"type": "pass", "pass_no": "P", "pass_type": True, "direction": "in", "status": "ok"},
        {"type": "pass", "pass_no": "P", "pass_type": 1, "direction": "unknown", "status": "ok"},
        {"type": "pass", "pass_no": "P", "pass_type": 1, "direction": "in"},
        {
            "type": "pass",
            "pass_no": "P",
            "pass_type": 1,
            "direction": "out",
            "status": "approved",
            "lines": [{"sku": "A", "qty": -1}],
        },
        {"type": "enterprise", "owner": "O", "tier": "gold"},
        {"type": "enterprise", "owner": "O", "tier": "regular", "blacklisted": "no"},
        {"type": "vehicle", "vehicle_tag": "PLATE-1"},
        {"type": "destination", "id": "D", "kind": "moon"},
        {"type": "destination", "id": ["D"], "kind": "domestic"},
    ],
    ids=repr,
)
def test_a_bad_field_is_rejected(forge: Forge, record: Mapping[str, object]) -> None:
    error = rejects(RejectReason.BAD_FIELD, forge.sign(forge.body([record])), forge.keys)
    assert error.message.startswith("body line 2:")


def test_a_record_line_that_is_not_a_json_object_is_malformed(forge: Forge) -> None:
    for line in (b"[1]", b'{"type": "item",', b'{"a": NaN}', b"[" * 100_000):
        head = forge.body([], count=1)
        rejects(RejectReason.MALFORMED_JSON, forge.sign(head + line), forge.keys)


def test_keys_are_normalised_and_unknown_fields_ignored(forge: Forge) -> None:
    records = [
        item(EPC.lower(), tid="e2801160200074cf085b0a9b", colour="red"),
        {"type": "vehicle", "vehicle_tag": VEHICLE_TAG.lower(), "axles": 3},
    ]

    first, second = forge.snapshot(records).entries()
    assert isinstance(first, ItemRecord)
    assert (first.epc, first.tid) == (EPC, "E2801160200074CF085B0A9B")
    assert second == VehicleRecord(VEHICLE_TAG)


def test_optional_fields_take_their_defaults(forge: Forge) -> None:
    (only,) = forge.snapshot([{"type": "item", "epc": EPC, "status": "arrived"}]).entries()

    assert only == ItemRecord(epc=EPC, status="arrived", directions=("in", "out"))


def test_blank_lines_are_ignored_and_the_final_newline_is_optional(forge: Forge) -> None:
    body = forge.body([item(epc(1)), item(epc(2))])
    spaced = b"\n" + body.replace(b"\n", b"\n\n \r\n").rstrip(b"\n \r")

    spaced_entries = list(forge.verify(forge.sign(spaced)).entries())
    assert spaced_entries == list(forge.verify(forge.sign(body)).entries())
    assert len(spaced_entries) == 2
