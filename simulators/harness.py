"""The fault harness: ``edgegate run`` as a process, a stream of passages, a back office that
counts what arrives, and the outbox read from disk — shared by tests/faults and
``python -m bench reliability``.

Owns the gate's config for these runs (:func:`write_config`) and its whitelist
(:func:`import_whitelist`), :class:`Gate` (the daemon as a
process that can be SIGKILLed and started again), :class:`Passages` (pallets past an R2000
simulator, one new EPC each), :class:`Receiver` (the back office's receiving end: every
durable event the gate publishes, its acks with ``mqtt.ack = "app"``, and the latest
heartbeat), :class:`Cable` (a reader's pty behind a stable link that can be unplugged and
plugged in again, any number of times) and the counting (:func:`settle`, :class:`Counts`).

Counting: *decided* is the daemon's own decision counter in ``outbox.db`` (the ``seq`` of
its last decision — ``seq`` only grows, so decisions are exactly 1..decided); *received* are
distinct decisions at the back office (by ``event_id``); *duplicates* are redeliveries;
*lost* are seqs in 1..decided that never arrived. Nothing here is assumed: every count is
read from the outbox file, a message that arrived, or the daemon's own log.

Invariants: every wait is bounded; a :class:`Gate` left running is killed by
:meth:`Gate.reap`; a :class:`Cable` removes its link directory however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt

from edgegate.localbroker import LocalBroker
from edgegate.mqtt.topics import Topics
from simulators.endpoints import Changes, PtyEndpoint
from simulators.faults import Conversation, stable_link
from simulators.r2000 import R2000Simulator

SITE, GATE = "HAK-CBZ", "FLT01"
TOPICS = Topics("edgegate/v1", SITE, GATE)
SETTLE_S = 60.0
ACK_TIMEOUT_S = 1.0
PALLET_S = 0.25
"""How long a pallet's tag stays in the field."""
GAP_S = 0.3
"""Pause between pallets: longer than stable_set_ms, so each pallet is a passage of its own."""


def write_config(
    path: Path,
    state_dir: Path,
    broker: LocalBroker,
    port: str,
    *,
    ack: str = "puback",
    trusted_keys: Sequence[str] = (),
    operator_keys: Mapping[str, str] | None = None,
    gate_io: str | None = None,
) -> None:
    """A portal with one R2000 on ``port`` (and a gate I/O module on ``gate_io``); quick
    passages; inspection off, so a known item passes and anything else holds."""
    keys = ", ".join(f'"{key}"' for key in trusted_keys)
    operators = ", ".join(f'"{name}" = "{key}"' for name, key in (operator_keys or {}).items())
    io = (
        f'\n[[readers]]\nname = "io-1"\nkind = "gate-io"\nurl = "{gate_io}"\npoll_ms = 50\n'
        if gate_io
        else ""
    )
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

[whitelist]
trusted_keys = [{keys}]

[commands]
operator_keys = {{ {operators} }}

[inspection]
enabled = false

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
{io}""",
        encoding="utf-8",
    )


async def import_whitelist(bundle: Path, config: Path) -> None:
    """``edgegate whitelist import`` of ``bundle`` as its own process, as an operator runs it."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgegate",
        *("whitelist", "import", str(bundle), "--config", str(config), "--no-progress"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"whitelist import failed: {out.decode().strip()}")


