"""docs/asyncapi.yaml (AsyncAPI 3.0), generated from the payload models and the topic names.

Run ``python -m edgegate.mqtt.asyncapi > docs/asyncapi.yaml``; a test fails while the
committed file differs from what this prints, so the document cannot drift from the code.

Owns the list of the gate's channels (:data:`CHANNELS`): for each topic its direction, QoS,
retain flag, payload model and one example built from that model (so every example is valid
by construction). Message schemas are the models' JSON Schemas — what the gate sends in
serialization mode, what it receives in validation mode.

Invariants: the output is deterministic (same code, same bytes); every topic of
:class:`~edgegate.mqtt.topics.Topics` has a channel; YAML is emitted by a small block-style
writer whose scalars are JSON-quoted, so any YAML 1.1 or 1.2 parser reads back exactly
:func:`document`.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from pydantic_core import core_schema

from edgegate import __version__
from edgegate.gate.model import (
    ClosedPassage,
    Decision,
    Direction,
    TagSummary,
    Verdict,
)
from edgegate.mqtt.commands import CommandIn
from edgegate.mqtt.epcis import EpcisDocument, EpcisSettings, build_epcis_document
from edgegate.mqtt.payloads import (
    AckIn,
    AlarmEvent,
    AuditEvent,
    CodeOut,
    CommandReply,
    DecisionEvent,
    HealthPayload,
    InspectionOut,
    MqttHealth,
    OutboxHealth,
    PassageHealth,
    ProcessHealth,
    ReaderHealth,
    ReadEvent,
    ReasonOut,
    StatusPayload,
    TagOut,
    WhitelistHealth,
    WhitelistResync,
)
from edgegate.mqtt.topics import Topics

ASYNCAPI_VERSION = "3.0.0"
MQTT_BINDING_VERSION = "0.2.0"
# Topic names with the parameters left in, as AsyncAPI addresses spell them.
_ADDRESS = Topics("{prefix}", "{site}", "{gate_id}")
_PARAMETERS = {
    "prefix": {"description": "mqtt.topic_prefix (P)", "default": "edgegate/v1"},
    "site": {"description": "gate.site: the supervised area", "examples": ["HAK-CBZ"]},
    "gate_id": {"description": "gate.gate_id: the lane or dock door", "examples": ["G01"]},
}
_AT = "2026-11-25T08:00:03.412Z"
_EVENT_ID = "019abd2e-4c1a-7e3b-9f2a-4d5e6f708192"
_PASSAGE_ID = "019abd2e-3f80-7b2c-8e1f-0a1b2c3d4e5f"
_ITEM, _STRANGER = "3074257BF7194E4000001A85", "E2003412DEADBEEF00000001"


@dataclass(frozen=True, slots=True)
class Channel:
    """One topic. ``action`` is the gate's: it ``send``s what it publishes."""

    name: str
    address: str
    action: Literal["send", "receive"]
    qos: Literal[0, 1]
    retain: bool
    summary: str
    model: type[BaseModel] | None
    example: BaseModel | str
    content_type: str = "application/json"


def _epcis_example() -> EpcisDocument:
    passage = ClosedPassage(
        passage_id=_PASSAGE_ID,
        opened_at_mono_s=0.0,
        closed_at_mono_s=2.9,
        close_cause="stable_set",
        direction=Direction.IN,
        tags=(TagSummary(_ITEM, 14, -52.0, (1, 2), 0.1, 2.6),),
    )
    return build_epcis_document(
        passage=passage,
        decision=Decision(verdict=Verdict.PASS, reasons=()),
        decision_event_id=_EVENT_ID,
        wall_of=lambda mono_s: 1_795_593_600.0 + mono_s,
        created_at_s=1_795_593_603.412,
        tz_offset="+08:00",
        settings=EpcisSettings(
            read_point="urn:epc:id:sgln:6901234.00001.1",
            biz_location="urn:epc:id:sgln:6901234.00001.0",
        ),
    )


