"""The rig behind bench.load and bench.soak: one daemon under many line-rate readers.

Owns the whole set-up and the measurement of one run: a real mosquitto
(:class:`edgegate.localbroker.LocalBroker`); a signed whitelist imported with ``edgegate
whitelist import``; the readers of :mod:`bench._readers` (every reader at full line rate, in
a child process); a Modbus gate I/O module and a serial scanner (simulators on ptys, in this
process); ``edgegate run --config …`` as a process of its own; a back-office subscriber on
``G/decision`` and ``G/health``; and the passages driven through the gate while it runs.

Why portal mode (a dock door), and why the passages look as they do: every reader streams
its own fixed field of background tags for the whole run, which is what a reader at line
rate does. In portal mode a passage closes once no new EPC has arrived for
``stable_set_ms`` and both beams are clear; a tag that was in a decided passage neither
opens nor joins another until it has been out of the field for ``depart_ms``. So the
background tags make up one passage at start-up (decided during the warm-up, not measured)
and are ignored from then on however long they keep streaming, while each driven passage —
beam A breaks, a pallet of new EPCs enters the field of the portal readers (the first R2000
and the first ThingMagic), beam B breaks, A clears, the gate pass is scanned, and once the
set has been stable for ``stable_set_ms`` B clears — closes when its last beam clears. A
continuous stream therefore never keeps a passage open (``max_open_s`` would close one
after 30 s anyway); barrier mode would close on the scan, before the vehicle leaves, so the
"last beam cleared → decision" latency would not exist there. Every driven passage matches
its gate pass exactly (all items known, bonded, owner and manifest right) and inspection is
off, so every one must pass: a hold means a read went missing.

Latency is measured from just before the last beam clears at the gate I/O simulator to the
decision's arrival at the subscriber; it includes the daemon's beam poll (``poll_ms``, on
average half of it). Decisions made are the daemon's own counter in ``outbox.db``; received
are distinct ``event_id`` at the subscriber. The daemon's CPU is ``utime + stime`` from
``/proc/PID/stat`` (every thread), its memory ``VmRSS`` / ``VmHWM`` from ``/proc/PID/status``.

Invariants: the readers' frame counts are compared only after every reader has been muted
and its line has gone quiet, against a health heartbeat taken after that; every process the
rig starts (readers, daemon, broker) is stopped however the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import measured_at
from bench._readers import field_epcs, reader_names
from bench.whitelist import mib, percentile, proc_status
from edgegate.localbroker import LocalBroker
from edgegate.mqtt.topics import Topics
from edgegate.whitelist.bundle import public_key_base64
from simulators.backoffice import compact, header, write_bundle_file
from simulators.faults import BITS_PER_BYTE_8N1
from simulators.gateio import GateIoSimulator
from simulators.harness import Gate, cancel_until_done, import_whitelist, poll
from simulators.scanner import ScannerSimulator

SITE, GATE = "HAK-CBZ", "LOAD01"
TOPICS = Topics("edgegate/v1", SITE, GATE)
PROBE_TOPIC = "bench/probe"
OWNER, SKU = "91460000MA5T000001", "SKU-LANCOME-50ML"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# How long after beam A breaks the pallet enters: a few beam polls.
BEAM_SETTLE_POLLS = 3
# Margin beyond stable_set_ms before the last beam clears: the pallet's first reads take a
# round or a read interval to arrive.
STABLE_MARGIN_S = 0.25
DECISION_TIMEOUT_S = 5.0
STARTUP_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 30.0
QUIET_DECISIONS_S = 1.5
# mosquitto leaves Nagle's algorithm on for its clients' sockets unless told otherwise. A
# decision forwarded to the subscriber while the broker's previous small packet to it (a
# heartbeat, a probe) awaits the subscriber's delayed ACK then waits up to ~40 ms: measured,
# decided → received fell from 26 / 42 ms (p50 / p99) to 3 / 4 ms with this line. A broker
# serving a gate's back office should be configured the same way (docs/architecture.md).
BROKER_OPTIONS = ("set_tcp_nodelay true",)


@dataclass(frozen=True, slots=True)
class Shape:
    """What one run puts on the daemon."""

    r2000: int
    thingmagic: int
    field_tags: int
    """Background tags in front of every reader, streamed for the whole run."""
    passage_tags: int
    """Items on each driven pallet (new EPCs every passage)."""
    passage_period_s: float
    duration_s: float
    sample_every_s: float
    baudrate: int = 115_200
    stable_set_ms: int = 300
    poll_ms: int = 20
    health_interval_s: float = 1.0

    @property
    def readers(self) -> int:
        return self.r2000 + self.thingmagic

    @property
    def passages(self) -> int:
        """Passages the run can drive at most (each has its own gate pass)."""
        return math.ceil(self.duration_s / self.passage_period_s) + 1


@dataclass(frozen=True, slots=True)
class Sample:
    """The daemon's CPU time and memory at one instant (seconds since the window opened)."""

    at_s: float
    cpu_s: float
    rss_kib: int


