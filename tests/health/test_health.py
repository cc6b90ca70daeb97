"""G/health heartbeats and the alarms only a watch over time can raise."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import aiomqtt
import pytest

from edgegate.devices.base import DeviceStats
from edgegate.health import DecisionTally, Health, HealthSettings, HealthSources
from edgegate.localbroker import LocalBroker
from edgegate.mqtt.alarms import AlarmKind, Alarms, Severity
from edgegate.mqtt.outbox import AsyncOutbox, OutboxStats
from edgegate.mqtt.publisher import Publisher, PublisherSettings
from edgegate.mqtt.topics import Topics

TOPICS = Topics("edgegate/v1", "HAK-CBZ", "HEALTH01")


@dataclass
class Reader:
    name: str
    stats: DeviceStats


@dataclass(frozen=True)
class WhitelistInfo:
    seq: int | None
    issued_at: datetime | None


@dataclass
class Outbox:
    depth: int = 0

    async def stats(self) -> OutboxStats:
        return OutboxStats(depth=self.depth, oldest_age_s=None)


@dataclass
class Link:
    connected: bool = False
    connects: int = 0
    published: int = 0
    sent: list[bytes] = field(default_factory=list)

    async def publish_now(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> bool:
        if self.connected:
            self.sent.append(payload)
        return self.connected


@dataclass
class AlarmLog:
    raised: list[tuple[AlarmKind, Severity, str]] = field(default_factory=list)

    async def raise_alarm(self, kind: AlarmKind, severity: Severity, detail: str) -> str:
        self.raised.append((kind, severity, detail))
        return f"a{len(self.raised)}"

    def kinds(self) -> list[AlarmKind]:
        return [kind for kind, _, _ in self.raised]


@dataclass
class Applier:
    applied_in: Literal["process", "thread"]
    fallbacks: int


FRESH = WhitelistInfo(seq=42, issued_at=datetime.now(UTC))


def health(
    *,
    outbox: Outbox | None = None,
    whitelist: Callable[[], WhitelistInfo] = lambda: FRESH,
    link: Link | None = None,
    alarms: AlarmLog | None = None,
    wall: Callable[[], float] = time.time,
    interval_s: float = 3600,
    applier: Applier | None = None,
) -> Health:
    return Health(
        HealthSettings(
            interval_s=interval_s, whitelist_max_age_s=3600, outbox_high_water=100, tick_s=0.01
        ),
        TOPICS,
        "test",
        HealthSources(
            readers=[],
            outbox=outbox or Outbox(),
            whitelist=whitelist,
            tally=DecisionTally(),
            mqtt=link or Link(connected=True),
            alarms=alarms or AlarmLog(),
            applier=applier,
        ),
        wall=wall,
    )


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


async def running(watch: Health, steps: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(watch.run())
    try:
        await steps()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_heartbeat_reports_every_part_and_stays_retained(
    broker: LocalBroker, tmp_path: Path
) -> None:
    # The gate's outbox holds one row; the publisher drains another outbox, so the row stays.
    reported = await AsyncOutbox.open(tmp_path / "reported.db")
    await reported.append(TOPICS.alarm, "stuck", lambda seq: b"{}", counter="alarm")
    drained = await AsyncOutbox.open(tmp_path / "drained.db")
    settings = PublisherSettings(host=broker.host, port=broker.port, client_id=TOPICS.gate_id)
    pub = Publisher(settings, TOPICS, drained, version="test", whitelist_seq=lambda: 42)
    tally = DecisionTally()
    tally.count(passed=True)
    tally.count(passed=False)
    reader = Reader(
        "rfid-1",
        DeviceStats(
            connected=True,
            frames=120,
            checksum_errors=2,
            malformed=1,
            resyncs=3,
            last_seen_mono_s=time.monotonic() - 2.0,
        ),
    )
    issued = datetime.now(UTC) - timedelta(seconds=600)
    watch = Health(
        HealthSettings(interval_s=3600, whitelist_max_age_s=3600, outbox_high_water=100),
        TOPICS,
        "1.2.3",
        HealthSources(
            readers=[reader],
            outbox=reported,
            whitelist=lambda: WhitelistInfo(seq=42, issued_at=issued),
            tally=tally,
            mqtt=pub,
            alarms=Alarms(reported, TOPICS),
        ),
    )

    async def heartbeat() -> None:
        await until(lambda: watch.heartbeats == 1)

    async with asyncio.TaskGroup() as group:
        group.create_task(pub.run())
        await until(lambda: pub.connected)
        await running(watch, heartbeat)
        async with aiomqtt.Client(broker.host, broker.port) as late:
            await late.subscribe(TOPICS.health, qos=0)
            async with asyncio.timeout(10):
                message = await anext(aiter(late.messages))
        pub.shutdown()
    await reported.close()
    await drained.close()
    assert message.retain
    assert isinstance(message.payload, bytes)
    report = json.loads(message.payload)
    assert report["schema"] == "edgegate.health/1"
    assert report["version"] == "1.2.3"
    assert report["uptime_s"] >= 0
    [rfid] = report["readers"]
    assert (rfid["name"], rfid["connected"], rfid["frames"]) == ("rfid-1", True, 120)
    assert (rfid["errors"], rfid["resyncs"]) == (3, 3)
    assert rfid["last_seen"].endswith("Z")
    assert report["outbox"]["depth"] == 1
    assert report["outbox"]["oldest_age_s"] >= 0
    assert report["whitelist"]["seq"] == 42
    assert 600 <= report["whitelist"]["age_s"] < 3600
    assert report["whitelist"]["stale"] is False
    assert report["passages"] == {"decided": 2, "pass": 1, "hold": 1}
    assert (report["mqtt"]["connected"], report["mqtt"]["connects"]) == (True, 1)
    assert report["process"]["rss_bytes"] > 0
    assert report["process"]["loop_lag_ms"] >= 0


@pytest.mark.parametrize(
    "applier", [None, Applier("process", 0), Applier("thread", 4)], ids=["none", "ok", "gave up"]
)
async def test_a_heartbeat_says_where_whitelist_bundles_are_applied(
    applier: Applier | None,
) -> None:
    snapshot = await health(applier=applier).snapshot()

    expected = ("thread", 0) if applier is None else (applier.applied_in, applier.fallbacks)
    assert (snapshot.whitelist.applied_in, snapshot.whitelist.apply_fallbacks) == expected


async def test_a_step_of_the_wall_clock_raises_clock_jump() -> None:
    offset_s = [0.0]
    alarms = AlarmLog()
    watch = health(alarms=alarms, wall=lambda: time.time() + offset_s[0])

    async def step() -> None:
        await until(lambda: watch.heartbeats == 1)
        assert alarms.raised == []
        offset_s[0] = -3600.0  # someone set the clock back an hour
        await until(lambda: AlarmKind.CLOCK_JUMP in alarms.kinds())

    await running(watch, step)
    [(kind, severity, detail)] = alarms.raised
    assert kind is AlarmKind.CLOCK_JUMP
    assert severity == "warning"
    assert "stepped -3600." in detail


async def test_outbox_high_is_raised_once_and_again_only_after_falling_below_half() -> None:
    outbox, alarms = Outbox(depth=99), AlarmLog()
    link = Link(connected=True)
    watch = health(outbox=outbox, alarms=alarms, link=link, interval_s=0.01)

    async def beats(n: int) -> None:
        start = len(link.sent)
        await until(lambda: len(link.sent) >= start + n)

    async def fill_and_drain() -> None:
        await beats(2)
        outbox.depth = 100
        await beats(3)
        outbox.depth = 60  # below high_water, not below half: still armed off
        await beats(3)
        outbox.depth = 150
        await beats(3)
        outbox.depth = 49
        await beats(3)
        outbox.depth = 100
        await beats(3)

    await running(watch, fill_and_drain)
    assert alarms.kinds() == [AlarmKind.OUTBOX_HIGH, AlarmKind.OUTBOX_HIGH]
    assert "outbox depth 100 reached high_water 100" in alarms.raised[0][2]


async def test_a_stale_whitelist_is_reported_once_per_stale_spell() -> None:
    state = [WhitelistInfo(seq=None, issued_at=None)]
    alarms, link = AlarmLog(), Link(connected=True)
    watch = health(whitelist=lambda: state[0], alarms=alarms, link=link, interval_s=0.01)

    async def spells() -> None:
        await until(lambda: len(link.sent) >= 3)
        state[0] = FRESH
        await until(lambda: json.loads(link.sent[-1])["whitelist"]["stale"] is False)
        state[0] = WhitelistInfo(seq=42, issued_at=datetime.now(UTC) - timedelta(hours=2))
        await until(lambda: len(alarms.raised) == 2)
        await until(lambda: len(link.sent) >= 10)

    await running(watch, spells)
    assert alarms.kinds() == [AlarmKind.WHITELIST_STALE, AlarmKind.WHITELIST_STALE]
    assert alarms.raised[0][1:] == ("critical", "no whitelist loaded")
    assert alarms.raised[1][2].startswith("whitelist seq 42 is 72")


async def test_a_heartbeat_missed_while_offline_goes_out_soon_after_connecting() -> None:
    link = Link(connected=False)
    watch = health(link=link, interval_s=3600)

    async def connect_later() -> None:
        await asyncio.sleep(0.05)
        assert watch.heartbeats == 0
        link.connected = True
        await until(lambda: watch.heartbeats == 1)

    await running(watch, connect_later)
    assert len(link.sent) == 1