_DECISION = DecisionEvent(
    event_id=_EVENT_ID,
    seq=1207,
    site="HAK-CBZ",
    gate="G01",
    passage_id=_PASSAGE_ID,
    decision="hold",
    direction="out",
    reasons=(
        ReasonOut(code="UNKNOWN_TAG", epcs=(_STRANGER,)),
        ReasonOut(code="MANIFEST_MISMATCH", detail="SKU-LANCOME-50ML read 119, declared 120"),
    ),
    opened_at="2026-11-25T08:00:00.118Z",
    closed_at="2026-11-25T08:00:02.905Z",
    decided_at="2026-11-25T08:00:02.911Z",
    tags=(
        TagOut(
            epc=_ITEM,
            sku="SKU-LANCOME-50ML",
            status="bonded",
            reads=14,
            rssi_max=-52.0,
            antennas=(1, 2),
        ),
        TagOut(epc=_STRANGER, sku=None, status=None, reads=3, rssi_max=-71.5, antennas=(2,)),
    ),
    codes=(CodeOut(reader="scan-1", value="HP4601202611250001"),),
    vehicle_tag="E20000000000000000001234",
    pass_no="HP4601202611250001",
    inspection=InspectionOut(p=0.005, seed_id="s1", drawn=False),
    whitelist_seq=42,
    close_cause="stable_set",
)

_HEALTH = HealthPayload(
    at=_AT,
    version="0.1.0",
    uptime_s=86412.5,
    readers=(
        ReaderHealth(
            name="rfid-1",
            connected=True,
            frames=1843211,
            errors=3,
            resyncs=1,
            last_seen="2026-11-25T08:00:03.377Z",
        ),
    ),
    outbox=OutboxHealth(depth=0, oldest_age_s=None, awaiting_ack=0, dropped=0),
    whitelist=WhitelistHealth(
        seq=42, age_s=3603.4, stale=False, applied_in="process", apply_fallbacks=0
    ),
    passages=PassageHealth(decided=1207, passed=1150, held=57),
    mqtt=MqttHealth(connected=True, connects=2, published=1311),
    process=ProcessHealth(rss_bytes=61_341_696, loop_lag_ms=1.8),
)