@dataclass(frozen=True, slots=True)
class Passage:
    """One driven passage, as the subscriber saw its decision (``None``: never arrived)."""

    number: int
    cleared_at_s: float
    latency_s: float | None
    verdict: str | None
    tags: int
    stages_s: tuple[float, float, float] | None = None
    """The latency split by the decision's own instants: last beam clear → ``closed_at``
    (the beam poll), ``closed_at`` → ``decided_at`` (queue, tracker, whitelist lookup),
    ``decided_at`` → arrival (rules, durable commit, publish, broker)."""


@dataclass(slots=True)
class Run:
    """Everything one run measured, raw; bench.load and bench.soak make figures of it."""

    shape: Shape
    window_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    passages: list[Passage] = field(default_factory=list)
    probe_latencies_s: list[float] = field(default_factory=list)
    rss_at_ready_kib: int = 0
    hwm_kib: int = 0
    decided: int = 0
    received: int = 0
    duplicates: int = 0
    lost: int = 0
    warmup_decisions: int = 0
    sent_frames: dict[str, int] = field(default_factory=dict)
    counted_frames: dict[str, int] = field(default_factory=dict)
    reader_errors: dict[str, int] = field(default_factory=dict)
    bytes_per_s: dict[str, float] = field(default_factory=dict)
    readers_cpu_share: float = 0.0
    bench_cpu_share: float = 0.0
    load_average: tuple[float, float] = (0.0, 0.0)
    daemon_exit: int | None = None


def pass_no(number: int) -> str:
    return f"HP46012026{number:08d}"


def passage_epcs(number: int, tags: int) -> list[str]:
    return [f"3074257BF7194E4{number * tags + k:09X}" for k in range(tags)]


# -- set-up --------------------------------------------------------------------------------


