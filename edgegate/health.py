"""The gate's heartbeat on ``G/health`` and the alarms that only a watch over time can raise.

Owns the :class:`Health` task. Every ``health.interval_s`` it publishes one retained QoS 0
:class:`~edgegate.mqtt.payloads.HealthPayload`: per reader (connected, frames, errors,
resyncs, last seen), outbox depth and oldest age, whitelist seq and age, passages decided,
the MQTT session, uptime, RSS and the worst event-loop lag since the last heartbeat. It
reads its sources through small protocols, so it knows no part's internals.

Between heartbeats it ticks (``tick_s``) to measure event-loop lag (how late a sleep wakes)
and to catch wall-clock steps: wall and monotonic time advance together unless the clock is
set (or the machine was suspended); a difference beyond ``clock_jump_s`` raises
``clock_jump`` — decisions carry wall-clock instants, so an operator must know.

Invariants:
- the heartbeat is best effort (not durable): published when connected, and retried at the
  next tick while not, so a reconnected gate reports soon;
- alarms are edge-triggered: ``outbox_high`` once when the depth reaches ``high_water``
  (again only after it fell below half of it), ``whitelist_stale`` once per stale spell;
- nothing here blocks the event loop: the outbox is read through its own thread.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from edgegate.devices.base import DeviceStats
from edgegate.mqtt.alarms import AlarmKind, Severity
from edgegate.mqtt.outbox import OutboxStats
from edgegate.mqtt.payloads import (
    HealthPayload,
    MqttHealth,
    OutboxHealth,
    PassageHealth,
    ProcessHealth,
    ReaderHealth,
    WallClock,
    WhitelistHealth,
    instant,
)
from edgegate.mqtt.topics import Topics
from edgegate.whitelist.freshness import freshness


class ReaderSource(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def stats(self) -> DeviceStats: ...


class OutboxSource(Protocol):
    async def stats(self) -> OutboxStats: ...


class WhitelistInfo(Protocol):
    @property
    def seq(self) -> int | None: ...

    @property
    def issued_at(self) -> datetime | None: ...


class ApplierInfo(Protocol):
    """Where whitelist bundles are applied (whitelist/applier.py)."""

    @property
    def applied_in(self) -> Literal["process", "thread"]: ...

    @property
    def fallbacks(self) -> int: ...


class MqttLink(Protocol):
    connected: bool
    connects: int
    published: int

    async def publish_now(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> bool: ...


class AlarmSink(Protocol):
    async def raise_alarm(self, kind: AlarmKind, severity: Severity, detail: str) -> str: ...


@dataclass(slots=True)
class DecisionTally:
    """Passages decided since start, by verdict (the daemon counts, health reports)."""

    decided: int = 0
    passed: int = 0
    held: int = 0

    def count(self, passed: bool) -> None:
        self.decided += 1
        if passed:
            self.passed += 1
        else:
            self.held += 1


@dataclass(frozen=True, slots=True)
class HealthSettings:
    interval_s: float
    whitelist_max_age_s: float
    outbox_high_water: int
    tick_s: float = 0.5
    clock_jump_s: float = 2.0


@dataclass(frozen=True, slots=True)
class HealthSources:
    readers: Sequence[ReaderSource]
    outbox: OutboxSource
    whitelist: Callable[[], WhitelistInfo]
    tally: DecisionTally
    mqtt: MqttLink
    alarms: AlarmSink
    applier: ApplierInfo | None = None


class Health:
    def __init__(
        self,
        settings: HealthSettings,
        topics: Topics,
        version: str,
        sources: HealthSources,
        *,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._topic = topics.health
        self._version = version
        self._sources = sources
        self._wall = wall
        self._mono = mono
        self._started_mono = mono()
        self._max_lag_s = 0.0
        self._outbox_high = False
        self._whitelist_stale = False
        self.heartbeats = 0

    async def run(self) -> None:
        s = self._settings
        next_beat = self._mono()
        last_wall, last_mono = self._wall(), self._mono()
        while True:
            if self._mono() >= next_beat:
                published = await self._beat()
                next_beat = self._mono() + (s.interval_s if published else s.tick_s)
            expected = self._mono() + s.tick_s
            await asyncio.sleep(s.tick_s)
            now_wall, now_mono = self._wall(), self._mono()
            self._max_lag_s = max(self._max_lag_s, now_mono - expected)
            step_s = (now_wall - last_wall) - (now_mono - last_mono)
            if abs(step_s) > s.clock_jump_s:
                await self._sources.alarms.raise_alarm(
                    AlarmKind.CLOCK_JUMP,
                    "warning",
                    f"wall clock stepped {step_s:+.3f} s (now {instant(now_wall)}); "
                    "instants before and after the step are not comparable",
                )
            last_wall, last_mono = now_wall, now_mono

    async def _beat(self) -> bool:
        """Check the thresholds and publish one heartbeat; returns whether it went out."""
        payload = await self.snapshot()
        await self._check(payload)
        published = await self._sources.mqtt.publish_now(
            self._topic, payload.to_bytes(), qos=0, retain=True
        )
        if published:
            self.heartbeats += 1
            self._max_lag_s = 0.0
        return published

    async def snapshot(self) -> HealthPayload:
        sources = self._sources
        now_wall, now_mono = self._wall(), self._mono()
        wall_of = WallClock(now_wall, now_mono)
        outbox = await sources.outbox.stats()
        whitelist = sources.whitelist()
        # The one staleness rule, shared with the decisions (whitelist/freshness.py).
        fresh = freshness(
            whitelist.issued_at,
            datetime.fromtimestamp(now_wall, UTC),
            self._settings.whitelist_max_age_s,
        )
        tally, mqtt, applier = sources.tally, sources.mqtt, sources.applier
        return HealthPayload(
            at=instant(now_wall),
            version=self._version,
            uptime_s=round(now_mono - self._started_mono, 3),
            readers=tuple(_reader(r.name, r.stats, wall_of) for r in sources.readers),
            outbox=OutboxHealth(
                depth=outbox.depth,
                oldest_age_s=None if outbox.oldest_age_s is None else round(outbox.oldest_age_s, 3),
                awaiting_ack=outbox.awaiting_ack,
                dropped=outbox.dropped,
            ),
            whitelist=WhitelistHealth(
                seq=whitelist.seq,
                age_s=None if fresh.age_s is None else round(fresh.age_s, 3),
                stale=fresh.stale,
                applied_in="thread" if applier is None else applier.applied_in,
                apply_fallbacks=0 if applier is None else applier.fallbacks,
            ),
            passages=PassageHealth(decided=tally.decided, passed=tally.passed, held=tally.held),
            mqtt=MqttHealth(
                connected=mqtt.connected, connects=mqtt.connects, published=mqtt.published
            ),
            process=ProcessHealth(
                rss_bytes=rss_bytes(), loop_lag_ms=round(self._max_lag_s * 1000, 3)
            ),
        )

    async def _check(self, health: HealthPayload) -> None:
        s, alarms = self._settings, self._sources.alarms
        depth = health.outbox.depth
        if depth >= s.outbox_high_water and not self._outbox_high:
            self._outbox_high = True
            await alarms.raise_alarm(
                AlarmKind.OUTBOX_HIGH,
                "warning",
                f"outbox depth {depth} reached high_water {s.outbox_high_water} "
                f"(oldest {health.outbox.oldest_age_s} s): events are not getting out",
            )
        elif depth < s.outbox_high_water // 2:
            self._outbox_high = False
        if health.whitelist.stale and not self._whitelist_stale:
            self._whitelist_stale = True
            age = health.whitelist.age_s
            detail = (
                "no whitelist loaded"
                if age is None
                else f"whitelist seq {health.whitelist.seq} is {age:.0f} s old "
                f"(max_age_s {s.whitelist_max_age_s:.0f})"
            )
            await alarms.raise_alarm(AlarmKind.WHITELIST_STALE, "critical", detail)
        elif not health.whitelist.stale:
            self._whitelist_stale = False


def _reader(name: str, stats: DeviceStats, wall_of: WallClock) -> ReaderHealth:
    seen = stats.last_seen_mono_s
    return ReaderHealth(
        name=name,
        connected=stats.connected,
        frames=stats.frames,
        errors=stats.checksum_errors + stats.malformed,
        resyncs=stats.resyncs,
        last_seen=None if seen is None else instant(wall_of(seen)),
    )


def rss_bytes() -> int | None:
    """Resident set size from /proc (Linux); None where there is no /proc."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
