"""The daemon dies (SIGKILL) or restarts under a stream of passages; not one decision may be
lost: what was committed to the outbox is published after the restart.

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


async def test_a_daemon_killed_at_random_moments_loses_no_decision(
    fresh_broker: LocalBroker,
    reader: tuple[R2000Simulator, PtyEndpoint],
    files: GateFiles,
) -> None:
    simulator, endpoint = reader
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    write_config(files.config, files.state_dir, fresh_broker, endpoint.path)
    gate = Gate(files.config, files.state_dir, files.log)
    back_office = Receiver(fresh_broker)
    kills = 3
    try:
        async with asyncio.timeout(TEST_BUDGET_S), asyncio.TaskGroup() as group:
            office = group.create_task(back_office.run())
            await back_office.subscribed.wait()
            stream = group.create_task(Passages(simulator).run())
            for run in range(1, kills + 1):
                await gate.start()
                await gate.logs("daemon.ready", run)
                # Up and deciding: die at any moment of it, mid-commit or mid-publish.
                await asyncio.sleep(rng.uniform(0.3, 2.0))
                await gate.kill()
            await gate.start()
            await asyncio.sleep(1.5)
            await stop_passages(stream)
            counts = await settle(gate, back_office)
            print(f"counts: {counts}")
            await cancel_until_done(office)
        assert await gate.stop() == 0
    finally:
        await gate.reap()
    report = f"{counts} seed={seed}"
    assert counts.lost == 0, report
    assert counts.decided >= 3, report


async def test_the_outbox_survives_stops_and_kills_while_the_broker_is_away(
    fresh_broker: LocalBroker,
    reader: tuple[R2000Simulator, PtyEndpoint],
    files: GateFiles,
) -> None:
    simulator, endpoint = reader
    write_config(files.config, files.state_dir, fresh_broker, endpoint.path)
    gate = Gate(files.config, files.state_dir, files.log)
    back_office = Receiver(fresh_broker)
    try:
        async with asyncio.timeout(TEST_BUDGET_S), asyncio.TaskGroup() as group:
            await gate.start()
            fresh_broker.stop()
            stream = group.create_task(Passages(simulator).run())
            await asyncio.sleep(2.5)
            # A clean stop with nowhere to publish: the decisions stay in the outbox.
            assert await gate.stop() == 0
            after_stop = gate.outbox()
            await gate.start()
            await asyncio.sleep(2.5)
            await stop_passages(stream)
            await gate.kill()
            after_kill = gate.outbox()
            fresh_broker.start()
            office = group.create_task(back_office.run())
            await back_office.subscribed.wait()
            await gate.start()
            counts = await settle(gate, back_office)
            print(f"counts: {counts}")
            await cancel_until_done(office)
        assert await gate.stop() == 0
    finally:
        await gate.reap()
    report = f"{counts} outbox after stop={after_stop} after kill={after_kill}"
    # (decided, depth): nothing was published while the broker was away.
    assert after_stop[0] > 0, report
    assert after_stop[0] == after_stop[1], report
    assert after_kill[0] > after_stop[0], report
    assert after_kill[0] == after_kill[1], report
    assert counts.lost == 0, report
    assert counts.decided == after_kill[0], report
    assert gate.outbox()[1] == 0, report