def write_whitelist(path: Path, shape: Shape, key: Ed25519PrivateKey) -> None:
    """A snapshot knowing every background tag and, per passage, its items and its pass."""
    now = datetime.now(UTC)
    valid_until = (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def item(epc: str) -> bytes:
        return compact(
            {
                "type": "item",
                "epc": epc,
                "sku": SKU,
                "owner": OWNER,
                "status": "bonded",
                "directions": ["in", "out"],
                "destinations": [],
            }
        )

    lines = [item(e) for r in range(shape.readers) for e in field_epcs(r, shape.field_tags)]
    for number in range(shape.passages):
        lines += [item(e) for e in passage_epcs(number, shape.passage_tags)]
        lines.append(
            compact(
                {
                    "type": "pass",
                    "pass_no": pass_no(number),
                    "pass_type": 2,
                    "direction": "in",
                    "status": "approved",
                    "owner": OWNER,
                    "lines": [{"sku": SKU, "qty": shape.passage_tags}],
                    "valid_until": valid_until,
                }
            )
        )
    head = header(SITE, "snapshot", 1, None, now, len(lines))
    write_bundle_file(path, [head, *lines], key)


def write_config(
    path: Path,
    state_dir: Path,
    shape: Shape,
    broker: LocalBroker,
    key: str,
    readers: list[dict[str, str]],
    urls: dict[str, str],
) -> None:
    blocks = [
        f'[[readers]]\nname = "{r["name"]}"\nkind = "{r["kind"]}"\nurl = "{r["url"]}"\n'
        f"baudrate = {shape.baudrate}\nantennas = [1]\n"
        for r in readers
    ]
    blocks.append(
        f'[[readers]]\nname = "scan-1"\nkind = "scanner"\nurl = "{urls["scan-1"]}"\n'
        'suffix = "\\r"\n'
    )
    blocks.append(
        f'[[readers]]\nname = "io-1"\nkind = "gate-io"\nurl = "{urls["io-1"]}"\n'
        f"baudrate = {shape.baudrate}\npoll_ms = {shape.poll_ms}\n"
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

[storage]
state_dir = "{state_dir}"

[whitelist]
trusted_keys = ["{key}"]

[passage]
stable_set_ms = {shape.stable_set_ms}

[inspection]
enabled = false

[health]
interval_s = {shape.health_interval_s}

"""
        + "\n".join(blocks),
        encoding="utf-8",
    )


# -- measuring -----------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """utime + stime of a process, every thread, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        # The command name may hold spaces; the fields after it are fixed.
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def mono_of(instant: str) -> float:
    """A wall-clock instant of the daemon's (``…Z``, ms) on this process's monotonic clock."""
    return datetime.fromisoformat(instant).timestamp() - (time.time() - time.monotonic())


class Readers:
    """The :mod:`bench._readers` child process and its line protocol."""

    def __init__(self, process: asyncio.subprocess.Process, listing: list[dict[str, str]]):
        self._process = process
        self.listing = listing
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, shape: Shape) -> Readers:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench._readers",
            f"--r2000={shape.r2000}",
            f"--thingmagic={shape.thingmagic}",
            f"--field-tags={shape.field_tags}",
            f"--baudrate={shape.baudrate}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        async with asyncio.timeout(STARTUP_TIMEOUT_S):
            first = json.loads(await process.stdout.readline())
        return cls(process, first["readers"])

    @property
    def pid(self) -> int:
        return self._process.pid

    async def ask(self, command: str) -> dict[str, object]:
        process = self._process
        assert process.stdin is not None
        assert process.stdout is not None
        async with self._lock, asyncio.timeout(STARTUP_TIMEOUT_S):
            process.stdin.write(command.encode() + b"\n")
            await process.stdin.drain()
            answer: dict[str, object] = json.loads(await process.stdout.readline())
        return answer

    async def counts(self, command: str = "count") -> tuple[float, dict[str, dict[str, int]]]:
        answer = await self.ask(command)
        at = answer["at_mono_s"]
        readers = answer["readers"]
        assert isinstance(at, float)
        assert isinstance(readers, dict)
        return at, readers

    async def close(self) -> None:
        process = self._process
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


class Subscriber:
    """The back office: every decision (by ``event_id``) and every heartbeat, timestamped;
    and a probe — a bare QoS 1 publish from this client to itself through the same broker,
    the peer of the decision latency."""

    def __init__(self, broker: LocalBroker) -> None:
        self._broker = broker
        self.decisions: dict[str, dict[str, object]] = {}
        self.seqs: set[int] = set()
        self.duplicates = 0
        self.last_decision_at = 0.0
        self.healths: list[tuple[float, dict[str, object]]] = []
        self.probe_latencies_s: list[float] = []
        self.subscribed = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._waiting: dict[str, asyncio.Future[tuple[float, dict[str, object]]]] = {}

    def expect(self, number: str) -> asyncio.Future[tuple[float, dict[str, object]]]:
        """The (arrival, payload) of the decision carrying pass ``number``, when it comes."""
        future = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        return future

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self._broker.host, self._broker.port, identifier="bench-back-office"
                ) as client:
                    await client.subscribe(TOPICS.decision, qos=1)
                    await client.subscribe(TOPICS.health, qos=0)
                    await client.subscribe(PROBE_TOPIC, qos=1)
                    self._client = client
                    self.subscribed.set()
                    async for message in client.messages:
                        arrived = time.monotonic()
                        assert isinstance(message.payload, bytes)
                        self._receive(str(message.topic), arrived, message.payload)
            except aiomqtt.MqttError:
                self._client = None
                self.subscribed.clear()
                await asyncio.sleep(0.1)

    async def probe(self) -> None:
        """Publish one probe (QoS 1); its latency is recorded when it comes back."""
        if self._client is not None:
            await self._client.publish(PROBE_TOPIC, repr(time.monotonic()), qos=1)

    def _receive(self, topic: str, arrived: float, raw: bytes) -> None:
        if topic == PROBE_TOPIC:
            self.probe_latencies_s.append(arrived - float(raw))
            return
        payload: dict[str, object] = json.loads(raw)
        if topic == TOPICS.health:
            self.healths.append((arrived, payload))
            return
        event_id = str(payload["event_id"])
        if event_id in self.decisions:
            self.duplicates += 1
            return
        self.decisions[event_id] = payload
        seq = payload["seq"]
        assert isinstance(seq, int)
        self.seqs.add(seq)
        self.last_decision_at = arrived
        waiting = self._waiting.pop(str(payload.get("pass_no")), None)
        if waiting is not None and not waiting.done():
            waiting.set_result((arrived, payload))

    def missing(self, decided: int) -> set[int]:
        """The seqs in 1..``decided`` that have not arrived."""
        return set(range(1, decided + 1)) - self.seqs

    async def health_after(self, instant: float) -> tuple[float, dict[str, object]]:
        """(arrival, payload) of the first heartbeat that arrived after ``instant``."""
        async with asyncio.timeout(STARTUP_TIMEOUT_S):
            while True:
                for arrived, payload in self.healths:
                    if arrived > instant:
                        return arrived, payload
                await asyncio.sleep(0.05)


