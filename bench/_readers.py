"""Line-rate RFID readers for bench.load and bench.soak, in a process of their own.

Owns a set of simulated readers — R2000s and ThingMagics — each on its own pty, paced at
``--baudrate`` 8N1 (:class:`simulators.faults.FaultPlan` ``baudrate``), each with a fixed
field of ``--field-tags`` tags read back to back: an R2000 answers every 89 round at once
(``round_delay_s=0``), the round in one write that the pacing cuts into back-to-back
64-byte pieces as a USB-serial adapter delivers a burst, and a ThingMagic streams with no
pause between read intervals — so the serial line, not the simulator, bounds the traffic.
(Were every R2000 frame a write of its own, each would wait for the previous one to leave
the line, and the event loop's timer slack between them would leave the line idle for a
quarter of the time.) They run apart from the bench
process so that the process that timestamps beams and decisions is not the one pushing
~10,000 frames a second, and apart from the daemon so that the daemon's CPU is its own.

The bench talks to it over stdin / stdout, one line each way:

- on start it prints ``{"readers": [{"name", "kind", "url"}, ...]}``;
- ``enter EPC...``: the EPCs enter the field of the *portal readers* (the first R2000 and the
  first ThingMagic, at a stronger RSSI than the background), answer ``{"ok": true}``;
- ``leave``: every EPC that entered leaves again, ``{"ok": true}``;
- ``count``: ``{"at_mono_s": t, "readers": {name: {"frames": n, "bytes": b}}}``;
- ``mute``: every reader hangs (requests ignored, streams stopped, ports left open); once no
  byte has moved for ``QUIET_S``, the final count, as for ``count``.

The process ends when stdin closes.

Invariants: ``frames`` is every frame a simulator sent (set-up replies, round ends and
keep-alives included), which is what the daemon's per-reader ``frames`` counter must reach
once the daemon has read everything; ``bytes`` counts the bytes that left the paced line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass

from simulators.endpoints import serve_pty
from simulators.faults import Endpoint, FaultLayer, FaultPlan
from simulators.r2000 import R2000Simulator
from simulators.thingmagic import ThingMagicSimulator

QUIET_S = 0.5
FIELD_RSSI_DBM = -62
PORTAL_RSSI_DBM = -50


def reader_names(r2000: int, thingmagic: int) -> list[tuple[str, str]]:
    """(name, kind) of every reader, R2000s first; the daemon's config uses the same names."""
    return [(f"r2000-{n:02d}", "r2000") for n in range(1, r2000 + 1)] + [
        (f"tm-{n:02d}", "thingmagic") for n in range(1, thingmagic + 1)
    ]


def field_epcs(reader_index: int, count: int) -> list[str]:
    """The background tags in front of reader number ``reader_index`` (0-based)."""
    return [f"E280{reader_index:04X}{n:016X}" for n in range(count)]


@dataclass(slots=True)
class _Reader:
    name: str
    simulator: R2000Simulator | ThingMagicSimulator
    endpoint: Endpoint
    layer: FaultLayer


def _build(args: argparse.Namespace) -> list[_Reader]:
    plan = FaultPlan(baudrate=args.baudrate)
    readers = []
    for index, (name, kind) in enumerate(reader_names(args.r2000, args.thingmagic)):
        simulator: R2000Simulator | ThingMagicSimulator
        if kind == "r2000":
            simulator = R2000Simulator(round_delay_s=0.0, reply_as_one_write=True)
        else:
            simulator = ThingMagicSimulator(read_interval_s=0.0)
        for epc in field_epcs(index, args.field_tags):
            simulator.add_tag(epc, antenna_port=1, rssi_dbm=FIELD_RSSI_DBM)
        endpoint, layer = serve_pty(simulator.converse, plan)
        readers.append(_Reader(name, simulator, endpoint, layer))
    return readers


def _count(readers: list[_Reader]) -> dict[str, object]:
    return {
        "at_mono_s": time.monotonic(),
        "readers": {
            r.name: {"frames": r.simulator.frames_sent, "bytes": r.layer.bytes_sent}
            for r in readers
        },
    }


async def _mute(readers: list[_Reader]) -> dict[str, object]:
    for reader in readers:
        reader.simulator.hang()
    # A round or a read interval already on the line finishes; wait until nothing moves.
    last = _count(readers)["readers"]
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < QUIET_S:
        await asyncio.sleep(0.05)
        now = _count(readers)["readers"]
        if now != last:
            last, quiet_since = now, time.monotonic()
    return _count(readers)


async def _serve_commands(readers: list[_Reader]) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    portal = [
        next(r for r in readers if isinstance(r.simulator, kind))
        for kind in (R2000Simulator, ThingMagicSimulator)
        if any(isinstance(r.simulator, kind) for r in readers)
    ]
    entered: list[str] = []
    while line := await stdin.readline():
        command, *words = line.decode().split()
        answer: dict[str, object] = {"ok": True}
        if command == "enter":
            for reader in portal:
                for epc in words:
                    reader.simulator.add_tag(epc, antenna_port=1, rssi_dbm=PORTAL_RSSI_DBM)
            entered += words
        elif command == "leave":
            for reader in portal:
                for epc in entered:
                    reader.simulator.remove_tag(epc)
            entered.clear()
        elif command == "count":
            answer = _count(readers)
        elif command == "mute":
            answer = await _mute(readers)
        else:
            answer = {"error": f"unknown command {command!r}"}
        print(json.dumps(answer), flush=True)


async def serve(args: argparse.Namespace) -> None:
    readers = _build(args)
    print(
        json.dumps(
            {
                "readers": [
                    {"name": r.name, "kind": kind, "url": r.endpoint.url}
                    for r, (_, kind) in zip(
                        readers, reader_names(args.r2000, args.thingmagic), strict=True
                    )
                ]
            }
        ),
        flush=True,
    )
    async with asyncio.TaskGroup() as group:
        serving = [group.create_task(r.endpoint.run(), name=f"reader-{r.name}") for r in readers]
        await _serve_commands(readers)
        for task in serving:
            task.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._readers", description=__doc__)
    parser.add_argument("--r2000", type=int, default=12)
    parser.add_argument("--thingmagic", type=int, default=4)
    parser.add_argument("--field-tags", type=int, default=16)
    parser.add_argument("--baudrate", type=int, default=115_200)
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
