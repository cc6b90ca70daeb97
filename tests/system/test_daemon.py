"""`edgegate run` as a real process: simulator bytes -> pty -> daemon -> outbox -> mosquitto.

Nothing is mocked: the R2000 simulator speaks the wire protocol on a pseudo-terminal that the
daemon opens as its serial port, the whitelist is imported with `edgegate whitelist import`,
and the test reads the decisions as any back-office subscriber would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest

from edgegate.localbroker import LocalBroker
from edgegate.mqtt.topics import Topics
from edgegate.whitelist.bundle import generate_keypair, load_private_key, sign_body
from simulators.r2000 import PtyEndpoint, R2000Simulator

pytestmark = pytest.mark.system

SITE, GATE = "HAK-CBZ", "SYS01"
TOPICS = Topics("edgegate/v1", SITE, GATE)
KNOWN = ["3074257BF7194E4000001A85", "3074257BF7194E4000001A86"]
STRANGER = "E2003412DEADBEEF00000001"
WAIT_S = 30.0


def edgegate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgegate", *args], capture_output=True, text=True, timeout=60
    )


def write_bundle(path: Path) -> str:
    """A signed snapshot knowing the two KNOWN items; returns the trusted public key."""
    private_b64, public_b64 = generate_keypair()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    records = [
        {
            "type": "item",
            "epc": epc,
            "sku": "SKU-LANCOME-50ML",
            "owner": "91460000MA5T000001",
            "status": "bonded",
            "directions": ["in", "out"],
            "destinations": [],
        }
        for epc in KNOWN
    ]
    header = {
        "format": "edgegate.whitelist",
        "version": 1,
        "kind": "snapshot",
        "site": SITE,
        "seq": 3,
        "issued_at": now,
        "issuer": "system test",
        "count": len(records),
    }
    body = "\n".join(json.dumps(line) for line in [header, *records]).encode()
    path.write_bytes(sign_body(body, load_private_key(private_b64)))
    return public_b64


def write_config(path: Path, state_dir: Path, broker: LocalBroker, port: str, key: str) -> None:
    path.write_text(
        f"""
[gate]
site = "{SITE}"
gate_id = "{GATE}"
mode = "portal"
direction = "in"

[mqtt]
host = "{broker.host}"
port = {broker.port}
keepalive_s = 5

[storage]
state_dir = "{state_dir}"

[whitelist]
trusted_keys = ["{key}"]

[passage]
stable_set_ms = 500
depart_ms = 800

