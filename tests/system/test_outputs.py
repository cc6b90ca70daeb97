"""The daemon's optional and periodic outputs, end to end: G/reads, G/epcis, G/health and the
alarms it raises by itself, from simulator bytes on a pty to a subscriber."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiomqtt
import pytest

from edgegate.localbroker import LocalBroker
from edgegate.mqtt.topics import Topics
from simulators.endpoints import PtyEndpoint
from simulators.r2000 import R2000Simulator

from .support import start_daemon

pytestmark = pytest.mark.system

TOPICS = Topics("edgegate/v1", "HAK-CBZ", "OUT01")
ITEM = "3074257BF7194E4000001A85"
READ_POINT = "urn:epc:id:sgln:6901234.00001.1"


def write_config(path: Path, state_dir: Path, broker: LocalBroker, port: str) -> None:
    path.write_text(
        f"""
[gate]
site = "{TOPICS.site}"
gate_id = "{TOPICS.gate_id}"
mode = "portal"
direction = "in"

[mqtt]
host = "{broker.host}"
port = {broker.port}

[storage]
state_dir = "{state_dir}"

[passage]
stable_set_ms = 300

[health]
interval_s = 0.5

[outputs]
reads = true
epcis = true
read_point = "{READ_POINT}"

[[readers]]
name = "rfid-1"
kind = "r2000"
url = "{port}"
""",
        encoding="utf-8",
    )


async def test_reads_epcis_health_and_alarms_reach_a_subscriber(
    broker: LocalBroker, reader: tuple[R2000Simulator, PtyEndpoint], tmp_path: Path
) -> None:
    simulator, endpoint = reader
    config = tmp_path / "edgegate.toml"
    write_config(config, tmp_path / "state", broker, endpoint.path)
    seen: dict[str, list[dict[str, object]]] = {}
    async with aiomqtt.Client(broker.host, broker.port) as sub:
        await sub.subscribe(f"{TOPICS.gate}/#", qos=1)
        process = await start_daemon(config)
        try:
            simulator.add_tag(ITEM, antenna_port=1, rssi_dbm=-50)
            async with asyncio.timeout(30):
                async for message in sub.messages:
                    assert isinstance(message.payload, bytes)
                    topic = str(message.topic).removeprefix(TOPICS.gate + "/")
                    seen.setdefault(topic, []).append(json.loads(message.payload))
                    if {"decision", "epcis", "reads", "health", "alarm"} <= seen.keys():
                        break
            simulator.clear()
        finally:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await process.wait()

    [decision] = seen["decision"]
    [document] = seen["epcis"]
    body = document["epcisBody"]
    assert isinstance(body, dict)
    [event] = body["eventList"]
    assert event["edgegate:decisionEventID"] == decision["event_id"]
    assert event["edgegate:passageID"] == decision["passage_id"]
    assert event["epcList"] == ["urn:epc:id:sgtin:0614141.812345.6789"]
    assert (event["bizStep"], event["disposition"]) == ("arriving", "non_conformant")
    assert event["readPoint"] == {"id": READ_POINT}
    assert str(event["eventID"]).startswith("ni:///sha-256;")
    assert {"type": "tag", "reader": "rfid-1", "epc": ITEM}.items() <= seen["reads"][0].items()
    health = seen["health"][-1]
    readers = health["readers"]
    assert isinstance(readers, list)
    assert readers[0]["name"] == "rfid-1"
    # No whitelist was ever loaded: the gate says so, once.
    assert [a["kind"] for a in seen["alarm"]] == ["whitelist_stale"]
