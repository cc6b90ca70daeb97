"""Whitelist records: their value types and their JSON form (DESIGN.md §7, record lines).

Owns one record line's contract in both directions: :func:`parse_record` turns a decoded
JSON object into a validated value, :func:`to_json` turns a value back into the contract's
JSON object. Items are :class:`edgegate.gate.model.ItemRecord`, the type the rules consume;
every other record type is defined here. Pure: no I/O, no clock.

Invariants:
- a parsed record is fully validated: key present, enumerations in range, tag memories
  (``epc``, ``tid``, ``vehicle_tag``) upper-case hex of whole 16-bit words, timestamps
  RFC 3339 UTC (``Z``), so no later reader ever has to re-check a field it is given;
- unknown fields are ignored, because the contract evolves only by adding optional fields;
- ``parse_record(to_json(r), delta=False) == r`` for every record ``r``; the store relies on
  it to keep non-item records as JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import NoReturn, TypeVar, cast

from edgegate.gate.model import Direction, ItemRecord
from edgegate.whitelist.errors import BundleError, RejectReason


class RecordType(StrEnum):
    ITEM = "item"
    PASS = "pass"
    ENTERPRISE = "enterprise"
    VEHICLE = "vehicle"
    DESTINATION = "destination"


class ItemStatus(StrEnum):
    ARRIVED = "arrived"
    PENDING_DECLARATION = "pending_declaration"
    BONDED = "bonded"
    DUTY_FREE = "duty_free"
    RELEASED = "released"
    SEIZED = "seized"


class Tier(StrEnum):
    ADVANCED = "advanced"
    CERTIFIED = "certified"
    REGULAR = "regular"
    DISCREDITED = "discredited"
    SEVERELY_DISCREDITED = "severely_discredited"


class PassType(IntEnum):
    ENTER_FIRST_DECLARE_LATER = 1
    FIRST_LINE = 2
    SECOND_LINE = 3
    NON_DECLARED = 4
    GATE_REGISTERED_GOODS = 5
    EMPTY_VEHICLE = 6


class DestinationKind(StrEnum):
    DUTY_FREE_SHOP = "duty_free_shop"
    PICKUP_POINT = "pickup_point"
    BONDED_WAREHOUSE = "bonded_warehouse"
    DOMESTIC = "domestic"


@dataclass(frozen=True, slots=True)
class PassLine:
    """One manifest line of a gate pass: how many of a SKU the pass declares."""

    sku: str
    qty: int


@dataclass(frozen=True, slots=True)
class PassRecord:
    """A gate pass (核放单); ``direction`` is ``Direction.IN`` or ``Direction.OUT``."""

    pass_no: str
    pass_type: PassType
    direction: Direction
    status: str
    vehicle_no: str | None = None
    vehicle_tag: str | None = None
    owner: str | None = None
    destination: str | None = None
    lines: tuple[PassLine, ...] = ()
    valid_until: str | None = None


@dataclass(frozen=True, slots=True)
class EnterpriseRecord:
    """An owning enterprise's credit tier and blacklist flag."""

    owner: str
    tier: Tier
    blacklisted: bool = False


@dataclass(frozen=True, slots=True)
class VehicleRecord:
    """A vehicle's electronic plate tag; an EPC that is a vehicle tag is not an item."""

    vehicle_tag: str
    vehicle_no: str | None = None
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class DestinationRecord:
    """A licensed destination (shop, pickup point, warehouse) a pass may name."""

    id: str
    kind: DestinationKind


Record = ItemRecord | PassRecord | EnterpriseRecord | VehicleRecord | DestinationRecord


@dataclass(frozen=True, slots=True)
class Delete:
    """A delta's ``"op":"delete"``: remove the record of ``type`` keyed by ``key``."""

    type: RecordType
    key: str


Entry = Record | Delete

