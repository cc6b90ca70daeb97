"""`edgegate run` as a real process: simulator bytes -> pty -> daemon -> outbox -> mosquitto.

Nothing is mocked: the R2000 simulator speaks the wire protocol on a pseudo-terminal that the
daemon opens as its serial port, the whitelist is imported with `edgegate whitelist import`,
and the test reads the decisions as any back-office subscriber would.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiomqtt
import pytest

from edgegate.localbroker import LocalBroker
from simulators.endpoints import PtyEndpoint
from simulators.r2000 import R2000Simulator

from .support import (
    GATE,
    KNOWN,
    SITE,
    STRANGER,
    TOPICS,
    WAIT_S,
    edgegate,
    next_json,
    pass_pallet,
    status,
    write_bundle,
    write_config,
)

pytestmark = pytest.mark.system


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
