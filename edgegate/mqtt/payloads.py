"""MQTT payloads — contract, DESIGN.md §9: the decision event and the retained status.

Owns the JSON shape of what the gate publishes. Payloads are frozen pydantic models so the
same classes validate, serialise and (later) generate docs/asyncapi.yaml.

Invariants:
- a decision event carries ``schema = "edgegate.decision/1"``; fields are only ever added;
- instants are RFC 3339 UTC with milliseconds and a ``Z``;
- ``tags`` lists every EPC read, unknown ones with ``sku`` and ``status`` null;
- serialisation is compact UTF-8 JSON (Chinese plate numbers stay readable).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from edgegate.gate.model import ClosedPassage, CodeScanned, Decision, Reason

DECISION_SCHEMA = "edgegate.decision/1"


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode("utf-8")


class ReasonOut(_Payload):
    """``{"code", "epcs"?, "detail"?}`` — absent keys are omitted, not null (§9)."""

    code: str
    epcs: tuple[str, ...] | None = None
    detail: str | None = None

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        data: dict[str, object] = handler(self)
        return {key: value for key, value in data.items() if value is not None}


class TagOut(_Payload):
    epc: str
    sku: str | None
    status: str | None
    reads: int
    rssi_max: float
    antennas: tuple[int, ...]


class CodeOut(_Payload):
    reader: str
    value: str


class InspectionOut(_Payload):
    """The random-inspection draw: probability, the seed's id, and whether it was drawn."""

    p: float
    seed_id: str
    drawn: bool


class DecisionEvent(_Payload):
    schema_id: str = Field(default=DECISION_SCHEMA, alias="schema")
    event_id: str
    seq: int
    site: str
    gate: str
    passage_id: str
    decision: Literal["pass", "hold"]
    direction: Literal["in", "out", "unknown"]
    reasons: tuple[ReasonOut, ...]
    opened_at: str
    closed_at: str
    decided_at: str
    tags: tuple[TagOut, ...]
    codes: tuple[CodeOut, ...]
    vehicle_tag: str | None = None
    pass_no: str | None = None
    inspection: InspectionOut | None = None
    whitelist_seq: int | None
    close_cause: str


class StatusPayload(_Payload):
    state: Literal["online", "offline", "stopped"]
    version: str
    since: str
    whitelist_seq: int | None = None


class AlarmEvent(_Payload):
    """``G/alarm`` (DESIGN.md §9): something an operator must look at."""

    event_id: str
    kind: str
    severity: Literal["info", "warning", "critical"]
    detail: str
    at: str


def instant(epoch_s: float) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-11-25T08:00:00.123Z``."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_decision_event(
    *,
    event_id: str,
    seq: int,
    site: str,
    gate: str,
    passage: ClosedPassage,
    decision: Decision,
    wall_of: WallClock,
    decided_at_s: float,
    whitelist_seq: int | None,
) -> DecisionEvent:
    """Assemble the §9 decision event from a decided passage."""
    tags = []
    for tag in passage.tags:
        record = decision.items.get(tag.epc)
        tags.append(
            TagOut(
                epc=tag.epc,
                sku=record.sku if record else None,
                status=record.status if record else None,
                reads=tag.reads,
                rssi_max=tag.rssi_max_dbm,
                antennas=tag.antennas,
            )
        )
    return DecisionEvent(
        event_id=event_id,
        seq=seq,
        site=site,
        gate=gate,
        passage_id=passage.passage_id,
        decision=decision.verdict.value,
        direction=passage.direction.value,
        reasons=tuple(_reason_out(reason) for reason in decision.reasons),
        opened_at=instant(wall_of(passage.opened_at_mono_s)),
        closed_at=instant(wall_of(passage.closed_at_mono_s)),
        decided_at=instant(decided_at_s),
        tags=tuple(tags),
        codes=tuple(_code_out(code) for code in passage.codes),
        whitelist_seq=whitelist_seq,
        close_cause=passage.close_cause,
        vehicle_tag=decision.vehicle_tag,
        pass_no=decision.pass_no,
        inspection=(
            InspectionOut(
                p=decision.inspection.p,
                seed_id=decision.inspection.seed_id,
                drawn=decision.inspection.drawn,
            )
            if decision.inspection is not None
            else None
        ),
    )


class WallClock:
    """Maps monotonic instants to wall-clock epoch seconds, anchored once per conversion."""

    def __init__(self, wall_now_s: float, mono_now_s: float) -> None:
        self._offset_s = wall_now_s - mono_now_s

    def __call__(self, mono_s: float) -> float:
        return mono_s + self._offset_s


def _reason_out(reason: Reason) -> ReasonOut:
    return ReasonOut(code=reason.code.value, epcs=reason.epcs or None, detail=reason.detail)


def _code_out(code: CodeScanned) -> CodeOut:
    return CodeOut(reader=code.reader, value=code.value)