# An item as a row of column values, in this order (the store's ``items`` columns).
# Bulk paths (import, batch lookup) move rows, not records: building a frozen dataclass
# costs more than validating the line it came from.
ITEM_ROW_FIELDS = (
    "epc",
    "tid",
    "trace_code",
    "sku",
    "gtin",
    "owner",
    "status",
    "directions",
    "destinations",
    "conversion_ref",
    "declare_by",
    "valid_until",
)
ItemRow = tuple[
    str,
    str | None,
    str | None,
    str | None,
    str | None,
    str | None,
    str,
    tuple[str, ...],
    tuple[str, ...],
    str | None,
    str | None,
    str | None,
]


def item_from_row(row: ItemRow) -> ItemRecord:
    epc, tid, trace, sku, gtin, owner, status, directions, destinations, conv, declare, valid = row
    # Positional, in ItemRecord's field order (cheaper than keywords on the lookup path).
    return ItemRecord(
        epc, sku, status, owner, tid, trace, gtin, directions, destinations, conv, declare, valid
    )


def item_to_row(record: ItemRecord) -> ItemRow:
    r = record
    return (
        r.epc,
        r.tid,
        r.trace_code,
        r.sku,
        r.gtin,
        r.owner,
        r.status,
        r.directions,
        r.destinations,
        r.conversion_ref,
        r.declare_by,
        r.valid_until,
    )


KEY_FIELDS: Mapping[RecordType, str] = {
    RecordType.ITEM: "epc",
    RecordType.PASS: "pass_no",
    RecordType.ENTERPRISE: "owner",
    RecordType.VEHICLE: "vehicle_tag",
    RecordType.DESTINATION: "id",
}

# A Gen2 EPC is at most 31 words (the PC length field has 5 bits). TIDs are read in whole
# words too; 64 words bounds them generously. A key that can never equal what a reader
# reports is a back-office bug, better refused loudly than stored silently.
_EPC = re.compile(r"(?:[0-9A-F]{4}){1,31}")
_TID = re.compile(r"(?:[0-9A-F]{4}){1,64}")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?Z")
_DIRECTIONS = (Direction.IN, Direction.OUT)

_E = TypeVar("_E", bound=StrEnum)


def normalize_epc(value: str) -> str | None:
    """``value`` as a whitelist EPC key (upper-case hex, whole words), or None if it is not one."""
    upper = value.upper()
    return upper if value.isascii() and _EPC.fullmatch(upper) else None


def parse_timestamp(value: str) -> datetime | None:
    """An RFC 3339 UTC instant written with ``Z`` (``2026-11-25T08:00:00Z``), else None."""
    if not _TIMESTAMP.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:  # well-shaped but out of range, e.g. month 13
        return None


