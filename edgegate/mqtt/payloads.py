"""MQTT payloads — contract, DESIGN.md §9: decision, status, alarm, health, reads, acks.

Owns the JSON shape of what the gate publishes (and of the back office's acks). Payloads are
frozen pydantic models so the same classes validate, serialise and generate
docs/asyncapi.yaml (``python -m edgegate.mqtt.asyncapi``).

Invariants:
- a decision event carries ``schema = "edgegate.decision/1"``; fields are only ever added;
- instants are RFC 3339 UTC with milliseconds and a ``Z``;
- ``tags`` lists every EPC read, unknown ones with ``sku`` and ``status`` null;
- serialisation is compact UTF-8 JSON (Chinese plate numbers stay readable).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from edgegate.gate.model import ClosedPassage, Decision, Reason

DECISION_SCHEMA = "edgegate.decision/1"


class _Payload(BaseModel):
    # Keys with a default are still always sent, so the JSON schema lists them as required.
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        populate_by_name=True,
        json_schema_serialization_defaults_required=True,
    )

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode("utf-8")


class _Sparse(_Payload):
    """A payload whose absent (None) fields are omitted from the JSON, not sent as null."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        data: dict[str, object] = handler(self)
        return {key: value for key, value in data.items() if value is not None}


class ReasonOut(_Sparse):
    """``{"code", "epcs"?, "detail"?}`` — absent keys are omitted, not null (§9)."""

    code: str
    epcs: tuple[str, ...] | None = None
    detail: str | None = None


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


class SeqRangeOut(_Payload):
    counter: str
    first: int
    last: int
    count: int


class DroppedOut(_Payload):
    """What an ``outbox_overflow`` alarm reports as dropped (never silently)."""

    reason: Literal["max_rows", "max_age"]
    count: int
    ranges: tuple[SeqRangeOut, ...]
    first_event_id: str
    last_event_id: str
    oldest_created_at: str
    newest_created_at: str


class AlarmEvent(_Sparse):
    """``G/alarm`` (DESIGN.md §9): something an operator must look at.

    ``dropped`` is present only on ``outbox_overflow`` alarms.
    """

    event_id: str
    kind: str
    severity: Literal["info", "warning", "critical"]
    detail: str
    at: str
    dropped: DroppedOut | None = None


class WhitelistResync(_Payload):
    """``G/whitelist/resync`` (DESIGN.md §9): the seq this gate has; null when it has none.

    The back office answers on ``P/<site>/whitelist`` with the deltas after ``have_seq``
    (the bytes it first published) or a snapshot (docs/whitelist.md).
    """

    # Extension of §9: the outbox row's id, as on every durable event (see CommandReply).
    event_id: str
    have_seq: int | None
    # Extension of §9 (optional): why the gate asks — "gap" or "empty".
    reason: str


class AckIn(BaseModel):
    """``G/ack`` (``mqtt.ack = "app"``): the back office has these events; retire them."""

    # Inbound: keys a newer back office adds are ignored, not refused.
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_ids: tuple[Annotated[str, Field(min_length=1, max_length=128)], ...] = Field(
        min_length=1, max_length=10_000
    )


class CommandReply(_Sparse):
    """``G/cmd/reply`` (DESIGN.md §9): exactly one per well-formed command.

    ``event_id`` (extension of §9) is the outbox row's id, as on every durable event: what a
    consumer de-duplicates by, and what a back office names on ``G/ack`` (``mqtt.ack = "app"``).
    """

    event_id: str
    command_id: str
    ok: bool
    error: str | None = None
    result: dict[str, object] | None = None


class AuditEvent(_Payload):
    """``G/audit`` (extension of §9): an accepted command, recorded before it acts."""

    schema_id: str = Field(default="edgegate.audit/1", alias="schema")
    event_id: str
    command_id: str
    name: str
    operator: str | None
    args: dict[str, str | int | float | bool | None]
    at: str


class ReaderHealth(_Payload):
    name: str
    connected: bool
    frames: int
    errors: int
    resyncs: int
    last_seen: str | None


class OutboxHealth(_Payload):
    depth: int
    oldest_age_s: float | None
    awaiting_ack: int
    dropped: int


class WhitelistHealth(_Payload):
    seq: int | None
    age_s: float | None
    stale: bool
    # Where bundles are applied now: "process" (the daemon's apply process) or "thread" (so
    # configured, or the daemon gave up on the process after it failed three times in a row).
    applied_in: Literal["process", "thread"] = "thread"
    apply_fallbacks: int = 0  # bundles and index builds the daemon did itself: the process failed


