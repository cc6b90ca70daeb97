"""The durable outbox and the publisher against the ceilings they sit under.

Measures, each beside its ceiling from the same run:

- durable appends: ``AsyncOutbox.append`` of a decision event (commit + fsync, on the outbox
  thread) and the synchronous core ``Outbox.append``, beside raw ``sqlite3`` INSERT+COMMIT
  with the same pragmas (WAL, ``synchronous=FULL``) — the fsync-bound ceiling, in events/s;
- end to end: decisions committed one by one (durable) while the publisher drains them
  through mosquitto to a subscriber, beside a bare aiomqtt QoS 1 publish loop (same window,
  same payloads, same broker, same subscriber) — in decisions/s received;
- replay: a backlog of 100,000 decisions in the outbox, published at an unlimited replay
  rate until the subscriber has them all and the outbox is empty, beside the bare loop.

Run: ``python -m bench.outbox`` (prints a table, writes bench/results/outbox.json).
Needs mosquitto (as the test suite does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiomqtt

from edgegate.localbroker import LocalBroker
from edgegate.logs import configure_logging
from edgegate.mqtt.asyncapi import CHANNELS
from edgegate.mqtt.outbox import AsyncOutbox, NewEvent, Outbox, OutboxLimits
from edgegate.mqtt.publisher import Publisher, PublisherSettings
from edgegate.mqtt.topics import Topics

APPENDS = 2_000
LIVE = 3_000
BARE = 20_000
BACKLOG = 100_000
FILL_BATCH = 1_000
WINDOW = 64
RECEIVE_TIMEOUT_S = 600
RESULTS = Path(__file__).parent / "results" / "outbox.json"
TOPICS = Topics("edgegate/v1", "BENCH", "G01")
# A real decision event (docs/mqtt.md), about 1 KiB: the payload every row carries.
PAYLOAD = next(
    json.dumps(c.example.model_dump(by_alias=True), ensure_ascii=False).encode()  # type: ignore[union-attr]
    for c in CHANNELS
    if c.name == "decision"
)


@dataclass(frozen=True, slots=True)
class Row:
    bench: str
    what: str
    events: int
    per_s: float
    ceiling: str
    ceiling_per_s: float

    @property
    def of_ceiling(self) -> float:
        return self.per_s / self.ceiling_per_s


def event(n: int) -> NewEvent:
    return NewEvent(TOPICS.decision, f"bench-{n}", lambda _seq: PAYLOAD, "decision")


# ------------------------------------------------------------------------- durable appends


def raw_sqlite_rate(path: Path) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE, "
        "topic TEXT, payload BLOB, qos INTEGER, created_at REAL)"
    )
    started = time.perf_counter()
    for n in range(APPENDS):
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO t(event_id, topic, payload, qos, created_at) VALUES (?, ?, ?, 1, ?)",
            (f"raw-{n}", TOPICS.decision, PAYLOAD, time.time()),
        )
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return APPENDS / elapsed


def sync_append_rate(path: Path) -> float:
    box = Outbox.open(path)
    started = time.perf_counter()
    for n in range(APPENDS):
        box.append_all([event(n)])
    elapsed = time.perf_counter() - started
    box.close()
    return APPENDS / elapsed


async def async_append_rate(path: Path) -> float:
    box = await AsyncOutbox.open(path)
    started = time.perf_counter()
    for n in range(APPENDS):
        await box.append_all([event(n)])
    elapsed = time.perf_counter() - started
    await box.close()
    return APPENDS / elapsed


# ------------------------------------------------------------------------- broker figures


class Subscriber:
    """Counts what arrives on the decision topic; ``until(n)`` waits for n in all."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self.received = 0
        self._changed = asyncio.Event()

    async def run(self) -> None:
        async for _ in self._client.messages:
            self.received += 1
            self._changed.set()

    async def until(self, total: int) -> None:
        # Bounded: a message the broker dropped would otherwise stall the bench for good.
        async with asyncio.timeout(RECEIVE_TIMEOUT_S):
            while self.received < total:
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def subscriber(broker: LocalBroker) -> AsyncIterator[Subscriber]:
    async with aiomqtt.Client(broker.host, broker.port, max_inflight_messages=WINDOW) as client:
        await client.subscribe(TOPICS.decision, qos=1)
        sub = Subscriber(client)
        task = asyncio.create_task(sub.run())
        try:
            yield sub
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def bare_rate(broker: LocalBroker, sub: Subscriber) -> float:
    """aiomqtt QoS 1 with WINDOW publishes in flight: the most a publisher can get out."""
    async with aiomqtt.Client(broker.host, broker.port, max_inflight_messages=WINDOW) as client:
        client.pending_calls_threshold = WINDOW + 2
        window = asyncio.Semaphore(WINDOW)

        async def publish() -> None:
            try:
                await client.publish(TOPICS.decision, PAYLOAD, qos=1)
            finally:
                window.release()

        target = sub.received + BARE
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(BARE):
                await window.acquire()
                group.create_task(publish())
        await sub.until(target)
        return BARE / (time.perf_counter() - started)