class Gate:
    """``edgegate run`` as a process that can be killed and started again."""

    def __init__(self, config: Path, state_dir: Path, log: Path) -> None:
        self.config = config
        self._outbox = state_dir / "outbox.db"
        self._log = log
        self._process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int:
        """The running daemon's process id (for /proc: its CPU time and memory)."""
        return self._running().pid

    async def start(self) -> None:
        with self._log.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edgegate",
                "run",
                "--config",
                str(self.config),
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
        if self.running:
            await self.kill()

    def _running(self) -> asyncio.subprocess.Process:
        if self._process is None or self._process.returncode is not None:
            raise RuntimeError("the gate is not running")
        return self._process

    def logged(self, event: str) -> int:
        """How many times the daemon logged ``event`` (JSON lines) across all its runs."""
        if not self._log.exists():
            return 0
        return self._log.read_text(encoding="utf-8", errors="replace").count(f'"event": "{event}"')

    def records(self, event: str) -> list[dict[str, object]]:
        """Every JSON log record of ``event`` across all the daemon's runs, in order."""
        if not self._log.exists():
            return []
        found = []
        for line in self._log.read_text(encoding="utf-8", errors="replace").splitlines():
            if f'"event": "{event}"' not in line:
                continue
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == event:
                    found.append(record)
        return found

    async def logs(self, event: str, times: int, timeout_s: float = 30) -> None:
        """Wait (bounded) until ``event`` has been logged ``times`` times in all."""
        async with asyncio.timeout(timeout_s):
            await poll(lambda: self.logged(event) >= times, 0.05)

    def outbox(self) -> tuple[int, int]:
        """(decided, depth) from ``outbox.db``, read beside the running daemon (WAL)."""
        if not self._outbox.exists():
            return 0, 0
        with contextlib.closing(sqlite3.connect(f"file:{self._outbox}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT value FROM counters WHERE name = 'decision'").fetchone()
            depth = db.execute("SELECT count(*) FROM outbox WHERE topic = ?", (TOPICS.decision,))
            return (0 if row is None else int(row[0])), int(depth.fetchone()[0])


def pallet_epc(n: int, prefix: str = "E280") -> str:
    """The EPC of pallet ``n`` (from 1) of a :class:`Passages` stream with ``prefix``."""
    return f"{prefix}{n:0{24 - len(prefix)}X}"


class Passages:
    """Pallets past the antenna, one new EPC each, until stopped."""

    def __init__(self, simulator: R2000Simulator, prefix: str = "E280") -> None:
        self._simulator = simulator
        self._prefix = prefix
        self.driven = 0
        self.sent: set[str] = set()

    async def run(self) -> None:
        while True:
            self.driven += 1
            epc = pallet_epc(self.driven, self._prefix)
            self.sent.add(epc)
            self._simulator.add_tag(epc, antenna_port=1, rssi_dbm=-55)
            await asyncio.sleep(PALLET_S)
            self._simulator.clear()
            await asyncio.sleep(GAP_S)


Payload = dict[str, object]


@dataclass
class Receiver:
    """The back office's receiving end, through every broker outage.

    Subscribes (persistent session) to the gate's decisions, alarms, audit events and
    command replies at QoS 1 and to its heartbeat; keeps the first arrival of every event
    (by ``event_id``; replies, which carry none, all of them) and the latest heartbeat.
    With ``ack`` it names every event it received on ``G/ack`` (``mqtt.ack = "app"``).
    """

    broker: LocalBroker
    ack: bool = False
    seqs: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    decisions: list[Payload] = field(default_factory=list)
    alarms: list[Payload] = field(default_factory=list)
    audits: list[Payload] = field(default_factory=list)
    replies: list[Payload] = field(default_factory=list)
    health: Payload | None = None
    heartbeats: int = 0
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    _seen: set[str] = field(default_factory=set)
    _changes: Changes = field(default_factory=Changes)

    async def run(self) -> None:
        durable = (TOPICS.decision, TOPICS.alarm, TOPICS.audit, TOPICS.cmd_reply)
        while True:
            client = aiomqtt.Client(
                self.broker.host, self.broker.port, identifier="back-office", clean_session=False
            )
            try:
                async with client:
                    await client.subscribe([(topic, 1) for topic in durable])
                    await client.subscribe(TOPICS.health, qos=0)
                    self.subscribed.set()
                    async for message in client.messages:
                        if isinstance(message.payload, bytes):
                            await self._receive(client, str(message.topic), message.payload)
            except aiomqtt.MqttError:
                self.subscribed.clear()
                _forget_disconnection(client)
                await asyncio.sleep(0.1)

    async def _receive(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        event: Payload = json.loads(payload)
        if topic == TOPICS.health:
            self.health = event
            self.heartbeats += 1
        elif topic == TOPICS.cmd_reply:
            self.replies.append(event)
        else:
            event_id = str(event["event_id"])
            if event_id in self._seen:
                self.duplicates += topic == TOPICS.decision
            else:
                self._seen.add(event_id)
                self._keep(topic, event_id, event)
            if self.ack:
                # A broker that died under the ack never answers it: give up soon, reconnect.
                ack = json.dumps({"event_ids": [event_id]})
                await client.publish(TOPICS.ack, ack, qos=1, timeout=ACK_TIMEOUT_S)
        self._changes.notify()

    def _keep(self, topic: str, event_id: str, event: Payload) -> None:
        if topic == TOPICS.decision:
            seq = event["seq"]
            if not isinstance(seq, int):
                raise ValueError(f"decision {event_id} has no integer seq")
            self.seqs[event_id] = seq
            self.decisions.append(event)
        elif topic == TOPICS.alarm:
            self.alarms.append(event)
        else:
            self.audits.append(event)

    async def until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Wait (bounded) until ``condition()`` holds after some arrival; whether it did."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._changes.until(condition)
        except TimeoutError:
            return False
        return True

    def alarms_of(self, kind: str) -> list[Payload]:
        return [alarm for alarm in self.alarms if alarm.get("kind") == kind]

    @property
    def last_seq(self) -> int:
        return max(self.seqs.values(), default=0)

    def missing(self, decided: int) -> list[int]:
        return sorted(set(range(1, decided + 1)) - set(self.seqs.values()))


def _forget_disconnection(client: aiomqtt.Client) -> None:
    """Retrieve the error of a connection that ended while a publish was awaiting its ack.

    aiomqtt 2.x stores an unexpected disconnection in a future that only the message
    iterator reads; when a publish times out first, nothing does, and asyncio logs "Future
    exception was never retrieved" when the client is collected.
    """
    disconnected = getattr(client, "_disconnected", None)
    if (
        isinstance(disconnected, asyncio.Future)
        and disconnected.done()
        and not disconnected.cancelled()
    ):
        disconnected.exception()


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


async def settle(gate: Gate, receiver: Receiver, timeout_s: float = SETTLE_S) -> Counts:
    """Wait (bounded) until every decision made so far has arrived; return the counts.

    Call it once no passage is open any more (the stream stopped a moment ago).
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await poll(lambda: not receiver.missing(gate.outbox()[0]), 0.1)
    decided = gate.outbox()[0]
    return Counts(
        decided=decided,
        received=len(receiver.seqs),
        duplicates=receiver.duplicates,
        lost=len(receiver.missing(decided)),
    )


async def poll(condition: Callable[[], bool], every_s: float) -> None:
    """Return once ``condition()`` holds, looking every ``every_s`` (bound it by a timeout)."""
    # What is watched (the daemon's log, its outbox file) belongs to another process and
    # offers nothing to await.
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(every_s)


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


class Cable:
    """A device on a pty behind a stable link, unplugged and plugged in again at will.

    Unlike :class:`simulators.faults.Replugging` (one unplug at a planned time), a test
    drives it: :meth:`unplug` closes the pty and removes the link (the host reads EIO, and
    reopening fails with ENOENT); :meth:`plug` serves a new pty behind the same link.
    ``plugs`` counts the ptys served. Run :meth:`run` as a task; it starts plugged in.
    """

    def __init__(self, converse: Conversation) -> None:
        self._converse = converse
        self._link = stable_link()
        self._plugged = asyncio.Event()
        self._plugged.set()
        self._scope: asyncio.Timeout | None = None
        self.plugs = 0

    @property
    def url(self) -> str:
        return str(self._link)

    async def run(self) -> None:
        try:
            while True:
                await self._plugged.wait()
                endpoint = PtyEndpoint(self._converse, self._link)
                self.plugs += 1
                # Unplugging expires this scope: the endpoint's run is cancelled, which
                # closes its pty and removes the link.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None) as scope:
                        self._scope = scope
                        await endpoint.run()
                self._scope = None
        finally:
            shutil.rmtree(self._link.parent, ignore_errors=True)

    def unplug(self) -> None:
        self._plugged.clear()
        if self._scope is not None:
            self._scope.reschedule(asyncio.get_running_loop().time())

    def plug(self) -> None:
        self._plugged.set()