# -- figures -------------------------------------------------------------------------------


def figures(run: Run) -> dict[str, object]:
    """The figures both benchmarks report, from one run."""
    shape = run.shape
    window = run.window_s
    rss = [s.rss_kib for s in run.samples]
    latencies = [p.latency_s * 1000 for p in run.passages if p.latency_s is not None]
    probes = [s * 1000 for s in run.probe_latencies_s] or [0.0]
    line_rate = shape.baudrate / BITS_PER_BYTE_8N1
    readers = {
        name: {
            "sent_frames": sent,
            "counted_frames": run.counted_frames.get(name),
            "errors": run.reader_errors.get(name),
            "bytes_per_s": round(run.bytes_per_s[name]),
            "line_share_pct": round(100 * run.bytes_per_s[name] / line_rate, 1),
        }
        for name, sent in run.sent_frames.items()
    }
    sent_total = sum(run.sent_frames.values())
    counted_total = sum(run.counted_frames.get(name, 0) for name in run.sent_frames)
    disagreements = {
        name: r["counted_frames"]
        for name, r in readers.items()
        if r["counted_frames"] != r["sent_frames"]
    }
    return {
        "readers": shape.readers,
        "readers_r2000": shape.r2000,
        "readers_thingmagic": shape.thingmagic,
        "field_tags_per_reader": shape.field_tags,
        "passage_tags": shape.passage_tags,
        "passage_period_s": shape.passage_period_s,
        "stable_set_ms": shape.stable_set_ms,
        "poll_ms": shape.poll_ms,
        "baudrate": shape.baudrate,
        "duration_s": shape.duration_s,
        "window_s": round(window, 1),
        "cpu_s": round(run.samples[-1].cpu_s, 2),
        "daemon_cpu_percent_of_core": round(100 * run.samples[-1].cpu_s / window, 1),
        "readers_process_cpu_pct": round(100 * run.readers_cpu_share, 1),
        "bench_process_cpu_pct": round(100 * run.bench_cpu_share, 1),
        "rss_at_ready_mb": mib(run.rss_at_ready_kib),
        "rss_start_mb": mib(rss[0]),
        "rss_end_mb": mib(rss[-1]),
        "rss_peak_mb": mib(max(rss)),
        "rss_growth_mb": mib(rss[-1] - rss[0]),
        "vm_hwm_mb": mib(run.hwm_kib),
        "passages_driven": len(run.passages),
        "passages_decided": len(latencies),
        "passages_passed": sum(p.verdict == "pass" for p in run.passages),
        "passages_complete": sum(p.tags == shape.passage_tags for p in run.passages),
        "warmup_decisions": run.warmup_decisions,
        "decisions_made": run.decided,
        "decisions_received": run.received,
        "decisions_lost": run.lost,
        "duplicates": run.duplicates,
        "e2e_p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "e2e_p99_ms": round(percentile(latencies, 99), 2) if latencies else None,
        "e2e_max_ms": round(max(latencies), 2) if latencies else None,
        **stage_figures(run),
        "bare_mqtt_p50_ms": round(statistics.median(probes), 2),
        "bare_mqtt_p99_ms": round(percentile(probes, 99), 2),
        "frames_sent_by_simulators": sent_total,
        "frames_counted_by_daemon": counted_total,
        "frames_per_s": round(sent_total / window),
        "dropped_frames": sent_total - counted_total,
        "frame_disagreements": disagreements,
        "line_rate_bytes_per_s": line_rate,
        "bytes_per_s_per_reader_min": round(min(run.bytes_per_s.values())),
        "bytes_per_s_per_reader_mean": round(statistics.mean(run.bytes_per_s.values())),
        "per_reader": readers,
        "daemon_exit": run.daemon_exit,
    }


