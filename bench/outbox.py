"""The durable outbox and the publisher against the ceilings they sit under.

Measures, each beside its ceiling from the same run:

- durable appends: the synchronous core ``Outbox.append`` and ``AsyncOutbox.append`` of a
  decision event, one caller committing one event at a time (commit + fsync each), beside
  raw ``sqlite3`` INSERT+COMMIT with the same pragmas (WAL, ``synchronous=FULL``) — the
  fsync-bound ceiling, in events/s; and ``AsyncOutbox.append`` from ``PRODUCERS``
  concurrent callers (group commit: each awaits its own durable commit, those queued while
  a commit is in flight share the next one) beside raw sqlite3 committing ``PRODUCERS``
  rows per transaction;
- end to end (the issue 8 figure): ``PRODUCERS`` concurrent producers each committing one
  decision (durable) and then the next, while the publisher drains them through mosquitto
  to a subscriber, beside a bare aiomqtt QoS 1 publish loop keeping ``WINDOW`` publishes
  in flight. Both sides: the same broker (one mosquitto on loopback, unbounded queue), the
  same subscriber (QoS 1, in this process), QoS 1, the same 1 KiB decision payload,
  ``PRODUCERS`` = ``WINDOW`` = 64 concurrent producers / publishes in flight; the bare loop
  is measured before and after and the better taken. In decisions/s received;
- end to end with one producer: decisions committed one by one, each publishing while the
  next commits, beside ``AsyncOutbox.append`` alone — its fsync-bound ceiling;
- replay: a backlog of 100,000 decisions in the outbox, published at an unlimited replay
  rate until the subscriber has them all and the outbox is empty, beside the bare loop.

Run: ``python -m bench outbox`` (prints a table, writes bench/results/outbox.json).
Needs mosquitto (as the test suite does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import aiomqtt

from bench import measured_at
from edgegate.localbroker import LocalBroker
from edgegate.logs import configure_logging
from edgegate.mqtt.asyncapi import CHANNELS
from edgegate.mqtt.outbox import AsyncOutbox, NewEvent, Outbox, OutboxLimits
from edgegate.mqtt.publisher import Publisher, PublisherSettings
from edgegate.mqtt.topics import Topics

FILL_BATCH = 1_000
WINDOW = 64
# Concurrent producers on the durable side: as many as the bare loop keeps in flight.
PRODUCERS = WINDOW
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
class Sizes:
    """How many events each figure is measured over."""

    appends: int = 2_000
    live: int = 20_000
    live_one_producer: int = 5_000
    bare: int = 20_000
    backlog: int = 100_000


QUICK = Sizes(appends=500, live=3_000, live_one_producer=1_000, bare=3_000, backlog=10_000)


@dataclass(frozen=True, slots=True)
class Row:
    bench: str
    what: str
    events: int
    per_s: float
    ceiling: str
    ceiling_per_s: float
    producers: int = 1

    @property
    def of_ceiling(self) -> float:
        return self.per_s / self.ceiling_per_s


def event(n: int) -> NewEvent:
    return NewEvent(TOPICS.decision, f"bench-{n}", lambda _seq: PAYLOAD, "decision")


# ------------------------------------------------------------------------- durable appends


def raw_sqlite_rate(path: Path, appends: int, per_commit: int = 1) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE, "
        "topic TEXT, payload BLOB, qos INTEGER, created_at REAL)"
    )
    started = time.perf_counter()
    for first in range(0, appends, per_commit):
        db.execute("BEGIN IMMEDIATE")
        for n in range(first, min(appends, first + per_commit)):
            db.execute(
                "INSERT INTO t(event_id, topic, payload, qos, created_at) VALUES (?, ?, ?, 1, ?)",
                (f"raw-{n}", TOPICS.decision, PAYLOAD, time.time()),
            )
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return appends / elapsed


def sync_append_rate(path: Path, appends: int) -> float:
    box = Outbox.open(path)
    started = time.perf_counter()
    for n in range(appends):
        box.append_all([event(n)])
    elapsed = time.perf_counter() - started
    box.close()
    return appends / elapsed


async def produce(outbox: AsyncOutbox, events: int, producers: int) -> None:
    """``events`` appends from ``producers`` tasks, each awaiting its own durable commit."""

    async def producer(first: int) -> None:
        for n in range(first, events, producers):
            await outbox.append_all([event(n)])

    async with asyncio.TaskGroup() as group:
        for first in range(producers):
            group.create_task(producer(first), name=f"producer-{first}")


async def async_append_rate(path: Path, appends: int, producers: int = 1) -> float:
    box = await AsyncOutbox.open(path)
    started = time.perf_counter()
    await produce(box, appends, producers)
    elapsed = time.perf_counter() - started
    await box.close()
    return appends / elapsed


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


async def bare_rate(broker: LocalBroker, sub: Subscriber, events: int) -> float:
    """aiomqtt QoS 1 with WINDOW publishes in flight: the most a publisher can get out."""
    async with aiomqtt.Client(broker.host, broker.port, max_inflight_messages=WINDOW) as client:
        client.pending_calls_threshold = WINDOW + 2
        window = asyncio.Semaphore(WINDOW)

        async def publish() -> None:
            try:
                await client.publish(TOPICS.decision, PAYLOAD, qos=1)
            finally:
                window.release()

        target = sub.received + events
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(events):
                await window.acquire()
                group.create_task(publish())
        await sub.until(target)
        return events / (time.perf_counter() - started)


async def with_publisher(
    broker: LocalBroker, outbox: AsyncOutbox, work: Callable[[], Awaitable[None]]
) -> None:
    settings = PublisherSettings(
        host=broker.host, port=broker.port, client_id="bench-gate", window=WINDOW
    )
    pub = Publisher(settings, TOPICS, outbox, version="bench", whitelist_seq=lambda: None)
    async with aiomqtt.Client(broker.host, broker.port) as watcher:
        await watcher.subscribe(TOPICS.status, qos=1)
        async with asyncio.TaskGroup() as group:
            group.create_task(pub.run())
            # Connected before the clock starts, as the bare loop's client is: the retained
            # status turns "online" (a previous run left "stopped").
            async with asyncio.timeout(RECEIVE_TIMEOUT_S):
                async for message in watcher.messages:
                    if json.loads(message.payload)["state"] == "online":
                        break
            await work()
            pub.shutdown()


async def live_rate(
    broker: LocalBroker, sub: Subscriber, directory: Path, events: int, producers: int
) -> float:
    """Decisions committed (fsync) by ``producers`` tasks and published as they commit."""
    outbox = await AsyncOutbox.open(directory / f"live-{producers}.db")
    target = sub.received + events
    elapsed = 0.0

    async def work() -> None:
        nonlocal elapsed
        started = time.perf_counter()
        await produce(outbox, events, producers)
        await sub.until(target)
        elapsed = time.perf_counter() - started

    await with_publisher(broker, outbox, work)
    await outbox.close()
    return events / elapsed


async def replay_rate(broker: LocalBroker, sub: Subscriber, directory: Path, backlog: int) -> float:
    """A backlog drained at an unlimited replay rate."""
    path = directory / "backlog.db"
    box = Outbox.open(path, limits=OutboxLimits(max_rows=backlog * 2))
    for start in range(0, backlog, FILL_BATCH):
        box.append_all([event(n) for n in range(start, min(backlog, start + FILL_BATCH))])
    box.close()
    outbox = await AsyncOutbox.open(path, limits=OutboxLimits(max_rows=backlog * 2))
    target = sub.received + backlog
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
    return backlog / elapsed


async def broker_rows(directory: Path, sizes: Sizes, durable: float) -> list[Row]:
    # mosquitto queues at most 1000 QoS 1 messages for a subscriber that falls behind and
    # drops the rest; a bench that counts every message needs the queue unbounded.
    with LocalBroker(options=["max_queued_messages 0"]) as broker:
        async with subscriber(broker) as sub:
            before = await bare_rate(broker, sub, sizes.bare)
            live = await live_rate(broker, sub, directory, sizes.live, PRODUCERS)
            single = await live_rate(broker, sub, directory, sizes.live_one_producer, 1)
            replay = await replay_rate(broker, sub, directory, sizes.backlog)
            after = await bare_rate(broker, sub, sizes.bare)
    # Measured before and after, the better taken: the ceiling is never flattered low.
    bare = max(before, after)
    ceiling = f"bare aiomqtt QoS 1, window {WINDOW}"
    return [
        Row("end to end", "commit + publish + receive", sizes.live, live, ceiling, bare, PRODUCERS),
        Row(
            "end to end, one producer",
            "commit + publish + receive",
            sizes.live_one_producer,
            single,
            "AsyncOutbox.append, one caller",
            durable,
        ),
        Row("replay", f"{sizes.backlog:,}-event backlog", sizes.backlog, replay, ceiling, bare),
    ]


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench outbox", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke sizes (figures not for quoting)"
    )
    args = parser.parse_args(list(argv))
    sizes = QUICK if args.quick else Sizes()
    configure_logging("warning", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="edgegate-bench-") as tmp:
        directory = Path(tmp)
        raw = raw_sqlite_rate(directory / "raw.db", sizes.appends)
        raw_grouped = raw_sqlite_rate(directory / "raw-grouped.db", sizes.appends, PRODUCERS)
        durable = asyncio.run(async_append_rate(directory / "async.db", sizes.appends))
        ceiling = "raw sqlite3 WAL+FULL"
        rows = [
            Row(
                "durable append",
                "Outbox.append (sync core)",
                sizes.appends,
                sync_append_rate(directory / "sync.db", sizes.appends),
                ceiling,
                raw,
            ),
            Row("durable append", "AsyncOutbox.append", sizes.appends, durable, ceiling, raw),
            Row(
                "durable append",
                "AsyncOutbox.append, group commit",
                sizes.appends,
                asyncio.run(async_append_rate(directory / "grouped.db", sizes.appends, PRODUCERS)),
                f"{ceiling}, {PRODUCERS} per commit",
                raw_grouped,
                PRODUCERS,
            ),
            *asyncio.run(broker_rows(directory, sizes, durable)),
        ]
    header = (
        f"{'bench':<25} {'what':<33} {'producers':>9} {'events':>7} {'per s':>9}  "
        f"{'ceiling':<36} {'per s':>9} {'of ceiling':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.bench:<25} {row.what:<33} {row.producers:>9} {row.events:>7,} "
            f"{row.per_s:>9,.0f}  {row.ceiling:<36} {row.ceiling_per_s:>9,.0f} "
            f"{row.of_ceiling:>9.0%}"
        )
    live = next(r for r in rows if r.bench == "end to end")
    single = next(r for r in rows if r.bench == "end to end, one producer")
    print(
        f"end to end, {PRODUCERS} producers = {live.of_ceiling:.0%} of the bare aiomqtt loop "
        f"(issue 8 target: >= 50 %); one producer = {single.of_ceiling:.0%} of "
        "AsyncOutbox.append, its fsync-bound ceiling"
    )
    print(
        f"payload: a {len(PAYLOAD)}-byte decision event, QoS 1; window {WINDOW}; "
        "broker: one mosquitto on loopback for every row"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "bench": "outbox",
                "measured_at": measured_at(),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "payload_bytes": len(PAYLOAD),
                "window": WINDOW,
                "quick": args.quick,
                "producers": PRODUCERS,
                # One producer's end to end over its fsync-bound ceiling (AsyncOutbox.append).
                "end_to_end_of_durable_append": round(single.of_ceiling, 3),
                # The issue 8 figure: PRODUCERS producers end to end over the bare loop.
                "end_to_end_of_bare": round(live.of_ceiling, 3),
                "rows": [asdict(row) | {"of_ceiling": round(row.of_ceiling, 3)} for row in rows],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