async def with_publisher(
    broker: LocalBroker, outbox: AsyncOutbox, work: Callable[[], Awaitable[None]]
) -> None:
    settings = PublisherSettings(
        host=broker.host, port=broker.port, client_id="bench-gate", window=WINDOW
    )
    pub = Publisher(settings, TOPICS, outbox, version="bench", whitelist_seq=lambda: None)
    async with asyncio.TaskGroup() as group:
        group.create_task(pub.run())
        await work()
        pub.shutdown()


async def live_rate(broker: LocalBroker, sub: Subscriber, directory: Path) -> float:
    """Each decision committed (fsync) and published while the next is being committed."""
    outbox = await AsyncOutbox.open(directory / "live.db")
    target = sub.received + LIVE
    elapsed = 0.0

    async def work() -> None:
        nonlocal elapsed
        started = time.perf_counter()
        for n in range(LIVE):
            await outbox.append_all([event(n)])
        await sub.until(target)
        elapsed = time.perf_counter() - started

    await with_publisher(broker, outbox, work)
    await outbox.close()
    return LIVE / elapsed


async def replay_rate(broker: LocalBroker, sub: Subscriber, directory: Path) -> float:
    """A 100,000-event backlog drained at an unlimited replay rate."""
    path = directory / "backlog.db"
    box = Outbox.open(path, limits=OutboxLimits(max_rows=BACKLOG * 2))
    for start in range(0, BACKLOG, FILL_BATCH):
        box.append_all([event(n) for n in range(start, start + FILL_BATCH)])
    box.close()
    outbox = await AsyncOutbox.open(path, limits=OutboxLimits(max_rows=BACKLOG * 2))
    target = sub.received + BACKLOG
    elapsed = 0.0

    async def work() -> None:
        nonlocal elapsed
        started = time.perf_counter()
        await sub.until(target)
        elapsed = time.perf_counter() - started

    await with_publisher(broker, outbox, work)
    # The publisher retires what was acknowledged before it returns: nothing may be left.
    left = (await outbox.stats()).depth
    await outbox.close()
    if left:
        raise RuntimeError(f"{left} backlog rows still in the outbox after the replay")
    return BACKLOG / elapsed


async def broker_rows(directory: Path) -> list[Row]:
    # mosquitto queues at most 1000 QoS 1 messages for a subscriber that falls behind and
    # drops the rest; a bench that counts every message needs the queue unbounded.
    with LocalBroker(options=["max_queued_messages 0"]) as broker:
        async with subscriber(broker) as sub:
            before = await bare_rate(broker, sub)
            live = await live_rate(broker, sub, directory)
            replay = await replay_rate(broker, sub, directory)
            after = await bare_rate(broker, sub)
    # Measured before and after, the better taken: the ceiling is never flattered low.
    bare = max(before, after)
    ceiling = f"bare aiomqtt QoS 1, window {WINDOW}"
    return [
        Row("end to end", "commit + publish + receive", LIVE, live, ceiling, bare),
        Row("replay", f"{BACKLOG:,}-event backlog", BACKLOG, replay, ceiling, bare),
    ]


def main() -> None:
    configure_logging("warning", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="edgegate-bench-") as tmp:
        directory = Path(tmp)
        raw = raw_sqlite_rate(directory / "raw.db")
        rows = [
            Row(
                "durable append",
                "Outbox.append (sync core)",
                APPENDS,
                sync_append_rate(directory / "sync.db"),
                "raw sqlite3 WAL+FULL",
                raw,
            ),
            Row(
                "durable append",
                "AsyncOutbox.append",
                APPENDS,
                asyncio.run(async_append_rate(directory / "async.db")),
                "raw sqlite3 WAL+FULL",
                raw,
            ),
            *asyncio.run(broker_rows(directory)),
        ]
    header = (
        f"{'bench':<15} {'what':<28} {'events':>7} {'per s':>9}  {'ceiling':<30}"
        f" {'per s':>9} {'of ceiling':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.bench:<15} {row.what:<28} {row.events:>7,} {row.per_s:>9,.0f}  "
            f"{row.ceiling:<30} {row.ceiling_per_s:>9,.0f} {row.of_ceiling:>9.0%}"
        )
    durable = next(r.per_s for r in rows if r.what == "AsyncOutbox.append")
    live = next(r.per_s for r in rows if r.bench == "end to end")
    # The bare loop stores nothing; a decision is on disk (one fsync) before it is published.
    bound = f"end to end = {live / durable:.0%} of AsyncOutbox.append, its fsync-bound ceiling"
    print(bound)
    print(f"payload: a {len(PAYLOAD)}-byte decision event; broker: mosquitto on loopback")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "bench": "outbox",
                "python": platform.python_version(),
                "machine": platform.machine(),
                "payload_bytes": len(PAYLOAD),
                "window": WINDOW,
                "end_to_end_of_durable_append": round(live / durable, 3),
                "rows": [asdict(row) | {"of_ceiling": round(row.of_ceiling, 3)} for row in rows],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