def stage_figures(run: Run) -> dict[str, float | None]:
    """p50 / p99 of each stage of the latency (see :class:`Passage`)."""
    staged = [p.stages_s for p in run.passages if p.stages_s is not None]
    found: dict[str, float | None] = {}
    for index, stage in enumerate(("close", "decide", "deliver")):
        values = [stages[index] * 1000 for stages in staged]
        for p in (50, 99):
            found[f"e2e_{stage}_p{p}_ms"] = round(percentile(values, p), 1) if values else None
    return found


def print_readers(figures: dict[str, object]) -> None:
    """One line per reader: frames sent vs counted by the daemon, bytes/s, share of the line."""
    f = figures
    print(f"{'reader':<9} {'sent':>10} {'counted':>10} {'errors':>6} {'B/s':>7} {'of line':>7}")
    readers = f["per_reader"]
    assert isinstance(readers, dict)
    for name, r in readers.items():
        mark = "" if r["sent_frames"] == r["counted_frames"] else "  <-- disagree"
        print(
            f"{name:<9} {r['sent_frames']:>10,} {r['counted_frames'] or 0:>10,} "
            f"{r['errors'] or 0:>6} {r['bytes_per_s']:>7,} {r['line_share_pct']:>6} %{mark}"
        )
    if f["frame_disagreements"]:
        print(f"frame counters disagree: {f['frame_disagreements']}")


