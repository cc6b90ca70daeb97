"""The broker fails under a stream of passages; not one decision may be lost.

Real mosquitto, the daemon as a process, the R2000 simulator on a pty driving passages, and a
back office that counts what arrives (simulators/harness.py). Every test prints its counts.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from edgegate.localbroker import LocalBroker
from simulators.endpoints import PtyEndpoint
from simulators.harness import (
    Gate,
    Passages,
    Receiver,
    cancel_until_done,
    settle,
    stop_passages,
    write_config,
)
from simulators.r2000 import R2000Simulator

from .conftest import TEST_BUDGET_S, GateFiles

pytestmark = pytest.mark.faults


async def test_a_broker_killed_and_restarted_during_passages_loses_no_decision(
    fresh_broker: LocalBroker,
    reader: tuple[R2000Simulator, PtyEndpoint],
    files: GateFiles,
) -> None:
    # SIGKILL loses whatever the broker held for its subscribers: only the back office's ack
    # (mqtt.ack = "app") closes that gap, so that is what this gate runs with.
    simulator, endpoint = reader
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    write_config(files.config, files.state_dir, fresh_broker, endpoint.path, ack="app")
    gate = Gate(files.config, files.state_dir, files.log)
    back_office = Receiver(fresh_broker, ack=True)
    kills = 3
    try:
        async with asyncio.timeout(TEST_BUDGET_S), asyncio.TaskGroup() as group:
            office = group.create_task(back_office.run())
            await gate.start()
            stream = group.create_task(Passages(simulator).run())
            for kill in range(kills):
                # Each kill hits a live connection: the gate is (re)connected first.
                await gate.logs("mqtt.connected", kill + 1)
                await asyncio.sleep(rng.uniform(0.5, 1.5))
                fresh_broker.kill()
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                fresh_broker.start()
            await asyncio.sleep(1.0)
            await stop_passages(stream)
            counts = await settle(gate, back_office)
            print(f"counts: {counts}")
            await cancel_until_done(office)
        assert await gate.stop() == 0
    finally:
        await gate.reap()
    report = f"{counts} seed={seed} connects={gate.logged('mqtt.connected')}"
    assert counts.lost == 0, report
    assert counts.decided >= 5, report
    assert gate.logged("mqtt.connected") >= kills + 1, report


async def test_a_frozen_broker_is_detected_and_the_gate_recovers_when_it_thaws(
    fresh_broker: LocalBroker,
    reader: tuple[R2000Simulator, PtyEndpoint],
    files: GateFiles,
) -> None:
    # SIGSTOP: the TCP connection stays up and nothing answers — a half-open link that only
    # the MQTT keepalive (5 s here) or a PUBACK timeout can reveal.
    simulator, endpoint = reader
    write_config(files.config, files.state_dir, fresh_broker, endpoint.path)
    gate = Gate(files.config, files.state_dir, files.log)
    back_office = Receiver(fresh_broker)
    try:
        async with asyncio.timeout(TEST_BUDGET_S), asyncio.TaskGroup() as group:
            office = group.create_task(back_office.run())
            await gate.start()
            stream = group.create_task(Passages(simulator).run())
            async with asyncio.timeout(30):
                while len(back_office.seqs) < 2:
                    await asyncio.sleep(0.05)
            fresh_broker.pause()
            async with asyncio.timeout(45):
                while not gate.logged("mqtt.disconnected"):
                    await asyncio.sleep(0.1)
            frozen = gate.outbox()[1]
            fresh_broker.resume()
            await stop_passages(stream)
            counts = await settle(gate, back_office)
            print(f"counts: {counts}")
            await cancel_until_done(office)
        assert await gate.stop() == 0
    finally:
        await gate.reap()
    report = f"{counts} held_while_frozen={frozen} connects={gate.logged('mqtt.connected')}"
    assert counts.lost == 0, report
    assert frozen > 0, report
    assert gate.logged("mqtt.connected") >= 2, report