def format_timestamp(at: datetime) -> str:
    """An aware instant in the contract's form: RFC 3339 UTC with ``Z``."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def record_type(record: Record) -> RecordType:
    match record:
        case ItemRecord():
            return RecordType.ITEM
        case PassRecord():
            return RecordType.PASS
        case EnterpriseRecord():
            return RecordType.ENTERPRISE
        case VehicleRecord():
            return RecordType.VEHICLE
        case DestinationRecord():
            return RecordType.DESTINATION


def record_key(record: Record) -> str:
    match record:
        case ItemRecord():
            return record.epc
        case PassRecord():
            return record.pass_no
        case EnterpriseRecord():
            return record.owner
        case VehicleRecord():
            return record.vehicle_tag
        case DestinationRecord():
            return record.id


def parse_record(obj: object, *, delta: bool) -> Entry:
    """Validate one decoded record line; raises :class:`BundleError` naming the fault.

    In a delta every record carries ``"op":"upsert"|"delete"`` and a delete needs only its
    type and key; in a snapshot ``op`` is absent (``"upsert"`` is tolerated).
    """
    if not isinstance(obj, dict):
        raise BundleError(RejectReason.MALFORMED_JSON, "a record must be a JSON object")
    raw_type = obj.get("type")
    if raw_type == "item":
        row = clean_item_row(obj, delta=delta)
        if row is not None:
            return item_from_row(row)
    rtype = _RECORD_TYPES.get(raw_type) if isinstance(raw_type, str) else None
    if rtype is None:
        raise BundleError(
            RejectReason.UNKNOWN_RECORD_TYPE, f"unknown record type {_show(raw_type)}"
        )
    fields = _Fields(obj, rtype)
    key = fields.key()
    op = obj.get("op")
    if delta and op not in ("upsert", "delete"):
        fields.fail("op", op, 'must be "upsert" or "delete" in a delta')
    if not delta and op not in (None, "upsert"):
        fields.fail("op", op, "is not allowed in a snapshot")
    if op == "delete":
        return Delete(rtype, key)
    return _PARSERS[rtype](fields, key)


def to_json(record: Record) -> dict[str, object]:
    """The record as the contract's JSON object, ``type`` first."""
    head: dict[str, object] = {"type": record_type(record).value}
    match record:
        case ItemRecord():
            body: dict[str, object] = {
                "epc": record.epc,
                "tid": record.tid,
                "trace_code": record.trace_code,
                "sku": record.sku,
                "gtin": record.gtin,
                "owner": record.owner,
                "status": str(record.status),
                "directions": [str(d) for d in record.directions],
                "destinations": list(record.destinations),
                "conversion_ref": record.conversion_ref,
                "declare_by": record.declare_by,
                "valid_until": record.valid_until,
            }
        case PassRecord():
            body = {
                "pass_no": record.pass_no,
                "pass_type": int(record.pass_type),
                "direction": record.direction.value,
                "status": record.status,
                "vehicle_no": record.vehicle_no,
                "vehicle_tag": record.vehicle_tag,
                "owner": record.owner,
                "destination": record.destination,
                "lines": [{"sku": line.sku, "qty": line.qty} for line in record.lines],
                "valid_until": record.valid_until,
            }
        case EnterpriseRecord():
            body = {
                "owner": record.owner,
                "tier": record.tier.value,
                "blacklisted": record.blacklisted,
            }
        case VehicleRecord():
            body = {
                "vehicle_tag": record.vehicle_tag,
                "vehicle_no": record.vehicle_no,
                "owner": record.owner,
            }
        case DestinationRecord():
            body = {"id": record.id, "kind": record.kind.value}
    return head | body


