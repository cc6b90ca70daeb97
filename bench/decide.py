"""Decision latency: passage close → barrier coil written, → decision at a subscriber.

Runs the daemon's real decision path in this process — whitelist lookup on a worker thread,
the pure rules, the durable outbox commit (``synchronous=FULL``), then the gate plan driven
over Modbus RTU through a pseudo-terminal to the pymodbus gate I/O simulator (a process of
its own, as the module is hardware of its own), and the
decision published to a local mosquitto — for passages of 10, 100 and 1,000 tags. Three
instants are taken from the moment the passage is handed over as closed: the barrier coil
written at the simulator (the gate acts only once the decision is durable in the outbox,
so this is the decision, made, stored and acted on), the decision event received by an MQTT
subscriber (QoS 1) on the same broker, and the departure-history bookkeeping that follows
the gate's orders done.

Every passage is a truck on its gate pass whose goods all match the manifest, so every
decision is a pass and opens the barrier. A truck's tags are five pallets, each in its own
region of the EPC key space (different company prefixes), as goods of several consignors
arrive. The ceiling beside each figure is the bare cost of the same lookup as one raw SQLite
``IN`` query plus one bare ``synchronous=FULL`` commit, measured in the same run.

The whitelist is ``--items`` items (default 1,000,000) built here, or, with ``--store-from
DIR``, a copy of the ``whitelist.db`` in DIR (e.g. the 10,000,000-item store the whitelist
benchmark leaves with ``--workdir``) to which a delta adds this benchmark's truck, passes
and goods.

Run: ``python -m bench.decide`` (about 1 minute to build the 1M-item store), or
``python -m bench.decide --items 50000 --rounds 20`` for a smoke run. Prints a table and
writes bench/results/decide.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt

from bench import measured_at
from edgegate.app import Daemon
from edgegate.config import parse_config
from edgegate.gate.model import ClosedPassage, CodeScanned, Direction, TagSummary
from edgegate.localbroker import LocalBroker
from edgegate.logs import configure_logging
from edgegate.mqtt.topics import Topics
from edgegate.whitelist.bundle import (
    TrustedKeys,
    generate_keypair,
    load_private_key,
    sign_body,
    verify_bundle,
)
from edgegate.whitelist.index import INDEX_PREFIX
from edgegate.whitelist.records import RecordType
from edgegate.whitelist.store import DB_NAME, WhitelistStore

RESULTS = Path(__file__).parent / "results" / "decide.json"
SIZES = (10, 100, 1000)
SITE, OWNER, TRUCK = "HAK-CBZ", "91460000MA5T000001", "E20000000000000000001234"


PALLET_PREFIXES = "13579"


def epc(n: int) -> str:
    """Goods ``n``: five pallets, consecutive ``n`` alternating between them."""
    return f"30{PALLET_PREFIXES[n % 5]}4257BF7194E4{n // 5:09X}"


def pass_no(size: int) -> str:
    return f"HP46012026112{size:05d}"


def records(items: int, valid_until: str) -> list[dict[str, object]]:
    """The goods, the truck and one gate pass per passage size, as bundle records."""
    result: list[dict[str, object]] = [
        {
            "type": "item",
            "epc": epc(n),
            "sku": f"SKU-{n % 97:03d}",
            "owner": OWNER,
            "status": "bonded",
            "directions": ["in", "out"],
            "destinations": [],
        }
        for n in range(items)
    ]
    result.append({"type": "vehicle", "vehicle_tag": TRUCK, "vehicle_no": "琼A12345"})
    for size in SIZES:
        declared: dict[str, int] = {}
        for n in range(size):
            declared[f"SKU-{n % 97:03d}"] = declared.get(f"SKU-{n % 97:03d}", 0) + 1
        result.append(
            {
                "type": "pass",
                "pass_no": pass_no(size),
                "pass_type": 2,
                "direction": "in",
                "status": "approved",
                "vehicle_tag": TRUCK,
                "owner": OWNER,
                "lines": [{"sku": k, "qty": v} for k, v in declared.items()],
                "valid_until": valid_until,
            }
        )
    return result


def build_store(state_dir: Path, items: int, store_from: Path | None) -> tuple[str, int]:
    """Build (or copy and extend) the whitelist; its trusted key and its item count."""
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    tomorrow = (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    base_seq: int | None = None
    if store_from is not None:
        shutil.copyfile(store_from / DB_NAME, state_dir / DB_NAME)
        for index in store_from.glob(f"{INDEX_PREFIX}*"):  # the one the database names
            shutil.copyfile(index, state_dir / index.name)
        with WhitelistStore.open(state_dir) as store:
            base_seq = store.state().seq
        items = max(SIZES)
    lines = [json.dumps(record) for record in records(items, tomorrow)]
    if base_seq is not None:
        lines = [json.dumps({"op": "upsert", **json.loads(line)}) for line in lines]
    header = {
        "format": "edgegate.whitelist",
        "version": 1,
        "kind": "snapshot" if base_seq is None else "delta",
        "site": SITE,
        "seq": 1 if base_seq is None else base_seq + 1,
        "issued_at": stamp,
        "issuer": "bench",
        "count": len(lines),
    }
    if base_seq is not None:
        header["base_seq"] = base_seq
    private_b64, public_b64 = generate_keypair()
    bundle = sign_body(
        "\n".join([json.dumps(header), *lines]).encode(), load_private_key(private_b64)
    )
    del lines
    with WhitelistStore.open(state_dir) as store:
        store.apply(
            verify_bundle(bundle, TrustedKeys.from_base64([public_b64])),
            site=SITE,
            sha256=hashlib.sha256(bundle).hexdigest(),
            now=now,
        )
        counts = store.state().counts
    return public_b64, counts[RecordType.ITEM]


def passage(size: int, round_no: int, clock: float) -> ClosedPassage:
    tags = tuple(
        TagSummary(
            epc=e,
            reads=5,
            rssi_max_dbm=-50.0,
            antennas=(1,),
            first_seen_mono_s=clock,
            last_seen_mono_s=clock,
        )
        for e in [TRUCK, *(epc(n) for n in range(size))]
    )
    return ClosedPassage(
        passage_id=f"bench-{size}-{round_no}",
        opened_at_mono_s=clock - 1,
        closed_at_mono_s=clock,
        close_cause="pass_scanned",
        direction=Direction.IN,
        tags=tags,
        codes=(CodeScanned(reader="scan-1", value=pass_no(size), at_mono_s=clock),),
    )


def ceiling_ms(state_dir: Path, size: int, rounds: int) -> list[float]:
    """One raw SQLite IN lookup of the same EPCs plus one bare FULL-sync commit."""
    lookup = sqlite3.connect(state_dir / "whitelist.db")
    journal = sqlite3.connect(state_dir / "ceiling.db", isolation_level=None)
    journal.execute("PRAGMA journal_mode=WAL")
    journal.execute("PRAGMA synchronous=FULL")
    journal.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, b BLOB)")
    keys = [TRUCK, *(epc(n) for n in range(size))]
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for chunk in range(0, len(keys), 500):
            part = keys[chunk : chunk + 500]
            marks = ",".join("?" * len(part))
            lookup.execute(f"SELECT * FROM items WHERE epc IN ({marks})", part).fetchall()
        journal.execute("INSERT INTO t(b) VALUES (?)", (b"x" * 2000,))
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Subscriber:
    """Notes when each decision event arrives at a plain MQTT client (QoS 1)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self.arrived: dict[str, float] = {}
        self._news = asyncio.Event()

    async def run(self) -> None:
        async for message in self._client.messages:
            payload = message.payload
            assert isinstance(payload, bytes | bytearray)
            body = json.loads(payload)
            self.arrived[str(body["passage_id"])] = time.monotonic()
            self._news.set()

    async def until(self, passage_id: str) -> float:
        while passage_id not in self.arrived:
            self._news.clear()
            await self._news.wait()
        return self.arrived[passage_id]