class PassageHealth(_Payload):
    decided: int
    passed: int = Field(alias="pass")
    held: int = Field(alias="hold")


class MqttHealth(_Payload):
    connected: bool
    connects: int
    published: int


class ProcessHealth(_Payload):
    rss_bytes: int | None
    loop_lag_ms: float


class HealthPayload(_Payload):
    """``G/health`` (retained, QoS 0), every ``health.interval_s``.

    ``loop_lag_ms`` is the worst event-loop lag seen since the previous heartbeat.
    """

    schema_id: str = Field(default="edgegate.health/1", alias="schema")
    at: str
    version: str
    uptime_s: float
    readers: tuple[ReaderHealth, ...]
    outbox: OutboxHealth
    whitelist: WhitelistHealth
    passages: PassageHealth
    mqtt: MqttHealth
    process: ProcessHealth


class ReadEvent(_Sparse):
    """``G/reads`` (off by default): one raw observation, for debugging a lane."""

    type: Literal["tag", "code", "beam", "reader_down", "reader_up"]
    reader: str
    at: str
    epc: str | None = None
    tid: str | None = None
    antenna: int | None = None
    rssi_dbm: float | None = None
    value: str | None = None
    beam: str | None = None
    broken: bool | None = None
    reason: str | None = None


def instant(epoch_s: float) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-11-25T08:00:00.123Z``."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class DecisionMessage:
    """Everything the §9 decision event says, from the decided passage and the outbox seq.

    :meth:`to_json` is the hot path, run between the start of the durable commit and the
    barrier: for a 1,000-tag passage, validating and serialising :class:`DecisionEvent` costs
    about 1.7 ms, encoding the same fields directly about 0.3 ms. :class:`DecisionEvent`
    remains the contract (docs/asyncapi.yaml is generated from it; :meth:`to_event` returns
    it) and a property test holds the two to the same JSON for any decided passage.
    """

    event_id: str
    seq: int
    site: str
    gate: str
    passage: ClosedPassage
    decision: Decision
    wall_of: WallClock
    decided_at_s: float
    whitelist_seq: int | None

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON, the bytes published."""
        return _ENCODER.encode(self._fields())

    def to_event(self) -> DecisionEvent:
        """The same event, validated against the contract model."""
        return DecisionEvent.model_validate(self._fields())

    def _fields(self) -> dict[str, object]:
        # Keys in DecisionEvent's field order, absent values as DecisionEvent serialises them.
        passage, decision, wall_of = self.passage, self.decision, self.wall_of
        items = decision.items
        tags = []
        for tag in passage.tags:
            record = items.get(tag.epc)
            tags.append(
                {
                    "epc": tag.epc,
                    "sku": record.sku if record else None,
                    "status": record.status if record else None,
                    "reads": tag.reads,
                    "rssi_max": tag.rssi_max_dbm,
                    "antennas": tag.antennas,
                }
            )
        inspection = decision.inspection
        return {
            "schema": DECISION_SCHEMA,
            "event_id": self.event_id,
            "seq": self.seq,
            "site": self.site,
            "gate": self.gate,
            "passage_id": passage.passage_id,
            "decision": decision.verdict.value,
            "direction": passage.direction.value,
            "reasons": [_reason_fields(reason) for reason in decision.reasons],
            "opened_at": instant(wall_of(passage.opened_at_mono_s)),
            "closed_at": instant(wall_of(passage.closed_at_mono_s)),
            "decided_at": instant(self.decided_at_s),
            "tags": tags,
            "codes": [{"reader": code.reader, "value": code.value} for code in passage.codes],
            "vehicle_tag": decision.vehicle_tag,
            "pass_no": decision.pass_no,
            "inspection": (
                {"p": inspection.p, "seed_id": inspection.seed_id, "drawn": inspection.drawn}
                if inspection is not None
                else None
            ),
            "whitelist_seq": self.whitelist_seq,
            "close_cause": passage.close_cause,
        }


_ENCODER = msgspec.json.Encoder()


class WallClock:
    """Maps monotonic instants to wall-clock epoch seconds, anchored once per conversion."""

    def __init__(self, wall_now_s: float, mono_now_s: float) -> None:
        self._offset_s = wall_now_s - mono_now_s

    def __call__(self, mono_s: float) -> float:
        return mono_s + self._offset_s


def _reason_fields(reason: Reason) -> dict[str, object]:
    # ReasonOut is sparse: absent keys are omitted, not null (§9).
    fields: dict[str, object] = {"code": reason.code.value}
    if reason.epcs:
        fields["epcs"] = reason.epcs
    if reason.detail is not None:
        fields["detail"] = reason.detail
    return fields
