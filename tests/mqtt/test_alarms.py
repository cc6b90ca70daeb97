"""Reader alarms from the observation stream: down once per outage, up only after a down."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from edgegate.gate.model import ReaderDown, ReaderUp, TagSeen
from edgegate.mqtt.alarms import Alarms, ReaderAlarms
from edgegate.mqtt.outbox import AsyncOutbox
from edgegate.mqtt.topics import Topics

TOPICS = Topics("edgegate/v1", "HAK-CBZ", "G01")


async def test_reader_alarms_alternate_and_skip_the_first_reader_up(tmp_path: Path) -> None:
    outbox = await AsyncOutbox.open(tmp_path / "outbox.db")
    watch = ReaderAlarms(Alarms(outbox, TOPICS))
    for observation in (
        ReaderUp("rfid-1", 0.0),  # start-up: not news
        TagSeen("rfid-1", "3074257BF7194E4000001A85", 1, -50.0, 0.5),
        ReaderDown("rfid-1", "reply timeout", 1.0),
        ReaderDown("rfid-1", "open failed: [Errno 2]", 2.0),  # the same outage, retried
        ReaderDown("io-1", "EOF", 2.5),
        ReaderUp("rfid-1", 3.0),
        ReaderUp("rfid-1", 3.5),
    ):
        watch.offer(observation)
    task = asyncio.create_task(watch.run())
    async with asyncio.timeout(10):
        while (await outbox.stats()).depth < 3:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # room for a wrong fourth alarm to show up
    task.cancel()
    alarms = [json.loads(row.payload) for row in await outbox.pending(10)]
    await outbox.close()
    assert [(a["kind"], a["severity"], a["detail"]) for a in alarms] == [
        ("reader_down", "critical", "rfid-1: reply timeout"),
        ("reader_down", "critical", "io-1: EOF"),
        ("reader_up", "info", "rfid-1: reading again"),
    ]