def summary(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples), pct(samples, 99)


class IoModule:
    """The gate I/O simulator (``edgegate-sim gate-io``) as a process of its own, as the
    module is hardware of its own: its Modbus work does not share the daemon's event loop.
    It prints every coil change on stderr; each is noted with the moment it was read."""

    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self._process = process
        self.url = url
        self.changes: list[tuple[float, bool]] = []  # (monotonic, barrier coil on)
        self._news = asyncio.Event()

    @classmethod
    async def start(cls) -> IoModule:
        simulator = Path(sys.executable).with_name("edgegate-sim")
        process = await asyncio.create_subprocess_exec(
            str(simulator),
            "gate-io",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        url = (await process.stdout.readline()).decode().strip()
        return cls(process, url)

    async def run(self) -> None:
        stderr = self._process.stderr
        assert stderr is not None
        while line := await stderr.readline():
            if b"coils " in line:
                # The module's own instant (the same clock in every process), not when this
                # loop got round to reading the line.
                at = float(line.rpartition(b"at_mono_s=")[2])
                self.changes.append((at, b"barrier=on" in line))
                self._news.set()

    async def barrier(self, open_: bool, after: int) -> float:
        """When the barrier coil next became ``open_`` among the changes after ``after``."""
        while True:
            for at, on in self.changes[after:]:
                if on == open_:
                    return at
            self._news.clear()
            await self._news.wait()

    async def stop(self) -> None:
        self._process.terminate()
        await self._process.wait()


async def measure(state_dir: Path, key: str, rounds: int) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    io = await IoModule.start()
    try:
        # As a gate's broker should be configured (docs/deployment.md): Nagle off.
        with LocalBroker(options=("set_tcp_nodelay true",)) as broker:
            config = parse_config(
                {
                    "gate": {"site": SITE, "gate_id": "BENCH", "mode": "barrier"},
                    "mqtt": {"host": broker.host, "port": broker.port},
                    "storage": {"state_dir": str(state_dir)},
                    "whitelist": {"trusted_keys": [key]},
                    "inspection": {"enabled": False},
                    "readers": [{"name": "io-1", "kind": "gate-io", "url": io.url, "poll_ms": 50}],
                },
                environ={},
            )
            topics = Topics(config.mqtt.topic_prefix, SITE, "BENCH")
            daemon = Daemon(config)
            async with (
                aiomqtt.Client(broker.host, broker.port, identifier="bench-decide") as client,
                asyncio.TaskGroup() as group,
            ):
                await client.subscribe(topics.decision, qos=1)
                subscriber = Subscriber(client)
                listening = group.create_task(subscriber.run(), name="subscriber")
                watching = group.create_task(io.run(), name="gate-io-coils")
                running = group.create_task(daemon.run(), name="daemon")
                await daemon.ready.wait()
                for size in SIZES:
                    coiled, received, settled = [], [], []
                    for round_no in range(rounds):
                        closed = passage(size, round_no, time.monotonic())
                        seen = len(io.changes)
                        # Every instant on the monotonic clock, which the gate I/O module's
                        # process shares (its coil changes carry their own instant).
                        start = time.monotonic()
                        deciding = group.create_task(daemon.decide_and_act(closed))
                        coiled.append((await io.barrier(True, seen) - start) * 1000)
                        arrived = await subscriber.until(closed.passage_id)
                        received.append((arrived - start) * 1000)
                        await deciding
                        settled.append((time.monotonic() - start) * 1000)
                        seen = len(io.changes)
                        daemon.passage_ended(closed.passage_id)
                        await io.barrier(False, seen)
                    ceiling = ceiling_ms(state_dir, size, rounds)
                    figures[str(size)] = dict(
                        zip(
                            (
                                "coil_p50_ms",
                                "coil_p99_ms",
                                "subscriber_p50_ms",
                                "subscriber_p99_ms",
                                "settled_p50_ms",
                                "settled_p99_ms",
                                "ceiling_p50_ms",
                                "ceiling_p99_ms",
                            ),
                            (
                                *summary(coiled),
                                *summary(received),
                                *summary(settled),
                                *summary(ceiling),
                            ),
                            strict=True,
                        )
                    )
                daemon.request_stop()
                await running
                listening.cancel()
                watching.cancel()
    finally:
        await io.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decide", description=__doc__)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument(
        "--store-from", type=Path, metavar="DIR", help="copy DIR/whitelist.db and extend it"
    )
    args = parser.parse_args(argv)
    configure_logging("error")
    with tempfile.TemporaryDirectory(prefix="edgegate-bench-decide-") as work:
        state_dir = Path(work)
        started = time.perf_counter()
        key, items = build_store(state_dir, args.items, args.store_from)
        build_s = time.perf_counter() - started
        figures = asyncio.run(measure(state_dir, key, args.rounds))
    print(
        f"whitelist: {items:,} items (ready in {build_s:.0f} s); {args.rounds} passages "
        "per size; every passage a pass that opens the barrier"
    )
    print(
        f"{'tags':>6} {'→ barrier coil p50/p99 ms':>27} {'→ subscriber':>17} "
        f"{'→ bookkeeping done':>19} {'ceiling p50/p99':>17}"
    )
    for size, f in figures.items():
        print(
            f"{size:>6} {f['coil_p50_ms']:>16.2f} / {f['coil_p99_ms']:<8.2f}"
            f"{f['subscriber_p50_ms']:>8.2f} / {f['subscriber_p99_ms']:<8.2f}"
            f"{f['settled_p50_ms']:>8.2f} / {f['settled_p99_ms']:<8.2f}"
            f"{f['ceiling_p50_ms']:>8.2f} / {f['ceiling_p99_ms']:<8.2f}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "measured_at": measured_at(),
                "items": items,
                "rounds": args.rounds,
                "build_s": build_s,
                "sizes": figures,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
