"""Alarms on ``G/alarm``: durable like decisions, so an operator never misses one.

Owns the alarm vocabulary and how an alarm is raised. An alarm is committed to the outbox
(counter ``alarm``) and published at QoS 1 by the publisher like any decision; raising one
never waits on the network.

Invariants:
- every alarm is also logged (warning, or error for ``critical``) with the same kind and
  detail, so journald and MQTT tell the same story;
- an ``outbox_overflow`` alarm is built by :func:`overflow_alarm` and stored by the outbox
  in the transaction that drops the rows it names;
- a reader's alarms alternate: ``reader_down`` once per outage, ``reader_up`` only after a
  ``reader_down`` (a reader coming up at start-up is not news).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Literal

import structlog

from edgegate.gate.model import Observation, ReaderDown, ReaderUp
from edgegate.ids import uuid7
from edgegate.mqtt.outbox import AsyncOutbox, Dropped, NewEvent, OverflowEvent
from edgegate.mqtt.payloads import AlarmEvent, DroppedOut, SeqRangeOut, instant
from edgegate.mqtt.topics import Topics

log = structlog.get_logger(__name__)

Severity = Literal["info", "warning", "critical"]
ALARM_COUNTER = "alarm"


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
    def __init__(
        self, outbox: AsyncOutbox, topics: Topics, wall: Callable[[], float] = time.time
    ) -> None:
        self._outbox = outbox
        self._topics = topics
        self._wall = wall
        self.raised = 0

    async def raise_alarm(self, kind: AlarmKind, severity: Severity, detail: str) -> str:
        """Commit one alarm to the outbox; returns its event id."""
        event_id = uuid7()
        event = AlarmEvent(
            event_id=event_id,
            kind=kind.value,
            severity=severity,
            detail=detail,
            at=instant(self._wall()),
        )
        await self._outbox.append(
            self._topics.alarm, event_id, lambda _seq: event.to_bytes(), counter=ALARM_COUNTER
        )
        self.raised += 1
        emit = log.error if severity == "critical" else log.warning
        emit("alarm", kind=kind.value, severity=severity, detail=detail, event_id=event_id)
        return event_id


def overflow_alarm(topics: Topics, wall: Callable[[], float] = time.time) -> OverflowEvent:
    """The ``outbox_overflow`` alarm the outbox stores with every drop (see outbox.py)."""

    def build(dropped: Dropped) -> NewEvent:
        event = AlarmEvent(
            event_id=uuid7(),
            kind=AlarmKind.OUTBOX_OVERFLOW.value,
            severity="critical",
            detail=dropped.describe(),
            at=instant(wall()),
            dropped=DroppedOut(
                reason=dropped.reason,
                count=dropped.count,
                ranges=tuple(
                    SeqRangeOut(counter=r.counter, first=r.first, last=r.last, count=r.count)
                    for r in dropped.ranges
                ),
                first_event_id=dropped.first_event_id,
                last_event_id=dropped.last_event_id,
                oldest_created_at=instant(dropped.oldest_created_at),
                newest_created_at=instant(dropped.newest_created_at),
            ),
        )
        payload = event.to_bytes()
        return NewEvent(topics.alarm, event.event_id, lambda _seq: payload, ALARM_COUNTER)

    return build


class ReaderAlarms:
    """``reader_down`` / ``reader_up`` from the device sessions' observations.

    :meth:`offer` is called on the observation path and never blocks it; :meth:`run`
    commits the alarms (an fsync each) on its own task.
    """

    def __init__(self, alarms: Alarms) -> None:
        self._alarms = alarms
        self._changes: asyncio.Queue[ReaderDown | ReaderUp] = asyncio.Queue()
        self._down: set[str] = set()

    def offer(self, observation: Observation) -> None:
        if isinstance(observation, ReaderDown | ReaderUp):
            self._changes.put_nowait(observation)

    async def run(self) -> None:
        while True:
            change = await self._changes.get()
            if isinstance(change, ReaderDown):
                if change.reader in self._down:
                    continue
                self._down.add(change.reader)
                await self._alarms.raise_alarm(
                    AlarmKind.READER_DOWN, "critical", f"{change.reader}: {change.reason}"
                )
            elif change.reader in self._down:
                self._down.discard(change.reader)
                await self._alarms.raise_alarm(
                    AlarmKind.READER_UP, "info", f"{change.reader}: reading again"
                )
