"""``G/reads`` (off by default): every raw observation, for commissioning and debugging a lane.

Owns turning observations into :class:`~edgegate.mqtt.payloads.ReadEvent` messages and
publishing them best effort (QoS 0, not durable, not retained).

Invariants: :meth:`ReadsTap.offer` never blocks and never fails — the observation path that
decides passages must not slow down for a debugging feed; when the broker is slower than
the readers (or gone) the feed drops what does not fit its buffer and counts it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from edgegate.gate.model import (
    BeamChanged,
    CodeScanned,
    Observation,
    ReaderDown,
    ReaderUp,
    TagSeen,
)
from edgegate.mqtt.payloads import ReadEvent, WallClock, instant
from edgegate.mqtt.topics import Topics

BUFFER = 1000


class Sink(Protocol):
    async def publish_now(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> bool: ...


class ReadsTap:
    def __init__(
        self,
        sink: Sink,
        topics: Topics,
        *,
        buffer: int = BUFFER,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._topic = topics.reads
        self._queue: asyncio.Queue[Observation] = asyncio.Queue(maxsize=buffer)
        self._wall = wall
        self._mono = mono
        self.published = 0
        self.dropped = 0

    def offer(self, observation: Observation) -> None:
        try:
            self._queue.put_nowait(observation)
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        while True:
            observation = await self._queue.get()
            event = read_event(observation, WallClock(self._wall(), self._mono()))
            if await self._sink.publish_now(self._topic, event.to_bytes(), qos=0):
                self.published += 1
            else:
                self.dropped += 1


def read_event(observation: Observation, wall_of: Callable[[float], float]) -> ReadEvent:
    at = instant(wall_of(observation.at_mono_s))
    match observation:
        case TagSeen():
            return ReadEvent(
                type="tag",
                reader=observation.reader,
                at=at,
                epc=observation.epc,
                tid=observation.tid,
                antenna=observation.antenna,
                rssi_dbm=observation.rssi_dbm,
            )
        case CodeScanned():
            return ReadEvent(type="code", reader=observation.reader, at=at, value=observation.value)
        case BeamChanged():
            return ReadEvent(
                type="beam",
                reader=observation.reader,
                at=at,
                beam=observation.beam,
                broken=observation.broken,
            )
        case ReaderDown():
            return ReadEvent(
                type="reader_down", reader=observation.reader, at=at, reason=observation.reason
            )
        case ReaderUp():
            return ReadEvent(type="reader_up", reader=observation.reader, at=at)
