"""Alarms on ``G/alarm``: durable like decisions, so an operator never misses one.

Owns the alarm vocabulary and how an alarm is raised. An alarm is committed to the outbox
(counter ``alarm``) and published at QoS 1 by the publisher like any decision; raising one
never waits on the network.

Invariant: every alarm is also logged (warning, or error for ``critical``) with the same
kind and detail, so journald and MQTT tell the same story.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Literal

import structlog

from edgegate.ids import uuid7
from edgegate.mqtt.outbox import AsyncOutbox
from edgegate.mqtt.payloads import AlarmEvent, instant
from edgegate.mqtt.topics import Topics

log = structlog.get_logger(__name__)

Severity = Literal["info", "warning", "critical"]


class AlarmKind(StrEnum):
    """Alarm kinds (DESIGN.md §9). New kinds may be added; none is ever renamed."""

    READER_DOWN = "reader_down"
    READER_UP = "reader_up"
    WHITELIST_STALE = "whitelist_stale"
    WHITELIST_REJECTED = "whitelist_rejected"
    OUTBOX_HIGH = "outbox_high"
    OUTBOX_OVERFLOW = "outbox_overflow"
    DECLARATION_OVERDUE = "declaration_overdue"
    CLOCK_JUMP = "clock_jump"


class Alarms:
    def __init__(self, outbox: AsyncOutbox, topics: Topics) -> None:
        self._outbox = outbox
        self._topics = topics
        self.raised = 0

    async def raise_alarm(self, kind: AlarmKind, severity: Severity, detail: str) -> str:
        """Commit one alarm to the outbox; returns its event id."""
        event_id = uuid7()
        event = AlarmEvent(
            event_id=event_id,
            kind=kind.value,
            severity=severity,
            detail=detail,
            at=instant(time.time()),
        )
        await self._outbox.append(
            self._topics.alarm, event_id, lambda _seq: event.to_bytes(), counter="alarm"
        )
        self.raised += 1
        emit = log.error if severity == "critical" else log.warning
        emit("alarm", kind=kind.value, severity=severity, detail=detail, event_id=event_id)
        return event_id
