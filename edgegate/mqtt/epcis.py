"""EPCIS 2.0 for ``G/epcis`` (opt-in): one ObjectEvent per decided passage, as a pure builder.

Owns the JSON-LD shape of the event and its identity. Each decided passage becomes an
``EPCISDocument`` holding one ``ObjectEvent`` — ready to POST to an EPCIS 2.0 capture
interface: ``action`` OBSERVE, ``bizStep`` arriving (in) / departing (out) / absent
(direction unknown), ``disposition`` in_transit (pass) / non_conformant (hold),
``readPoint`` and ``bizLocation`` from ``[outputs]``, and ``edgegate:*`` extension fields
tying it to the decision (verdict, reason codes, passage id, decision event id, gate pass).

Invariants:
- pure: no clock, no I/O — every instant and the time-zone offset are passed in;
- ``eventID`` is the CBV 2.0 EPCIS Event Hash ID (``ni:///sha-256;…?ver=CBV2.0``) over the
  canonical pre-hash string of the fields this builder emits, so the same passage always
  yields the same id and any change of a field changes it; list order does not matter;
- EPCs are EPC URIs: SGTIN-96 as its pure identity (``urn:epc:id:sgtin:…``), any other
  binary EPC as ``urn:epc:raw:<bits>.x<hex>`` (GS1 TDS); the vehicle's tag is not an item
  and is left out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgegate.gate.model import ClosedPassage, Decision, Direction, Verdict
from edgegate.mqtt.payloads import instant

EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
# The namespace of the edgegate:* extension fields (a URN: it names, it does not resolve).
# It ends in its separator, like a JSON-LD prefix IRI; the pre-hash writes {namespace}name.
EXTENSION_NS = "urn:edgegate:epcis:"
CBV_VERSION = "CBV2.0"
_CBV = "https://ref.gs1.org/cbv/"
_DIGITAL_LINK = "https://id.gs1.org"
_BIZ_STEP: dict[Direction, Literal["arriving", "departing"]] = {
    Direction.IN: "arriving",
    Direction.OUT: "departing",
}
# SGTIN-96 partition table (GS1 TDS 2.1 §14.5.1): company prefix bits and digits, item
# reference (with indicator digit) bits and digits.
_SGTIN_PARTITIONS = {
    0: (40, 12, 4, 1),
    1: (37, 11, 7, 2),
    2: (34, 10, 10, 3),
    3: (30, 9, 14, 4),
    4: (27, 8, 17, 5),
    5: (24, 7, 20, 6),
    6: (20, 6, 24, 7),
}
_SGTIN_96_HEADER = 0x30


class _Jsonld(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Location(_Jsonld):
    id: str


class ObjectEvent(_Jsonld):
    type: Literal["ObjectEvent"] = "ObjectEvent"
    event_id: str = Field(alias="eventID")
    event_time: str = Field(alias="eventTime")
    event_time_zone_offset: str = Field(alias="eventTimeZoneOffset")
    epc_list: tuple[str, ...] = Field(alias="epcList")
    action: Literal["OBSERVE"] = "OBSERVE"
    biz_step: Literal["arriving", "departing"] | None = Field(default=None, alias="bizStep")
    disposition: Literal["in_transit", "non_conformant"]
    read_point: Location = Field(alias="readPoint")
    biz_location: Location | None = Field(default=None, alias="bizLocation")
    decision: Literal["pass", "hold"] = Field(alias="edgegate:decision")
    reasons: tuple[str, ...] = Field(alias="edgegate:reasons")
    passage_id: str = Field(alias="edgegate:passageID")
    decision_event_id: str = Field(alias="edgegate:decisionEventID")
    pass_no: str | None = Field(default=None, alias="edgegate:passNo")


class EpcisBody(_Jsonld):
    event_list: tuple[ObjectEvent, ...] = Field(alias="eventList")


class EpcisDocument(_Jsonld):
    """``G/epcis``: an EPCIS 2.0 document with the ObjectEvent of one passage."""

    context: tuple[str | dict[str, str], ...] = Field(alias="@context")
    type: Literal["EPCISDocument"] = "EPCISDocument"
    schema_version: Literal["2.0"] = Field(default="2.0", alias="schemaVersion")
    creation_date: str = Field(alias="creationDate")
    epcis_body: EpcisBody = Field(alias="epcisBody")

    @property
    def event_id(self) -> str:
        return self.epcis_body.event_list[0].event_id

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode("utf-8")


@dataclass(frozen=True, slots=True)
class EpcisSettings:
    read_point: str
    biz_location: str | None


def build_epcis_document(
    *,
    passage: ClosedPassage,
    decision: Decision,
    decision_event_id: str,
    wall_of: Callable[[float], float],
    created_at_s: float,
    tz_offset: str,
    settings: EpcisSettings,
) -> EpcisDocument:
    """The EPCIS document for one decided passage; its event's time is the passage close.

    ``tz_offset`` is the gate's local UTC offset then, e.g. ``+08:00`` (see :func:`utc_offset`).
    """
    fields = ObjectEvent(
        event_id="",
        event_time=instant(wall_of(passage.closed_at_mono_s)),
        event_time_zone_offset=tz_offset,
        epc_list=tuple(epc_uri(tag.epc) for tag in passage.tags if tag.epc != decision.vehicle_tag),
        biz_step=_BIZ_STEP.get(passage.direction),
        disposition="in_transit" if decision.verdict is Verdict.PASS else "non_conformant",
        read_point=Location(id=settings.read_point),
        biz_location=Location(id=settings.biz_location) if settings.biz_location else None,
        decision=decision.verdict.value,
        reasons=tuple(reason.code.value for reason in decision.reasons),
        passage_id=passage.passage_id,
        decision_event_id=decision_event_id,
        pass_no=decision.pass_no,
    )
    event = fields.model_copy(update={"event_id": event_hash_id(fields)})
    return EpcisDocument.model_validate(
        {
            "@context": (EPCIS_CONTEXT, {"edgegate": EXTENSION_NS}),
            "creationDate": instant(created_at_s),
            "epcisBody": EpcisBody(event_list=(event,)),
        }
    )


def event_hash_id(event: ObjectEvent) -> str:
    """The EPCIS Event Hash ID (CBV 2.0 §8.9) of ``event`` (its ``eventID`` is ignored)."""
    digest = hashlib.sha256(prehash(event).encode("utf-8")).hexdigest()
    return f"ni:///sha-256;{digest}?ver={CBV_VERSION}"


def prehash(event: ObjectEvent) -> str:
    """The canonical pre-hash string: canonical property order, lists sorted, values
    normalised (CBV terms and EPC URIs as web URIs), extensions sorted, no separators."""
    parts = [
        f"eventType={event.type}",
        f"eventTime={event.event_time}",
        f"eventTimeZoneOffset={event.event_time_zone_offset}",
    ]
    if event.epc_list:
        parts.append("epcList" + "".join(sorted(f"epc={canonical_uri(e)}" for e in event.epc_list)))
    parts.append(f"action={event.action}")
    if event.biz_step is not None:
        parts.append(f"bizStep={_CBV}BizStep-{event.biz_step}")
    parts.append(f"disposition={_CBV}Disp-{event.disposition}")
    parts.append(f"readPointid={canonical_uri(event.read_point.id)}")
    if event.biz_location is not None:
        parts.append(f"bizLocationid={canonical_uri(event.biz_location.id)}")
    extensions = [
        ("decision", event.decision),
        ("passageID", event.passage_id),
        ("decisionEventID", event.decision_event_id),
        *(("reasons", code) for code in event.reasons),
    ]
    if event.pass_no is not None:
        extensions.append(("passNo", event.pass_no))
    parts.extend(sorted(f"{{{EXTENSION_NS}}}{name}={value.strip()}" for name, value in extensions))
    return "".join(parts)


def utc_offset(moment: datetime) -> str:
    """``±HH:MM`` of an aware datetime, as EPCIS ``eventTimeZoneOffset`` spells it."""
    offset = moment.utcoffset()
    if offset is None:
        raise ValueError("utc_offset needs an aware datetime")
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def epc_uri(epc_hex: str) -> str:
    """The EPC URI of a binary EPC: SGTIN-96 pure identity, else the raw hex form."""
    raw = bytes.fromhex(epc_hex)
    if len(raw) == 12 and raw[0] == _SGTIN_96_HEADER:
        value = int.from_bytes(raw, "big")
        partition = value >> 82 & 0b111
        if partition in _SGTIN_PARTITIONS:
            cp_bits, cp_digits, ir_bits, ir_digits = _SGTIN_PARTITIONS[partition]
            company = value >> (38 + ir_bits) & ((1 << cp_bits) - 1)
            item = value >> 38 & ((1 << ir_bits) - 1)
            serial = value & ((1 << 38) - 1)
            if company < 10**cp_digits and item < 10**ir_digits:
                return f"urn:epc:id:sgtin:{company:0{cp_digits}d}.{item:0{ir_digits}d}.{serial}"
    return f"urn:epc:raw:{len(raw) * 8}.x{epc_hex.upper()}"


def canonical_uri(uri: str) -> str:
    """EPC URIs as constrained canonical GS1 Digital Link URIs (the ones this gate emits)."""
    uri = uri.strip()
    for scheme, convert in (("urn:epc:id:sgtin:", _sgtin_link), ("urn:epc:id:sgln:", _sgln_link)):
        if uri.startswith(scheme):
            parts = uri[len(scheme) :].split(".")
            if len(parts) == 3 and all(parts):
                return convert(*parts)
    return uri


def _sgtin_link(company: str, item: str, serial: str) -> str:
    body = item[:1] + company + item[1:]
    return f"{_DIGITAL_LINK}/01/{body}{_check_digit(body)}/21/{serial}"


def _sgln_link(company: str, location: str, extension: str) -> str:
    body = company + location
    gln = f"{_DIGITAL_LINK}/414/{body}{_check_digit(body)}"
    return gln if extension == "0" else f"{gln}/254/{extension}"


def _check_digit(digits: str) -> int:
    """GS1 mod-10: weights 3, 1, 3, … from the rightmost digit."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return -total % 10
