"""Reader codecs and sessions against the serial line they sit on.

Measures, for the R2000 (PROTOCOLS.md §1) and the ThingMagic Mercury (§2) protocols:

- codec: host-role decode throughput of tag frames, fed as one buffer and in 64-byte chunks
  (a USB-serial adapter delivers at most 64 bytes per read), in frames/s;
- pipeline: bytes → observations through a real pty — the simulator in its own process
  (``edgegate-sim``, the other core), the daemon's device session here, counting the
  ``TagSeen`` it emits — in tag reads/s and bytes/s.

Each figure stands beside the ceiling it serves: the 115200-baud line rate of the same
frames (8N1: 10 bit times a byte, 11,520 B/s). A pty has no baud rate, so the pipeline
figures show how much faster than the wire the session can go, not what a reader delivers.

Run: ``python -m bench.codecs`` (prints a table, writes bench/results/codecs.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from bench import measured_at
from edgegate.config import R2000ReaderConfig, ThingMagicReaderConfig
from edgegate.devices.base import DeviceSession
from edgegate.devices.r2000 import R2000Session
from edgegate.devices.thingmagic import ThingMagicSession
from edgegate.gate.model import Observation, TagSeen
from edgegate.logs import configure_logging
from edgegate.wire import gen2, r2000, thingmagic

BAUDRATE = 115_200
LINE_RATE_BYTES_PER_S = BAUDRATE / 10  # 8N1
CHUNK_BYTES = 64
CODEC_FRAMES = 20_000
CODEC_REPEATS = 5
PIPELINE_TAGS = 20  # tags in the simulated field
PIPELINE_WARMUP_READS = 500
PIPELINE_READS = 20_000
RESULTS = Path(__file__).parent / "results" / "codecs.json"

EPCS = [bytes.fromhex(f"3074257BF7194E40{n:08X}") for n in range(PIPELINE_TAGS)]
TID = bytes.fromhex("E2801160200074CF085B0A9B")


class Decoder(Protocol):
    """A codec's host role, as both R2000Host and ThingMagicHost are."""

    def receive_data(self, data: bytes) -> Sequence[object]: ...


@dataclass(frozen=True, slots=True)
class Row:
    bench: str
    protocol: str
    frame_bytes: float
    per_s: float
    """Frames (codec) or tag reads (pipeline) per second."""
    line_rate_per_s: float
    """The same frames per second that fit through 115200 8N1."""

    @property
    def times_line_rate(self) -> float:
        return self.per_s / self.line_rate_per_s


# --------------------------------------------------------------------------- codecs