[[readers]]
name = "rfid-1"
kind = "r2000"
url = "{port}"
antennas = [1]
""",
        encoding="utf-8",
    )


@pytest.fixture
async def reader() -> AsyncIterator[tuple[R2000Simulator, PtyEndpoint]]:
    simulator = R2000Simulator()
    endpoint = simulator.open_pty()
    task = asyncio.create_task(endpoint.run(), name="r2000-simulator")
    yield simulator, endpoint
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def gate_config(
    tmp_path: Path, broker: LocalBroker, reader: tuple[R2000Simulator, PtyEndpoint]
) -> Path:
    state_dir = tmp_path / "state"
    key = write_bundle(tmp_path / "snapshot.bundle")
    config = tmp_path / "edgegate.toml"
    write_config(config, state_dir, broker, reader[1].path, key)
    imported = edgegate(
        "whitelist", "import", str(tmp_path / "snapshot.bundle"), "--config", str(config)
    )
    assert imported.returncode == 0, imported.stderr
    assert "seq 3" in imported.stdout
    return config


@pytest.fixture
async def daemon(gate_config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgegate",
        "run",
        "--config",
        str(gate_config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    yield process
    if process.returncode is None:
        process.kill()
        await process.wait()


async def next_json(messages: AsyncIterator[aiomqtt.Message], topic: str) -> dict[str, object]:
    async with asyncio.timeout(WAIT_S):
        async for message in messages:
            if str(message.topic) == topic:
                assert isinstance(message.payload, bytes)
                payload: dict[str, object] = json.loads(message.payload)
                return payload
    raise AssertionError("subscription ended")


async def status(messages: AsyncIterator[aiomqtt.Message], state: str) -> dict[str, object]:
    while True:
        payload = await next_json(messages, TOPICS.status)
        if payload["state"] == state:
            return payload


async def pass_pallet(simulator: R2000Simulator, epcs: list[str]) -> None:
    for epc in epcs:
        simulator.add_tag(epc, antenna_port=1, rssi_dbm=-54)
    # Long enough for several inventory rounds; the passage closes after stable_set_ms.
    await asyncio.sleep(0.6)
    simulator.clear()


async def test_a_pass_and_a_hold_travel_from_pty_bytes_to_the_broker(
    broker: LocalBroker,
    reader: tuple[R2000Simulator, PtyEndpoint],
    daemon: asyncio.subprocess.Process,
) -> None:
    simulator, _ = reader
    async with aiomqtt.Client(broker.host, broker.port) as sub:
        await sub.subscribe(f"{TOPICS.gate}/#", qos=1)
        messages = sub.messages
        online = await status(messages, "online")
        assert online["whitelist_seq"] == 3

        await pass_pallet(simulator, KNOWN)
        passed = await next_json(messages, TOPICS.decision)
        await asyncio.sleep(1.0)  # the pallet departs (depart_ms) before the next one
        await pass_pallet(simulator, [KNOWN[0], STRANGER])
        held = await next_json(messages, TOPICS.decision)

        daemon.send_signal(signal.SIGTERM)
        stopped = await status(messages, "stopped")
        async with asyncio.timeout(WAIT_S):
            assert await daemon.wait() == 0

    assert stopped["whitelist_seq"] == 3
    assert passed["schema"] == "edgegate.decision/1"
    assert passed["decision"] == "pass"
    assert passed["reasons"] == []
    assert (passed["site"], passed["gate"], passed["direction"]) == (SITE, GATE, "in")
    assert passed["whitelist_seq"] == 3
    assert sorted(t["epc"] for t in passed["tags"]) == KNOWN  # type: ignore[union-attr]
    for tag in passed["tags"]:  # type: ignore[union-attr]
        assert tag["sku"] == "SKU-LANCOME-50ML"
        assert tag["status"] == "bonded"
        assert tag["antennas"] == [1]
        assert tag["rssi_max"] == -54.0
        assert tag["reads"] >= 1
    for key in ("event_id", "passage_id", "opened_at", "closed_at", "decided_at"):
        assert isinstance(passed[key], str)
        assert passed[key]
    assert str(passed["opened_at"]) <= str(passed["closed_at"]) <= str(passed["decided_at"])

    assert held["decision"] == "hold"
    assert held["reasons"] == [{"code": "UNKNOWN_TAG", "epcs": [STRANGER]}]
    stranger = next(t for t in held["tags"] if t["epc"] == STRANGER)  # type: ignore[union-attr]
    assert (stranger["sku"], stranger["status"]) == (None, None)
    assert held["seq"] == passed["seq"] + 1  # type: ignore[operator]
    assert held["event_id"] != passed["event_id"]


async def test_a_killed_daemon_leaves_its_last_will_offline(
    broker: LocalBroker, daemon: asyncio.subprocess.Process
) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as sub:
        await sub.subscribe(TOPICS.status, qos=1)
        messages = sub.messages
        await status(messages, "online")
        daemon.kill()
        await daemon.wait()
        offline = await status(messages, "offline")
    assert offline["version"]


async def test_decisions_made_while_the_broker_is_down_are_delivered_later(
    reader: tuple[R2000Simulator, PtyEndpoint], tmp_path: Path
) -> None:
    simulator, endpoint = reader
    key = write_bundle(tmp_path / "snapshot.bundle")
    config = tmp_path / "edgegate.toml"
    with LocalBroker(persistence=True) as broker:
        write_config(config, tmp_path / "state", broker, endpoint.path, key)
        assert (
            edgegate(
                "whitelist", "import", str(tmp_path / "snapshot.bundle"), "--config", str(config)
            ).returncode
            == 0
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edgegate",
            "run",
            "--config",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        # A back office with a persistent session: the broker queues for it while it is away.
        back_office = {"identifier": "back-office", "clean_session": False}
        try:
            async with aiomqtt.Client(broker.host, broker.port, **back_office) as sub:
                await sub.subscribe(f"{TOPICS.gate}/#", qos=1)
                await status(sub.messages, "online")
            broker.stop()
            await pass_pallet(simulator, [STRANGER])
            await asyncio.sleep(1.0)  # decided and committed while the broker is gone
            broker.start()
            async with aiomqtt.Client(broker.host, broker.port, **back_office) as sub:
                held = await next_json(sub.messages, TOPICS.decision)
            assert held["decision"] == "hold"
            assert held["seq"] == 1
            assert held["reasons"] == [{"code": "UNKNOWN_TAG", "epcs": [STRANGER]}]
        finally:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(WAIT_S):
                await process.wait()