class _Fields:
    """Typed access to one record's fields; every failure names the record and the field."""

    __slots__ = ("_obj", "key_value", "rtype")

    def __init__(self, obj: Mapping[str, object], rtype: RecordType) -> None:
        self._obj = obj
        self.rtype = rtype
        self.key_value: str | None = None  # named in messages once known

    def fail(self, name: str, value: object, why: str) -> NoReturn:
        where = self.rtype if self.key_value is None else f"{self.rtype} {self.key_value}"
        raise BundleError(RejectReason.BAD_FIELD, f"{where}: {name} {_show(value)} {why}")

    def key(self) -> str:
        name = KEY_FIELDS[self.rtype]
        value = self._obj.get(name)
        if value is None or value == "":
            raise BundleError(
                RejectReason.MISSING_KEY_FIELD, f"{self.rtype} record without its key {name}"
            )
        text = self._non_empty(name, value)
        if self.rtype in (RecordType.ITEM, RecordType.VEHICLE):
            text = self._hex(name, text, _EPC)
        self.key_value = text
        return text

    def text(self, name: str) -> str | None:
        value = self._obj.get(name)
        return None if value is None else self._non_empty(name, value)

    def required_text(self, name: str) -> str:
        return self._non_empty(name, self._obj.get(name))

    def tag(self, name: str, pattern: re.Pattern[str]) -> str | None:
        value = self.text(name)
        return None if value is None else self._hex(name, value, pattern)

    def timestamp(self, name: str) -> str | None:
        value = self.text(name)
        if value is not None and parse_timestamp(value) is None:
            self.fail(name, value, "must be an RFC 3339 UTC time like 2026-11-25T08:00:00Z")
        return value

    def choice(self, name: str, enum: type[_E]) -> _E:
        value = self._obj.get(name)
        for member in enum:
            if member.value == value:
                return member
        allowed = ", ".join(member.value for member in enum)
        self.fail(name, value, f"must be one of {allowed}")

    def integer(self, name: str, *, low: int, high: int) -> int:
        value = self._obj.get(name)
        # bool is an int in Python but never a number in the contract.
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(name, value, f"must be an integer from {low} to {high}")
        return value

    def flag(self, name: str) -> bool:
        value = self._obj.get(name, False)
        if not isinstance(value, bool):
            self.fail(name, value, "must be true or false")
        return value

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._obj.get(name)
        if value is None:
            return default
        if not isinstance(value, list):
            self.fail(name, value, "must be a list of strings")
        return tuple(self._non_empty(name, entry) for entry in value)

    def directions(self, name: str) -> tuple[str, ...]:
        values = self.strings(name, _DIRECTIONS)
        for value in values:
            if value not in _DIRECTIONS:
                self.fail(name, value, 'must contain only "in" and "out"')
        return tuple(Direction(value) for value in values)

    def pass_lines(self, name: str) -> tuple[PassLine, ...]:
        value = self._obj.get(name)
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(name, value, "must be a list of {sku, qty} objects")
        return tuple(self._pass_line(name, entry) for entry in value)

    def _pass_line(self, name: str, entry: object) -> PassLine:
        sku = entry.get("sku") if isinstance(entry, dict) else None
        qty = entry.get("qty") if isinstance(entry, dict) else None
        if (
            not isinstance(sku, str)
            or not sku
            or isinstance(qty, bool)
            or not isinstance(qty, int)
            or qty < 0
        ):
            self.fail(name, entry, "entries must be {sku: non-empty string, qty: integer >= 0}")
        return PassLine(sku=sku, qty=qty)

    def _non_empty(self, name: str, value: object) -> str:
        if not isinstance(value, str) or not value:
            self.fail(name, value, "must be a non-empty string")
        return value

    def _hex(self, name: str, value: str, pattern: re.Pattern[str]) -> str:
        upper = value.upper()
        if not (value.isascii() and pattern.fullmatch(upper)):
            self.fail(name, value, "must be hex of whole 16-bit words")
        return upper


def _item(f: _Fields, key: str) -> ItemRecord:
    return ItemRecord(
        epc=key,
        tid=f.tag("tid", _TID),
        trace_code=f.text("trace_code"),
        sku=f.text("sku"),
        gtin=f.text("gtin"),
        owner=f.text("owner"),
        status=f.choice("status", ItemStatus),
        directions=f.directions("directions"),
        destinations=f.strings("destinations", ()),
        conversion_ref=f.text("conversion_ref"),
        declare_by=f.timestamp("declare_by"),
        valid_until=f.timestamp("valid_until"),
    )


_RECORD_TYPES: Mapping[str, RecordType] = {member.value: member for member in RecordType}
_STATUSES: Mapping[str, ItemStatus] = {member.value: member for member in ItemStatus}
# Direction lists as they appear in practice; anything else takes the general path.
_CLEAN_DIRECTIONS: Mapping[tuple[str, ...], tuple[str, ...]] = {
    (): (),
    ("in",): (Direction.IN,),
    ("out",): (Direction.OUT,),
    ("in", "out"): _DIRECTIONS,
    ("out", "in"): (Direction.OUT, Direction.IN),
}
# Valid timestamps and destination lists already seen: a snapshot repeats a few thousand
# distinct values millions of times. Bounded so that hostile input cannot grow them.
_SEEN_LIMIT = 4096
_seen_timestamps: set[str] = set()
_seen_destinations: dict[tuple[str, ...], tuple[str, ...]] = {(): ()}


