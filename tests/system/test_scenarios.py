"""Every shipped scenario, replayed through the simulators into a daemon, checked at the coils.

The rig runs one simulator per device on a pseudo-terminal (readers, scanner, the Modbus gate
I/O module); the daemon opens them as serial ports, decides against a signed whitelist,
publishes to the real broker and drives the barrier coil over Modbus RTU. Each scenario's
[expect] table says what the gate must decide and whether the barrier may open.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from edgegate.app import Daemon
from edgegate.config import parse_config
from edgegate.localbroker import LocalBroker
from edgegate.mqtt.topics import Topics
from simulators.gateio import GateIoSimulator
from simulators.scenario import Rig, Scenario, load_scenario, play, shipped_scenarios

from .support import install_snapshot

pytestmark = pytest.mark.system

SITE = "HAK-CBZ"
OWNER = "91460000MA5T000001"
TRUCK, OTHER_TRUCK = "E20000000000000000001234", "E20000000000000000009999"
I1, I2, I3 = "3074257BF7194E4000001A85", "3074257BF7194E4000001A86", "3074257BF7194E4000001A87"
RELEASED = ["3074257BF7194E4000002C01", "3074257BF7194E4000002C02"]
DECISION_TIMEOUT_S = 30.0


def whitelist_records(now: datetime) -> list[dict[str, object]]:
    tomorrow = (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def item(epc: str, status: str = "bonded", tid: str | None = None) -> dict[str, object]:
        return {
            "type": "item",
            "epc": epc,
            "tid": tid,
            "sku": "SKU-LANCOME-50ML",
            "owner": OWNER,
            "status": status,
            "directions": ["in", "out"],
            "destinations": [],
        }

    def gate_pass(pass_no: str, pass_type: int, direction: str, qty: int) -> dict[str, object]:
        lines = [{"sku": "SKU-LANCOME-50ML", "qty": qty}] if qty else []
        return {
            "type": "pass",
            "pass_no": pass_no,
            "pass_type": pass_type,
            "direction": direction,
            "status": "approved",
            "vehicle_no": "琼A12345",
            "vehicle_tag": TRUCK,
            "owner": OWNER,
            "destination": None,
            "lines": lines,
            "valid_until": tomorrow,
        }

    return [
        item(I1, tid="E2801160200074CF085B0A9B"),
        item(I2, tid="E2801160200074CF085B0A9C"),
        item(I3),
        *(item(epc, status="released") for epc in RELEASED),
        {"type": "vehicle", "vehicle_tag": TRUCK, "vehicle_no": "琼A12345", "owner": OWNER},
        {"type": "vehicle", "vehicle_tag": OTHER_TRUCK, "vehicle_no": "琼B99999"},
        gate_pass("HP4601202611250001", 2, "in", 2),
        gate_pass("HP4601202611250006", 6, "out", 0),
        {"type": "enterprise", "owner": OWNER, "tier": "advanced", "blacklisted": False},
    ]


def install_whitelist(state_dir: Path) -> str:
    now = datetime.now(UTC)
    return install_snapshot(state_dir, whitelist_records(now), issued_at=now)


def daemon_config(
    scenario: Scenario, rig: Rig, broker: LocalBroker, state_dir: Path, key: str, gate_id: str
) -> dict[str, object]:
    readers = []
    for reader in rig.reader_configs():
        extra: dict[str, object] = {
            "r2000": {"antennas": [1, 2], "reply_timeout_s": 0.5},
            "thingmagic": {"read_tid": True, "on_time_ms": 250, "keepalive_timeout_s": 1.0},
            "gate-io": {"poll_ms": 20},
        }.get(str(reader["kind"]), {})
        readers.append({**reader, **extra})
    return {
        "gate": {
            "site": SITE,
            "gate_id": gate_id,
            "mode": scenario.mode,
            "direction": scenario.direction,
        },
        "mqtt": {"host": broker.host, "port": broker.port},
        "storage": {"state_dir": str(state_dir)},
        "whitelist": {"trusted_keys": [key]},
        "passage": {"stable_set_ms": 500, "pass_wait_ms": 1500, "depart_ms": 1000},
        "inspection": {"enabled": False},
        "readers": readers,
    }


async def watch_coils(io: GateIoSimulator, history: list[dict[str, bool]]) -> None:
    last: dict[str, bool] = {}
    while True:
        await io.until(lambda seen=last: io.coils() != seen)  # type: ignore[misc]
        last = io.coils()
        history.append(last)


async def first_decision(
    broker: LocalBroker, topics: Topics, ready: asyncio.Event
) -> AsyncIterator[dict[str, object]]:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(topics.decision, qos=1)
        ready.set()
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            yield json.loads(message.payload)


SCENARIOS = shipped_scenarios()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_shipped_scenario_is_decided_as_expected_at_the_coils(
    name: str, broker: LocalBroker, tmp_path: Path
) -> None:
    scenario = load_scenario(SCENARIOS[name])
    assert scenario.expect is not None
    state_dir = tmp_path / "state"
    key = install_whitelist(state_dir)
    topics = Topics("edgegate/v1", SITE, f"SC-{name}")
    coil_history: list[dict[str, bool]] = []
    async with Rig(scenario.devices) as rig:
        config = parse_config(
            daemon_config(scenario, rig, broker, state_dir, key, topics.gate_id), environ={}
        )
        daemon = Daemon(config)
        io = next(s for s in rig.simulators.values() if isinstance(s, GateIoSimulator))
        subscribed = asyncio.Event()
        decisions = first_decision(broker, topics, subscribed)
        async with asyncio.TaskGroup() as group:
            running = group.create_task(daemon.run(), name="daemon")
            watcher = group.create_task(watch_coils(io, coil_history), name="coils")
            reading = group.create_task(anext(decisions), name="subscriber")
            await subscribed.wait()
            await daemon.ready.wait()
            await play(scenario, rig)
            async with asyncio.timeout(DECISION_TIMEOUT_S):
                decision = await reading
                # The gate acts after the commit: wait for its outputs to settle.
                shown = ("green",) if decision["decision"] == "pass" else ("red", "buzzer")
                await io.until(lambda: any(all(state[c] for c in shown) for state in coil_history))
                if scenario.expect.barrier_opened:
                    await io.until_coils(barrier=False)
            daemon.request_stop()
            await running
            watcher.cancel()
        await decisions.aclose()

    reasons = tuple(reason["code"] for reason in decision["reasons"])
    assert (decision["decision"], reasons) == (scenario.expect.decision, scenario.expect.reasons)
    opened = any(state["barrier"] for state in coil_history)
    if scenario.mode == "barrier":
        assert opened is scenario.expect.barrier_opened, coil_history
    else:
        assert not opened  # a portal has no barrier to open
    if scenario.expect.decision == "hold":
        assert any(state["red"] and state["buzzer"] for state in coil_history)
