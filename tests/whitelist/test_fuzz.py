"""Nothing from outside can crash the daemon: any input is a bundle or a BundleError."""

from __future__ import annotations

import gzip
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegate.whitelist.bundle import verify_bundle
from edgegate.whitelist.errors import BundleError
from edgegate.whitelist.records import (
    ITEM_ROW_FIELDS,
    Delete,
    clean_item_row,
    item_from_row,
    item_to_row,
    parse_record,
    to_json,
)

from .support import EXAMPLES, Forge, item

FORGE = Forge(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
BODY = FORGE.body([*EXAMPLES, item("E2003412ABCD0001")])
BUNDLE = FORGE.sign(BODY)
DELTA_BODY = FORGE.body(
    [{"op": "delete", "type": "item", "epc": "E2003412ABCD0001"}, {"op": "upsert", **EXAMPLES[1]}],
    kind="delta",
    seq=2,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def accept_or_reject(data: bytes) -> None:
    """Verify and parse every record; only BundleError may escape."""
    try:
        for _ in verify_bundle(data, FORGE.keys, max_bytes=1 << 20).entries():
            pass
    except BundleError as exc:
        message = exc.message
    else:
        return
    assert "\n" not in message


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    accept_or_reject(data)
    accept_or_reject(b"\x1f\x8b" + data)


@FUZZ
@given(mutated(BUNDLE))
def test_mutated_bundles(data: bytes) -> None:
    accept_or_reject(data)


@FUZZ
@given(mutated(gzip.compress(BUNDLE)))
def test_mutated_gzip_bundles(data: bytes) -> None:
    accept_or_reject(data)


@FUZZ
@given(st.one_of(mutated(BODY), mutated(DELTA_BODY)))
def test_mutated_bodies_signed_by_a_trusted_key(body: bytes) -> None:
    # The signature verifies, so these reach the header and record parsers.
    accept_or_reject(FORGE.sign(body))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    sorted({name for record in EXAMPLES for name in record} | {"op", "qty", "sku"})
)


@FUZZ
@given(
    st.sampled_from(EXAMPLES),
    st.dictionaries(field_names, json_values, max_size=4),
    st.booleans(),
)
def test_records_with_arbitrary_field_values(
    example: dict[str, object], changes: dict[str, object], delta: bool
) -> None:
    record = dict(example) | changes
    try:
        parsed = parse_record(json.loads(json.dumps(record)), delta=delta)
    except BundleError:
        return
    if not isinstance(parsed, Delete):
        # Anything accepted survives the store's round trip through its JSON form unchanged.
        assert parse_record(to_json(parsed), delta=False) == parsed


item_values = st.one_of(
    json_values,
    st.sampled_from(
        [
            "3074257BF7194E4000001A85",
            "3074257bf7194e4000001a85",
            "E2801160200074CF085B0A9B",
            "bonded",
            "seized",
            "lost",
            "2026-12-09T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "",
            ["in", "out"],
            ["out"],
            ["in", "in"],
            ["up"],
            ["DFS-HAIKOU-01"],
            [""],
            [["nested"]],
            ["DFS", {"a": 1}],
        ]
    ),
)
item_fields = st.sampled_from(sorted({*ITEM_ROW_FIELDS, "op", "type"}))


@FUZZ
@given(st.dictionaries(item_fields, item_values, max_size=6), st.booleans(), st.booleans())
def test_the_fast_item_path_agrees_with_the_general_parser(
    changes: dict[str, object], delta: bool, with_op: bool
) -> None:
    record = dict(EXAMPLES[0]) | ({"op": "upsert"} if with_op else {}) | changes
    obj = json.loads(json.dumps(record))
    row = clean_item_row(obj, delta=delta)
    if row is None:
        return  # the general path decides (accepts or rejects with its message)
    assert item_from_row(row) == parse_record(obj, delta=delta)


def test_the_contract_example_takes_the_fast_path() -> None:
    row = clean_item_row(dict(EXAMPLES[0]), delta=False)
    assert row is not None
    assert item_from_row(row) == parse_record(dict(EXAMPLES[0]), delta=False)
    assert item_to_row(item_from_row(row)) == row  # field order of ItemRecord unchanged