def clean_item_row(obj: Mapping[str, object], *, delta: bool) -> ItemRow | None:
    """An item upsert line in its usual clean shape as a row; None sends it the general way.

    A snapshot is mostly item lines, so this is the hot path of a multi-million-record
    import: it checks cheaply and builds no record object. It accepts only lines that
    :func:`parse_record` accepts, with the same values (a property test holds it to that);
    every doubt, and every fault, is left to :func:`parse_record`, which also words the error.
    """
    get = obj.get
    op = get("op")
    if get("type") != "item" or not (op == "upsert" if delta else op is None):
        return None
    epc, tid = get("epc"), get("tid")
    if type(epc) is not str or not _EPC.fullmatch(epc):  # upper-case only; else normalise
        return None
    if tid is not None and (type(tid) is not str or not _TID.fullmatch(tid)):
        return None
    texts = (get("trace_code"), get("sku"), get("gtin"), get("owner"), get("conversion_ref"))
    for text in texts:
        if text is not None and (type(text) is not str or not text):
            return None
    status = get("status")
    if type(status) is not str or status not in _STATUSES:
        return None
    raw_directions = get("directions")
    if raw_directions is None:
        directions: tuple[str, ...] | None = _DIRECTIONS
    elif type(raw_directions) is list:
        try:
            directions = _CLEAN_DIRECTIONS.get(tuple(raw_directions))
        except TypeError:  # an unhashable element: not a list of strings
            return None
    else:
        return None
    destinations = _clean_destinations(get("destinations"))
    declare_by, valid_until = get("declare_by"), get("valid_until")
    if directions is None or destinations is None:
        return None
    if not (_clean_timestamp(declare_by) and _clean_timestamp(valid_until)):
        return None
    trace_code, sku, gtin, owner, conversion_ref = texts
    # Every value was checked above to be None or a non-empty str.
    return cast(
        ItemRow,
        (
            epc,
            tid,
            trace_code,
            sku,
            gtin,
            owner,
            _STATUSES[status],
            directions,
            destinations,
            conversion_ref,
            declare_by,
            valid_until,
        ),
    )


def _clean_destinations(value: object) -> tuple[str, ...] | None:
    if value is None:
        return ()
    if type(value) is not list:
        return None
    try:
        key = tuple(value)
        seen = _seen_destinations.get(key)
    except TypeError:  # an unhashable element
        return None
    if seen is not None:
        return seen
    if not all(type(entry) is str and entry for entry in key):
        return None
    if len(_seen_destinations) < _SEEN_LIMIT:
        _seen_destinations[key] = key
    return key


def _clean_timestamp(value: object) -> bool:
    if value is None:
        return True
    if type(value) is not str:
        return False
    if value in _seen_timestamps:
        return True
    if parse_timestamp(value) is None:
        return False
    if len(_seen_timestamps) < _SEEN_LIMIT:
        _seen_timestamps.add(value)
    return True


def _pass(f: _Fields, key: str) -> PassRecord:
    direction = f.choice("direction", Direction)
    if direction not in _DIRECTIONS:
        f.fail("direction", direction.value, 'must be "in" or "out"')
    return PassRecord(
        pass_no=key,
        pass_type=PassType(f.integer("pass_type", low=min(PassType), high=max(PassType))),
        direction=direction,
        status=f.required_text("status"),
        vehicle_no=f.text("vehicle_no"),
        vehicle_tag=f.tag("vehicle_tag", _EPC),
        owner=f.text("owner"),
        destination=f.text("destination"),
        lines=f.pass_lines("lines"),
        valid_until=f.timestamp("valid_until"),
    )


def _enterprise(f: _Fields, key: str) -> EnterpriseRecord:
    return EnterpriseRecord(
        owner=key, tier=f.choice("tier", Tier), blacklisted=f.flag("blacklisted")
    )


def _vehicle(f: _Fields, key: str) -> VehicleRecord:
    return VehicleRecord(vehicle_tag=key, vehicle_no=f.text("vehicle_no"), owner=f.text("owner"))


def _destination(f: _Fields, key: str) -> DestinationRecord:
    return DestinationRecord(id=key, kind=f.choice("kind", DestinationKind))


_PARSERS: Mapping[RecordType, Callable[[_Fields, str], Record]] = {
    RecordType.ITEM: _item,
    RecordType.PASS: _pass,
    RecordType.ENTERPRISE: _enterprise,
    RecordType.VEHICLE: _vehicle,
    RecordType.DESTINATION: _destination,
}


def _show(value: object) -> str:
    """A bounded rendering of an offending value for a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