def r2000_tag_frames() -> list[bytes]:
    cmd = r2000.Cmd.REAL_TIME_INVENTORY
    return [
        r2000.encode_tag(1, cmd, 7, 0, gen2.pc_for_epc(epc), epc, -54)
        for epc in EPCS * (CODEC_FRAMES // len(EPCS))
    ]


def thingmagic_records(tid: bytes | None) -> list[bytes]:
    return [
        thingmagic.encode_tag_record(
            thingmagic.TagRecord(
                pc=gen2.pc_for_epc(epc),
                epc=epc,
                read_count=1,
                rssi_dbm=-54,
                antenna=0x11,
                frequency_khz=923_200,
                timestamp_ms=n,
                phase=0,
                protocol=thingmagic.GEN2_PROTOCOL,
                data=tid or b"",
                gpio=0x0F,
            )
        )
        for n, epc in enumerate(EPCS * (CODEC_FRAMES // len(EPCS)))
    ]


def decode_rate(make_host: Callable[[], Decoder], frames: list[bytes], chunk: int | None) -> float:
    """Frames/s decoded by a fresh host, best of ``CODEC_REPEATS`` runs."""
    data = b"".join(frames)
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    best = float("inf")
    for _ in range(CODEC_REPEATS):
        receive = make_host().receive_data
        started = time.perf_counter()
        decoded = sum(len(receive(piece)) for piece in pieces)
        best = min(best, time.perf_counter() - started)
        if decoded != len(frames):
            raise RuntimeError(f"decoded {decoded} of {len(frames)} frames")
    return len(frames) / best


def codec_rows() -> list[Row]:
    cases = [
        ("R2000", r2000_tag_frames(), r2000.R2000Host),
        ("ThingMagic", thingmagic_records(None), thingmagic.ThingMagicHost),
        ("ThingMagic + TID", thingmagic_records(TID), thingmagic.ThingMagicHost),
    ]
    rows = []
    for protocol, frames, host in cases:
        size = statistics.fmean(len(frame) for frame in frames)
        for label, chunk in (("codec, one buffer", None), (f"codec, {CHUNK_BYTES}-B chunks", 64)):
            rate = decode_rate(host, frames, chunk)
            rows.append(Row(label, protocol, size, rate, LINE_RATE_BYTES_PER_S / size))
    return rows


# ------------------------------------------------------------------------- pipeline


async def pipeline_rate(
    simulator_args: list[str],
    make_session: Callable[[str, Callable[[Observation], None]], DeviceSession],
) -> float:
    """Tag reads/s from a simulator process through a pty into a device session."""
    tags = [arg for epc in EPCS for arg in ("--tag", f"{epc.hex().upper()}:1:-54")]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from simulators.cli import main; sys.exit(main())",
        *simulator_args,
        *tags,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    loop = asyncio.get_running_loop()
    reads = 0
    marks: dict[int, float] = {}
    done = asyncio.Event()
    wanted = PIPELINE_WARMUP_READS + PIPELINE_READS

    def count(observation: Observation) -> None:
        nonlocal reads
        if isinstance(observation, TagSeen):
            reads += 1
            if reads in (PIPELINE_WARMUP_READS, wanted):
                marks[reads] = loop.time()
                if reads == wanted:
                    done.set()

    try:
        async with asyncio.timeout(120):
            path = (await process.stdout.readline()).decode().strip()
            async with asyncio.TaskGroup() as tasks:
                running = tasks.create_task(make_session(path, count).run(), name="bench-session")
                await done.wait()
                running.cancel()
    finally:
        process.terminate()
        await process.wait()
    return PIPELINE_READS / (marks[wanted] - marks[PIPELINE_WARMUP_READS])


def r2000_session(url: str, emit: Callable[[Observation], None]) -> DeviceSession:
    config = R2000ReaderConfig(name="bench", kind="r2000", url=url, antennas=(1,))
    return R2000Session(config, emit)


def thingmagic_session(url: str, emit: Callable[[Observation], None]) -> DeviceSession:
    config = ThingMagicReaderConfig(name="bench", kind="thingmagic", url=url)
    return ThingMagicSession(config, emit)


async def pipeline_rows() -> list[Row]:
    r2000_rate = await pipeline_rate(["r2000", "--pty", "--round-delay", "0"], r2000_session)
    tm_rate = await pipeline_rate(
        ["thingmagic", "--pty", "--read-interval", "0"], thingmagic_session
    )
    # Reader-to-host bytes per tag read: an R2000 round of N tags is N 21-byte tag frames
    # and one 12-byte end-of-round frame (§1); a ThingMagic stream is 47-byte records (§2).
    r2000_bytes = 21 + 12 / PIPELINE_TAGS
    return [
        Row("pty → session", "R2000", r2000_bytes, r2000_rate, LINE_RATE_BYTES_PER_S / r2000_bytes),
        Row("pty → session", "ThingMagic", 47, tm_rate, LINE_RATE_BYTES_PER_S / 47),
    ]


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m bench codecs", description=__doc__).parse_args(argv)
    configure_logging("warning", stream=sys.stderr)  # sessions log reader.up: keep the table
    rows = codec_rows() + asyncio.run(pipeline_rows())
    header = (
        f"{'bench':<22} {'protocol':<17} {'B/frame':>7} {'per s':>10}"
        f" {'line rate':>9} {'× line':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.bench:<22} {row.protocol:<17} {row.frame_bytes:>7.1f} {row.per_s:>10,.0f}"
            f" {row.line_rate_per_s:>9,.0f} {row.times_line_rate:>7.1f}"
        )
    print(f"line rate: {BAUDRATE} baud 8N1 = {LINE_RATE_BYTES_PER_S:,.0f} B/s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "bench": "codecs",
                "measured_at": measured_at(),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "line_rate_bytes_per_s": LINE_RATE_BYTES_PER_S,
                "rows": [
                    asdict(row) | {"times_line_rate": round(row.times_line_rate, 1)} for row in rows
                ],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