CHANNELS: tuple[Channel, ...] = (
    Channel(
        "status",
        _ADDRESS.status,
        "send",
        1,
        True,
        "The gate's state; published on every connect, Last Will = offline.",
        StatusPayload,
        StatusPayload(state="online", version="0.1.0", since=_AT, whitelist_seq=42),
    ),
    Channel(
        "decision",
        _ADDRESS.decision,
        "send",
        1,
        False,
        "One event per decided passage, from the durable outbox (at least once; de-duplicate "
        "by event_id).",
        DecisionEvent,
        _DECISION,
    ),
    Channel(
        "alarm",
        _ADDRESS.alarm,
        "send",
        1,
        False,
        "Something an operator must look at, from the durable outbox.",
        AlarmEvent,
        AlarmEvent(
            event_id="019abd2f-0b12-7a4c-8d3e-5f6a7b8c9d0e",
            kind="reader_down",
            severity="critical",
            detail="rfid-1: no reply for 2.0 s",
            at=_AT,
        ),
    ),
    Channel(
        "health",
        _ADDRESS.health,
        "send",
        0,
        True,
        "Heartbeat every health.interval_s (best effort, retained).",
        HealthPayload,
        _HEALTH,
    ),
    Channel(
        "reads",
        _ADDRESS.reads,
        "send",
        0,
        False,
        "Every raw observation, when outputs.reads is on (debugging).",
        ReadEvent,
        ReadEvent(
            type="tag",
            reader="rfid-1",
            at=_AT,
            epc=_ITEM,
            antenna=2,
            rssi_dbm=-54.0,
        ),
    ),
    Channel(
        "epcis",
        _ADDRESS.epcis,
        "send",
        1,
        False,
        "An EPCIS 2.0 document with one ObjectEvent per decided passage, when outputs.epcis "
        "is on; committed with its decision.",
        EpcisDocument,
        _epcis_example(),
        content_type="application/ld+json",
    ),
    Channel(
        "cmd",
        _ADDRESS.cmd,
        "receive",
        1,
        False,
        "Commands: release and customs must be signed by an operator key; resync, ping.",
        CommandIn,
        CommandIn(
            command_id="c-20261125-0002",
            name="release",
            args={"passage_id": _PASSAGE_ID},
            operator="officer-07",
            issued_at="2026-11-25T08:00:03Z",
            sig="MEUCIQDs…base64 Ed25519 signature…",
        ),
    ),
    Channel(
        "cmd_reply",
        _ADDRESS.cmd_reply,
        "send",
        1,
        False,
        "Exactly one reply per well-formed command.",
        CommandReply,
        CommandReply(
            event_id="019abd2e-4a0f-7d11-8c3e-2a3b4c5d6e7f",
            command_id="c-20261125-0002",
            ok=True,
            result={"passage_id": _PASSAGE_ID, "released": True, "gate_opened": True},
        ),
    ),
    Channel(
        "audit",
        _ADDRESS.audit,
        "send",
        1,
        False,
        "Every accepted state-changing command, recorded before it takes effect.",
        AuditEvent,
        AuditEvent(
            event_id="019abd30-1c2d-7e3f-8a4b-5c6d7e8f9a0b",
            command_id="c-20261125-0002",
            name="release",
            operator="officer-07",
            args={"passage_id": _PASSAGE_ID},
            at=_AT,
        ),
    ),
    Channel(
        "ack",
        _ADDRESS.ack,
        "receive",
        1,
        False,
        "The back office's acks when mqtt.ack = app: named events leave the outbox.",
        AckIn,
        AckIn(event_ids=(_EVENT_ID,)),
    ),
    Channel(
        "whitelist",
        _ADDRESS.whitelist,
        "receive",
        1,
        False,
        "Signed whitelist bundles (snapshot or delta) for every gate of the site; "
        "UTF-8 lines, optionally gzip (docs/whitelist.md).",
        None,
        '{"alg":"ed25519","key_id":"3f2a9c0d1e4b5a67","sig":"…"}\n'
        '{"format":"edgegate.whitelist","version":1,"kind":"delta","site":"HAK-CBZ",'
        '"seq":43,"base_seq":42,"issued_at":"2026-11-25T08:00:00Z","issuer":"hq","count":1}\n'
        '{"op":"upsert","type":"item","epc":"3074257BF7194E4000001A85","status":"released"}\n',
        content_type="text/plain",
    ),
    Channel(
        "whitelist_resync",
        _ADDRESS.whitelist_resync,
        "send",
        1,
        False,
        "Asks the back office for the whitelist this gate is missing.",
        WhitelistResync,
        WhitelistResync(event_id="019abd2e-4a10-7c3d-9e2f-1b2c3d4e5f60", have_seq=42, reason="gap"),
    ),
)


class _Schema(GenerateJsonSchema):
    def ser_schema(
        self,
        schema: core_schema.SerSchema
        | core_schema.IncExSeqSerSchema
        | core_schema.IncExDictSerSchema,
    ) -> dict[str, object] | None:
        # The payloads' wrap serializers only omit absent keys; describe the fields themselves.
        if schema.get("type") == "function-wrap":
            return None
        return super().ser_schema(schema)


