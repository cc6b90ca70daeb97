"""The fault-test harness: the daemon as a process, a stream of passages, a back office that
counts what arrives, and the outbox read from disk.

Counting: *decided* is the daemon's own decision counter in ``outbox.db`` (the ``seq`` of
its last decision — ``seq`` only grows, so decisions are exactly 1..decided); *received* are
distinct decisions at the back office (by ``event_id``); *duplicates* are redeliveries;
*lost* are seqs in 1..decided that never arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt

from edgegate.localbroker import LocalBroker
from edgegate.mqtt.topics import Topics
from simulators.r2000 import R2000Simulator

SITE, GATE = "HAK-CBZ", "FLT01"
TOPICS = Topics("edgegate/v1", SITE, GATE)
SETTLE_S = 60.0
# A fault test that hangs fails within this, instead of stalling the suite.
TEST_BUDGET_S = 120.0


def write_config(
    path: Path, state_dir: Path, broker: LocalBroker, port: str, *, ack: str = "puback"
) -> None:
    """A portal with one R2000 on ``port``; quick passages; no whitelist (every passage
    is held), which does not matter here: what is decided must arrive."""
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
ack = "{ack}"

[storage]
state_dir = "{state_dir}"

[passage]
stable_set_ms = 200
depart_ms = 0

[health]
interval_s = 1

[outbox]
ack_timeout_s = 2
replay_rate_per_s = 0

[[readers]]
name = "rfid-1"
kind = "r2000"
url = "{port}"
antennas = [1]
""",
        encoding="utf-8",
    )


class Gate:
    """``edgegate run`` as a process that a test can kill and start again."""

    def __init__(self, config: Path, state_dir: Path, log: Path) -> None:
        self._config = config
        self._outbox = state_dir / "outbox.db"
        self._log = log
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self._log.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edgegate",
                "run",
                "--config",
                str(self._config),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    async def kill(self) -> None:
        """SIGKILL: no drain, no ``stopped`` status, whatever was in flight is cut."""
        process = self._running()
        process.kill()
        async with asyncio.timeout(30):
            await process.wait()

    async def stop(self) -> int:
        """SIGTERM and the exit code."""
        process = self._running()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            return await process.wait()

    async def reap(self) -> None:
        if self._process is not None and self._process.returncode is None:
            await self.kill()

    def _running(self) -> asyncio.subprocess.Process:
        assert self._process is not None, "gate never started"
        assert self._process.returncode is None, "gate not running"
        return self._process

    def logged(self, event: str) -> int:
        """How many times the daemon logged ``event`` (JSON lines) across all its runs."""
        if not self._log.exists():
            return 0
        return self._log.read_text(encoding="utf-8", errors="replace").count(f'"event": "{event}"')

    async def logs(self, event: str, times: int, timeout_s: float = 30) -> None:
        """Wait (bounded) until ``event`` has been logged ``times`` times in all."""
        async with asyncio.timeout(timeout_s):
            while self.logged(event) < times:
                await asyncio.sleep(0.05)

    def outbox(self) -> tuple[int, int]:
        """(decided, depth) from ``outbox.db``, read beside the running daemon (WAL)."""
        if not self._outbox.exists():
            return 0, 0
        with contextlib.closing(sqlite3.connect(f"file:{self._outbox}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT value FROM counters WHERE name = 'decision'").fetchone()
            depth = db.execute("SELECT count(*) FROM outbox WHERE topic = ?", (TOPICS.decision,))
            return (0 if row is None else int(row[0])), int(depth.fetchone()[0])


class Passages:
    """Pallets past the antenna, one new EPC each, until stopped."""

    def __init__(self, simulator: R2000Simulator) -> None:
        self._simulator = simulator
        self.driven = 0

    async def run(self) -> None:
        while True:
            self.driven += 1
            self._simulator.add_tag(f"E280{self.driven:020X}", antenna_port=1, rssi_dbm=-55)
            await asyncio.sleep(0.25)
            self._simulator.clear()
            # Longer than stable_set_ms: the next pallet is a passage of its own.
            await asyncio.sleep(0.3)


@dataclass
class BackOffice:
    """Subscribes to ``G/decision`` through every broker outage; acks when ``ack`` is set."""

    broker: LocalBroker
    ack: bool = False
    seqs: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    identifier="back-office",
                    clean_session=False,
                ) as client:
                    await client.subscribe(TOPICS.decision, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        await self._receive(client, json.loads(message.payload))
            except aiomqtt.MqttError:
                self.subscribed.clear()
                await asyncio.sleep(0.1)

    async def _receive(self, client: aiomqtt.Client, event: dict[str, object]) -> None:
        event_id = str(event["event_id"])
        if event_id in self.seqs:
            self.duplicates += 1
        else:
            seq = event["seq"]
            assert isinstance(seq, int)
            self.seqs[event_id] = seq
        if self.ack:
            await client.publish(TOPICS.ack, json.dumps({"event_ids": [event_id]}), qos=1)

    def missing(self, decided: int) -> list[int]:
        return sorted(set(range(1, decided + 1)) - set(self.seqs.values()))


@dataclass(frozen=True)
class Counts:
    decided: int
    received: int
    duplicates: int
    lost: int

    def __str__(self) -> str:
        return (
            f"decided={self.decided} received={self.received} "
            f"duplicates={self.duplicates} lost={self.lost}"
        )


async def settle(gate: Gate, back_office: BackOffice) -> Counts:
    """Wait (bounded) until every decision made so far has arrived; print and return counts.

    Call it once no passage is open any more (the stream stopped a moment ago).
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SETTLE_S):
            while back_office.missing(gate.outbox()[0]):
                await asyncio.sleep(0.1)
    decided = gate.outbox()[0]
    counts = Counts(
        decided=decided,
        received=len(back_office.seqs),
        duplicates=back_office.duplicates,
        lost=len(back_office.missing(decided)),
    )
    print(f"counts: {counts}")
    return counts


async def cancel_until_done(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it, cancelling again if a cancel was swallowed.

    aiomqtt awaits through ``asyncio.wait_for``, which on Python 3.11 can lose a cancel that
    arrives as the awaited call completes (CPython gh-86296); the back office would then
    reconnect and wait for messages for ever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)


async def stop_passages(stream: asyncio.Task[None]) -> None:
    stream.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stream
    # Long enough for the last pallet's passage to close (stable_set_ms) and be decided.
    await asyncio.sleep(1.0)