def write_results(
    path: Path,
    figures: dict[str, object],
    targets: dict[str, float],
    run: Run,
    summary: str | None = None,
) -> None:
    """``{"meta", "figures", "targets"}`` (and a one-paragraph ``summary`` when given)."""
    meta: dict[str, object] = {
        "load_average_1m_5m_at_end": [round(v, 2) for v in run.load_average],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    document: dict[str, object] = {
        "measured_at": measured_at(),
        "meta": meta,
        "figures": figures,
        "targets": targets,
    }
    if summary is not None:
        document["summary"] = summary
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


# -- the run -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Parts:
    shape: Shape
    work: Path
    readers: Readers
    io: GateIoSimulator
    scanner: ScannerSimulator
    subscriber: Subscriber
    gate: Gate
    run: Run


async def run(shape: Shape, progress: Callable[[str], None] = print) -> Run:
    """Set the rig up, warm it up, drive passages for ``shape.duration_s``, measure, stop."""
    with (
        tempfile.TemporaryDirectory(prefix="edgegate-bench-load-") as tmp,
        LocalBroker(options=BROKER_OPTIONS) as broker,
    ):
        work = Path(tmp)
        key = Ed25519PrivateKey.generate()
        progress(f"whitelist: {shape.passages} passes of {shape.passage_tags} items ...")
        write_whitelist(work / "snapshot.bundle", shape, key)
        readers = await Readers.start(shape)
        try:
            async with GateIoSimulator(baudrate=shape.baudrate) as io:
                return await _with_devices(shape, work, broker, key, readers, io, progress)
        finally:
            await readers.close()


async def _with_devices(
    shape: Shape,
    work: Path,
    broker: LocalBroker,
    key: Ed25519PrivateKey,
    readers: Readers,
    io: GateIoSimulator,
    progress: Callable[[str], None],
) -> Run:
    scanner = ScannerSimulator(b"\r")
    io_port, scan_port = io.open_pty(), scanner.open_pty()
    config = work / "edgegate.toml"
    urls = {"io-1": io_port.url, "scan-1": scan_port.url}
    write_config(
        config, work / "state", shape, broker, public_key_base64(key), readers.listing, urls
    )
    await import_whitelist(work / "snapshot.bundle", config)
    subscriber = Subscriber(broker)
    async with asyncio.TaskGroup() as group:
        ports = [
            group.create_task(port.run(), name=f"port-{name}")
            for name, port in (("io-1", io_port), ("scan-1", scan_port))
        ]
        listening = group.create_task(subscriber.run(), name="back-office")
        async with asyncio.timeout(STARTUP_TIMEOUT_S):
            await subscriber.subscribed.wait()
        gate = Gate(config, work / "state", work / "daemon.log")
        await gate.start()
        parts = _Parts(shape, work, readers, io, scanner, subscriber, gate, Run(shape))
        try:
            await _measure(parts, progress)
        finally:
            if gate.running:
                try:
                    parts.run.daemon_exit = await gate.stop()
                except TimeoutError:
                    await gate.reap()
            else:
                progress((work / "daemon.log").read_text(errors="replace")[-3000:])
            await cancel_until_done(listening)
            for port in ports:
                port.cancel()
    return parts.run


async def _measure(parts: _Parts, progress: Callable[[str], None]) -> None:
    shape, result, subscriber = parts.shape, parts.run, parts.subscriber
    pid = parts.gate.pid
    progress(f"daemon pid {pid}: waiting for {shape.readers} readers, scanner and gate I/O ...")
    await _until_all_reading(parts)
    result.rss_at_ready_kib = proc_status(pid)["VmRSS"]
    # Warm-up: the background tags form passages of their own (readers come up one by
    # one); they are decided, then ignored for good, before the measured window opens.
    async with asyncio.timeout(STARTUP_TIMEOUT_S):
        await poll(
            lambda: (
                bool(subscriber.decisions)
                and time.monotonic() - subscriber.last_decision_at >= QUIET_DECISIONS_S
            ),
            0.1,
        )
    result.warmup_decisions = len(subscriber.decisions)
    progress(
        f"warm-up done ({result.warmup_decisions} background passage(s) decided); "
        f"driving passages for {shape.duration_s:.0f} s ..."
    )
    window_mono, counts_before = await parts.readers.counts()
    bench_cpu_before = time.process_time()
    readers_cpu_before = cpu_s(parts.readers.pid)
    cpu_before = cpu_s(pid)
    result.samples.append(Sample(0.0, 0.0, proc_status(pid)["VmRSS"]))

    async def sample() -> None:
        while True:
            await asyncio.sleep(shape.sample_every_s)
            at = time.monotonic() - window_mono
            result.samples.append(Sample(at, cpu_s(pid) - cpu_before, proc_status(pid)["VmRSS"]))

    async with asyncio.TaskGroup() as group:
        sampling = group.create_task(sample(), name="sampler")
        await _drive(parts, window_mono, progress)
        sampling.cancel()
    window_end, counts_after = await parts.readers.counts()
    result.window_s = window_end - window_mono
    result.samples.append(
        Sample(result.window_s, cpu_s(pid) - cpu_before, proc_status(pid)["VmRSS"])
    )
    result.hwm_kib = proc_status(pid)["VmHWM"]
    result.readers_cpu_share = (cpu_s(parts.readers.pid) - readers_cpu_before) / result.window_s
    result.bench_cpu_share = (time.process_time() - bench_cpu_before) / result.window_s
    result.load_average = os.getloadavg()[:2]
    result.bytes_per_s = {
        name: (counts_after[name]["bytes"] - counts_before[name]["bytes"]) / result.window_s
        for name in counts_after
    }
    progress("settling: every decision made must arrive ...")
    with contextlib.suppress(TimeoutError):  # what never arrives is counted as lost
        async with asyncio.timeout(SETTLE_TIMEOUT_S):
            await poll(lambda: not subscriber.missing(parts.gate.outbox()[0]), 0.1)
    result.decided = parts.gate.outbox()[0]
    result.received = len(subscriber.decisions)
    result.duplicates = subscriber.duplicates
    result.probe_latencies_s = list(subscriber.probe_latencies_s)
    result.lost = len(subscriber.missing(result.decided))
    progress("muting the readers to compare frame counters ...")
    muted_at, final = await parts.readers.counts("mute")
    # The heartbeat after the next one was certainly taken after the lines went quiet.
    next_one, _ = await subscriber.health_after(muted_at)
    _, health = await subscriber.health_after(next_one)
    result.sent_frames = {name: counts["frames"] for name, counts in final.items()}
    health_readers = health["readers"]
    assert isinstance(health_readers, list)
    result.counted_frames = {r["name"]: r["frames"] for r in health_readers}
    result.reader_errors = {r["name"]: r["errors"] for r in health_readers}


async def _until_all_reading(parts: _Parts) -> None:
    names = {name for name, _ in reader_names(parts.shape.r2000, parts.shape.thingmagic)}
    names |= {"scan-1", "io-1"}
    async with asyncio.timeout(STARTUP_TIMEOUT_S):
        while True:
            if not parts.gate.running:
                raise SystemExit("the daemon exited")
            if parts.subscriber.healths:
                readers = parts.subscriber.healths[-1][1]["readers"]
                assert isinstance(readers, list)
                up = {r["name"] for r in readers if r["connected"] and r["frames"]}
                # A scanner has sent no code yet: connected is all it can show.
                up |= {r["name"] for r in readers if r["name"] == "scan-1" and r["connected"]}
                if names <= up:
                    return
            await asyncio.sleep(0.1)


async def _drive(parts: _Parts, window_mono: float, progress: Callable[[str], None]) -> None:
    shape, io, result = parts.shape, parts.io, parts.run
    loop = asyncio.get_running_loop()
    started = loop.time()
    next_report = started + 30
    for number in range(shape.passages):
        start = started + number * shape.passage_period_s
        if start - started >= shape.duration_s:
            break
        await asyncio.sleep(max(0.0, start - loop.time()))
        if not parts.gate.running:
            raise SystemExit("the daemon exited")
        epcs = passage_epcs(number, shape.passage_tags)
        decision = parts.subscriber.expect(pass_no(number))
        await io.set_beam("A", True)
        await asyncio.sleep(BEAM_SETTLE_POLLS * shape.poll_ms / 1000)
        await parts.readers.ask("enter " + " ".join(epcs))
        await io.set_beam("B", True)
        await io.set_beam("A", False)
        # Scanned while the pallet stands in the door: the passage is open by then even if
        # the beam poll ran late (the first read opens it too), so the code is not dropped.
        await asyncio.sleep(shape.stable_set_ms / 2000)
        parts.scanner.scan(pass_no(number))
        await asyncio.sleep(shape.stable_set_ms / 2000 + STABLE_MARGIN_S)
        cleared = time.monotonic()
        await io.set_beam("B", False)
        await parts.subscriber.probe()
        try:
            async with asyncio.timeout(DECISION_TIMEOUT_S):
                arrived, payload = await decision
        except TimeoutError:
            result.passages.append(Passage(number, cleared - window_mono, None, None, 0))
        else:
            tags = payload["tags"]
            assert isinstance(tags, list)
            closed, decided = (mono_of(str(payload[k])) for k in ("closed_at", "decided_at"))
            result.passages.append(
                Passage(
                    number,
                    cleared - window_mono,
                    arrived - cleared,
                    str(payload["decision"]),
                    len(tags),
                    (closed - cleared, decided - closed, arrived - decided),
                )
            )
        await parts.readers.ask("leave")
        if loop.time() >= next_report:
            next_report += 30
            done = [p.latency_s for p in result.passages if p.latency_s is not None]
            progress(
                f"  {loop.time() - started:5.0f} s: {len(result.passages)} passages, "
                f"p50 {percentile(done, 50) * 1000:.1f} ms, "
                f"RSS {result.samples[-1].rss_kib / 1024:.1f} MiB"
            )