def document() -> dict[str, object]:
    """The AsyncAPI 3.0 document as plain JSON-compatible data."""
    inputs: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for channel in CHANNELS:
        if channel.model is not None:
            mode: JsonSchemaMode = "serialization" if channel.action == "send" else "validation"
            inputs.append((channel.model, mode))
    refs, defs = models_json_schema(
        inputs, ref_template="#/components/schemas/{model}", schema_generator=_Schema
    )
    channels: dict[str, object] = {}
    operations: dict[str, object] = {}
    messages: dict[str, object] = {}
    for channel in CHANNELS:
        name = channel.name
        used = set(re.findall(r"{(\w+)}", channel.address))
        channels[name] = {
            "address": channel.address,
            "description": channel.summary,
            "parameters": {
                key: {"$ref": f"#/components/parameters/{key}"}
                for key in _PARAMETERS
                if key in used
            },
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        verb = "publish" if channel.action == "send" else "receive"
        operations[f"{verb}_{name}"] = {
            "action": channel.action,
            "channel": {"$ref": f"#/channels/{name}"},
            "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
            "bindings": {
                "mqtt": {
                    "qos": channel.qos,
                    "retain": channel.retain,
                    "bindingVersion": MQTT_BINDING_VERSION,
                }
            },
        }
        if channel.model is None:
            payload: object = {"type": "string"}
            example: object = channel.example
        else:
            mode = "serialization" if channel.action == "send" else "validation"
            payload = refs[(channel.model, mode)]
            assert isinstance(channel.example, BaseModel)
            example = _example_json(channel.example)
        messages[name] = {
            "name": name,
            "title": channel.address,
            "summary": channel.summary,
            "contentType": channel.content_type,
            "payload": payload,
            "examples": [{"name": f"{name}-example", "payload": example}],
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "edgegate — a customs smart gate's MQTT interface",
            "version": __version__,
            "description": (
                "What one gate publishes and receives (DESIGN.md §9). P = mqtt.topic_prefix, "
                "G = P/<site>/<gate_id>. Generated by `python -m edgegate.mqtt.asyncapi` "
                "from the payload models; docs/mqtt.md explains each topic."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "parameters": _PARAMETERS,
            "messages": messages,
            "schemas": defs.get("$defs", {}),
        },
    }


def example_payload(channel: Channel) -> object:
    """What the gate (or the back office) puts on ``channel``, as parsed JSON or text."""
    if isinstance(channel.example, BaseModel):
        return _example_json(channel.example)
    return channel.example


def _example_json(model: BaseModel) -> object:
    # What the gate sends, byte for byte; what it receives, without the keys left out.
    to_bytes = getattr(model, "to_bytes", None)
    if callable(to_bytes):
        return json.loads(to_bytes())
    return json.loads(model.model_dump_json(by_alias=True, exclude_none=True))


_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_.$-]*$")
# Words YAML 1.1 would read as booleans or null if left unquoted.
_YAML11_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def to_yaml(value: object) -> str:
    """Block-style YAML of JSON-compatible data; every scalar is a JSON (double-quoted)
    scalar or a plain key, so YAML 1.1 and 1.2 parsers agree on it."""
    return "\n".join(_yaml_lines(value, 0)) + "\n"


def _yaml_lines(value: object, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return [pad + "{}"]
        lines = []
        for key, item in value.items():
            head = f"{pad}{_yaml_key(str(key))}:"
            lines.extend(_yaml_item(head, item, indent))
        return lines
    if isinstance(value, list | tuple):
        if not value:
            return [pad + "[]"]
        lines = []
        for item in value:
            lines.extend(_yaml_item(f"{pad}-", item, indent))
        return lines
    return [pad + _yaml_scalar(value)]


def _yaml_item(head: str, item: object, indent: int) -> list[str]:
    if isinstance(item, dict | list | tuple) and item:
        return [head, *_yaml_lines(item, indent + 2)]
    return [f"{head} {_yaml_lines(item, 0)[0]}"]


def _yaml_key(key: str) -> str:
    if _PLAIN_KEY.match(key) and key.lower() not in _YAML11_WORDS:
        return key
    return json.dumps(key, ensure_ascii=False)


def _yaml_scalar(value: object) -> str:
    if value is None or isinstance(value, bool | int | float | str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"not JSON-compatible: {type(value).__name__}")


def main() -> int:
    sys.stdout.write(to_yaml(document()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
