"""G/reads: raw observations as ReadEvent messages, best effort, never blocking intake."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt

from edgegate.gate.model import BeamChanged, CodeScanned, ReaderDown, ReaderUp, TagSeen
from edgegate.localbroker import LocalBroker
from edgegate.mqtt.outbox import AsyncOutbox
from edgegate.mqtt.publisher import Publisher, PublisherSettings
from edgegate.mqtt.reads import ReadsTap, read_event
from edgegate.mqtt.topics import Topics

TOPICS = Topics("edgegate/v1", "HAK-CBZ", "READS01")


def wall_of(mono_s: float) -> float:
    return 1_764_057_600.0 + mono_s


def test_each_kind_of_observation_has_its_read_event_and_absent_keys_are_omitted() -> None:
    events = [
        read_event(obs, wall_of).to_bytes()
        for obs in (
            TagSeen("rfid-1", "3074257BF7194E4000001A85", 2, -54.5, 1.25, tid="E2801160"),
            CodeScanned("scan-1", "HP4601202611250001", 2.0),
            BeamChanged("io-1", "a", True, 3.0),
            ReaderDown("rfid-1", "reply timeout", 4.0),
            ReaderUp("rfid-1", 5.0),
        )
    ]
    assert [json.loads(e) for e in events] == [
        {
            "type": "tag",
            "reader": "rfid-1",
            "at": "2025-11-25T08:00:01.250Z",
            "epc": "3074257BF7194E4000001A85",
            "tid": "E2801160",
            "antenna": 2,
            "rssi_dbm": -54.5,
        },
        {
            "type": "code",
            "reader": "scan-1",
            "at": "2025-11-25T08:00:02.000Z",
            "value": "HP4601202611250001",
        },
        {
            "type": "beam",
            "reader": "io-1",
            "at": "2025-11-25T08:00:03.000Z",
            "beam": "a",
            "broken": True,
        },
        {
            "type": "reader_down",
            "reader": "rfid-1",
            "at": "2025-11-25T08:00:04.000Z",
            "reason": "reply timeout",
        },
        {"type": "reader_up", "reader": "rfid-1", "at": "2025-11-25T08:00:05.000Z"},
    ]


class Sink:
    def __init__(self, connected: bool) -> None:
        self.connected = connected
        self.sent: list[tuple[str, bytes, int]] = []

    async def publish_now(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> bool:
        if self.connected:
            self.sent.append((topic, payload, qos))
        return self.connected


async def test_a_full_buffer_drops_and_counts_instead_of_blocking_intake() -> None:
    sink = Sink(connected=True)
    tap = ReadsTap(sink, TOPICS, buffer=3)
    for n in range(5):
        tap.offer(ReaderUp(f"r{n}", float(n)))
    assert tap.dropped == 2
    task = asyncio.create_task(tap.run())
    async with asyncio.timeout(5):
        while tap.published < 3:
            await asyncio.sleep(0.01)
    task.cancel()
    assert [json.loads(p)["reader"] for _, p, _ in sink.sent] == ["r0", "r1", "r2"]
    assert {(topic, qos) for topic, _, qos in sink.sent} == {(TOPICS.reads, 0)}


async def test_reads_offered_while_disconnected_are_counted_as_dropped() -> None:
    tap = ReadsTap(Sink(connected=False), TOPICS)
    tap.offer(ReaderUp("rfid-1", 1.0))
    task = asyncio.create_task(tap.run())
    async with asyncio.timeout(5):
        while tap.dropped < 1:
            await asyncio.sleep(0.01)
    task.cancel()
    assert tap.published == 0


async def test_reads_reach_a_subscriber_through_the_publisher(
    broker: LocalBroker, tmp_path: Path
) -> None:
    outbox = await AsyncOutbox.open(tmp_path / "outbox.db")
    settings = PublisherSettings(host=broker.host, port=broker.port, client_id=TOPICS.gate_id)
    pub = Publisher(settings, TOPICS, outbox, version="test", whitelist_seq=lambda: None)
    tap = ReadsTap(pub, TOPICS)
    async with aiomqtt.Client(broker.host, broker.port) as sub:
        await sub.subscribe(TOPICS.reads, qos=0)
        async with asyncio.TaskGroup() as group:
            group.create_task(pub.run())
            reads = group.create_task(tap.run())
            async with asyncio.timeout(20):
                while not pub.connected:
                    await asyncio.sleep(0.02)
                tap.offer(TagSeen("rfid-1", "3074257BF7194E4000001A85", 1, -60.0, 1.0))
                message = await anext(aiter(sub.messages))
            reads.cancel()
            pub.shutdown()
    await outbox.close()
    assert isinstance(message.payload, bytes)
    assert json.loads(message.payload)["epc"] == "3074257BF7194E4000001A85"
    assert tap.dropped == 0
