"""``edgegate-sim``: device simulators for a shell, a demo or a test harness.

Owns the command line (one subcommand per simulated device kind) and the control channel on
stdin. Adding a device means adding a ``_add_<device>`` parser whose ``run`` default builds
the simulator and serves it through :func:`_serve`.

Invariants:
- stdout carries exactly one line, the url a reader's ``url`` setting should name (a pty
  path or ``socket://HOST:PORT``), flushed before the first request can be answered;
- control commands arrive one per line on stdin; a bad line is reported on stderr and
  ignored; stdin reaching its end stops the commands, not the simulator;
- SIGINT (Ctrl-C) and SIGTERM stop serving, release the endpoint and exit 0; a bad argument
  exits 2 and a failure to serve exits 1, each with one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from edgegate.devices.recorder import RecordingError
from simulators import backoffice, scenario
from simulators.endpoints import serve_pty, serve_tcp
from simulators.faults import add_fault_arguments, fault_plan_from_args
from simulators.gateio import GateIoSimulator
from simulators.lcus import LcusSimulator
from simulators.r2000 import R2000Simulator
from simulators.replay import Replayer
from simulators.scanner import ScannerSimulator
from simulators.thingmagic import ThingMagicSimulator

PROG = "edgegate-sim"
_R2000_COMMANDS = "add EPC [PORT [RSSI]] | remove EPC | clear | fault PORT | repair PORT"
_THINGMAGIC_COMMANDS = "add EPC [PORT [RSSI [TID]]] | remove EPC | clear | hang | recover"
_SCANNER_COMMANDS = "scan TEXT (<GS> for a GS separator)"
_GATE_IO_COMMANDS = "beam A|B|loop on|off"
_SUFFIXES = {"cr": b"\r", "crlf": b"\r\n", "lf": b"\n"}


class _Endpoint(Protocol):
    @property
    def url(self) -> str: ...

    async def run(self) -> None: ...


class _UsageError(Exception):
    """A bad argument, found after parsing (e.g. a malformed --tag)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass  # SIGINT / SIGTERM: the endpoint has already been released
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Run a simulated device.")
    devices = parser.add_subparsers(dest="device", required=True, metavar="DEVICE")
    _add_r2000(devices)
    _add_thingmagic(devices)
    _add_replay(devices)
    _add_scanner(devices)
    _add_gate_io(devices)
    _add_lcus(devices)
    _add_scenario(devices)
    backoffice.add_command(devices)
    return parser


def _add_scenario(devices: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = devices.add_parser(
        "scenario",
        help="replay a whole passage on every simulated device of a gate (TOML timeline)",
        description="Start one simulator per device of the scenario, print the [[readers]] "
        "config that reaches them, then play the timeline (after Enter, or --start-after).",
    )
    parser.add_argument("scenario", nargs="?", help="a shipped scenario's name or a TOML file")
    parser.add_argument("--list", action="store_true", help="list the shipped scenarios")
    parser.add_argument("--start-after", type=float, metavar="S", help="play after S seconds")
    parser.add_argument("--speed", type=float, default=1.0, help="time scale (2 = twice as fast)")
    parser.set_defaults(run=_run_scenario)


def _run_scenario(args: argparse.Namespace) -> None:
    shipped = scenario.shipped_scenarios()
    if args.list or not args.scenario:
        for name, path in shipped.items():
            print(f"{name:24} {scenario.load_scenario(path).name}")
        return
    path = shipped.get(args.scenario) or Path(args.scenario)
    try:
        timeline = scenario.load_scenario(path)
    except scenario.ScenarioError as exc:
        raise _UsageError(str(exc)) from None
    if args.speed <= 0:
        raise _UsageError("--speed must be positive")

    async def run() -> None:
        async with scenario.Rig(timeline.devices) as rig:
            print(f"# {timeline.name}: mode = {timeline.mode!r}; readers for edgegate.toml:")
            for reader in rig.reader_configs():
                print("[[readers]]\n" + "".join(f"{k} = {v!r}\n" for k, v in reader.items()))
            sys.stdout.flush()
            if args.start_after is None:
                await asyncio.to_thread(sys.stdin.readline)
            else:
                await asyncio.sleep(args.start_after)
            await scenario.play(timeline, rig, speed=args.speed)
            print(f"# played {len(timeline.steps)} steps; devices stay up until Ctrl-C", flush=True)
            await asyncio.Event().wait()

    asyncio.run(run())


def _add_r2000(devices: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = devices.add_parser(
        "r2000",
        help="Impinj Indy R2000 reader (PROTOCOLS.md §1)",
        description=f"Serve a simulated R2000 reader. Commands on stdin: {_R2000_COMMANDS}.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--pty", action="store_true", help="serve on a new pseudo-terminal (the default)"
    )
    where.add_argument(
        "--tcp", metavar="HOST:PORT", type=_host_port, help="serve on a TCP port (0 = any)"
    )
    parser.add_argument(
        "--tag",
        metavar="EPC[:PORT[:RSSI]]",
        action="append",
        default=[],
        help="a tag in the field at start (port 1-based, default 1; RSSI dBm, default -55)",
    )
    parser.add_argument("--antennas", type=int, default=4, help="antenna ports, 1-8 (default 4)")
    parser.add_argument(
        "--faulty-antenna",
        metavar="PORT",
        type=int,
        action="append",
        default=[],
        help="a port whose antenna is missing at start (repeatable)",
    )
    parser.add_argument(
        "--round-delay",
        type=float,
        default=0.02,
        metavar="SECONDS",
        help="time an inventory round takes (default 0.02)",
    )
    add_fault_arguments(parser)
    parser.set_defaults(run=_run_r2000)


def _run_r2000(args: argparse.Namespace) -> None:
    try:
        faults = fault_plan_from_args(args)
        simulator = R2000Simulator(antenna_ports=args.antennas, round_delay_s=args.round_delay)
        for spec in args.tag:
            _add_tag(simulator, spec.split(":"))
        for port in args.faulty_antenna:
            simulator.set_antenna_fault(port)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None

    async def serve() -> None:
        endpoint, _ = (
            serve_pty(simulator.converse, faults)
            if args.tcp is None
            else await serve_tcp(simulator.converse, args.tcp[0], args.tcp[1], faults)
        )
        await _serve(endpoint, lambda line: _r2000_command(simulator, line))

    asyncio.run(serve())


def _add_thingmagic(devices: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = devices.add_parser(
        "thingmagic",
        help="ThingMagic / JADAK Mercury module (PROTOCOLS.md §2)",
        description=(
            f"Serve a simulated Mercury module. Commands on stdin: {_THINGMAGIC_COMMANDS}."
        ),
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--pty", action="store_true", help="serve on a new pseudo-terminal (the default)"
    )
    where.add_argument(
        "--tcp", metavar="HOST:PORT", type=_host_port, help="serve on a TCP port (0 = any)"
    )
    parser.add_argument(
        "--tag",
        metavar="EPC[:PORT[:RSSI[:TID]]]",
        action="append",
        default=[],
        help="a tag in the field at start (port 1-based, default 1; RSSI dBm, default -55)",
    )
    parser.add_argument("--antennas", type=int, default=4, help="antenna ports, 1-15 (default 4)")
    parser.add_argument(
        "--read-interval",
        type=float,
        default=0.02,
        metavar="SECONDS",
        help="pause between two reads of the field while streaming (default 0.02; 0 = flat out)",
    )
    add_fault_arguments(parser)
    parser.set_defaults(run=_run_thingmagic)


def _run_thingmagic(args: argparse.Namespace) -> None:
    try:
        faults = fault_plan_from_args(args)
        simulator = ThingMagicSimulator(
            antenna_ports=args.antennas, read_interval_s=args.read_interval
        )
        for spec in args.tag:
            _add_thingmagic_tag(simulator, spec.split(":"))
    except ValueError as exc:
        raise _UsageError(str(exc)) from None

    async def serve() -> None:
        endpoint, _ = (
            serve_pty(simulator.converse, faults)
            if args.tcp is None
            else await serve_tcp(simulator.converse, args.tcp[0], args.tcp[1], faults)
        )
        await _serve(endpoint, lambda line: _thingmagic_command(simulator, line))

    asyncio.run(serve())


def _thingmagic_command(simulator: ThingMagicSimulator, line: str) -> None:
    words = line.split()
    try:
        match words:
            case []:
                return
            case ["add", *tag]:
                _add_thingmagic_tag(simulator, tag)
            case ["remove", epc]:
                simulator.remove_tag(epc)
            case ["clear"]:
                simulator.clear()
            case ["hang"]:
                simulator.hang()
            case ["recover"]:
                simulator.recover()
            case _:
                raise ValueError(f"unknown command {line.strip()!r} (use: {_THINGMAGIC_COMMANDS})")
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)


def _add_thingmagic_tag(simulator: ThingMagicSimulator, parts: Sequence[str]) -> None:
    """``EPC [PORT [RSSI [TID]]]``, as words of a command or fields of a ``--tag``."""
    if not 1 <= len(parts) <= 4:
        raise ValueError(f"expected EPC [PORT [RSSI [TID]]], got {' '.join(parts)!r}")
    epc, *rest = parts
    port = int(rest[0]) if rest else 1
    rssi = int(rest[1]) if len(rest) > 1 else -55
    simulator.add_tag(epc, port, rssi, tid=rest[2] if len(rest) > 2 else None)


def _add_replay(devices: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = devices.add_parser(
        "replay",
        help="play a flight recording back as a device",
        description=(
            "Play back a file written by a reader's `record` setting, as the device that was "
            "recorded. When the recording holds the host's requests, each recorded reply "
            "waits for the new host's request."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="an edgegate.flightrec/1 recording")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--pty", action="store_true", help="serve on a new pseudo-terminal (the default)"
    )
    where.add_argument(
        "--tcp", metavar="HOST:PORT", type=_host_port, help="serve on a TCP port (0 = any)"
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, metavar="X", help="play X times as fast (default 1)"
    )
    parser.add_argument("--loop", action="store_true", help="start again at the end")
    add_fault_arguments(parser)
    parser.set_defaults(run=_run_replay)


def _run_replay(args: argparse.Namespace) -> None:
    try:
        faults = fault_plan_from_args(args)
        replayer = Replayer.from_file(args.file, speed=args.speed, loop=args.loop)
    except (ValueError, RecordingError) as exc:
        raise _UsageError(str(exc)) from None

    async def serve() -> None:
        endpoint, _ = (
            serve_pty(replayer.converse, faults)
            if args.tcp is None
            else await serve_tcp(replayer.converse, args.tcp[0], args.tcp[1], faults)
        )
        await _serve(endpoint, _no_commands)

    asyncio.run(serve())


def _no_commands(line: str) -> None:
    if line.strip():
        print(f"{PROG}: replay takes no commands, ignored {line.strip()!r}", file=sys.stderr)


def _add_scanner(devices: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = devices.add_parser(
        "scanner",
        help="QR / barcode scanner in USB CDC mode (PROTOCOLS.md §3)",
        description=f"Serve a simulated serial scanner. Commands on stdin: {_SCANNER_COMMANDS}.",
    )
    _add_where(parser)
    parser.add_argument(
        "--suffix", choices=sorted(_SUFFIXES), default="cr", help="sent after each code"
    )
    add_fault_arguments(parser)
    parser.set_defaults(run=_run_scanner)


def _run_scanner(args: argparse.Namespace) -> None:
    try:
        faults = fault_plan_from_args(args)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    scanner = ScannerSimulator(_SUFFIXES[args.suffix])

    def command(line: str) -> None:
        match line.strip().split(maxsplit=1):
            case []:
                pass
            case ["scan", text]:
                scanner.scan(text.replace("<GS>", "\x1d"))
            case _:
                print(f"{PROG}: unknown command {line.strip()!r} (use: {_SCANNER_COMMANDS})",
                      file=sys.stderr)  # fmt: skip

    async def serve() -> None:
        endpoint, _ = (
            serve_pty(scanner.converse, faults)
            if args.tcp is None
            else await serve_tcp(scanner.converse, args.tcp[0], args.tcp[1], faults)
        )
        await _serve(endpoint, command)

    asyncio.run(serve())


def _add_gate_io(devices: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = devices.add_parser(
        "gate-io",
        help="Modbus RTU I/O module: beams in, coils out (PROTOCOLS.md §4)",
        description=(
            "Serve a simulated I/O module (a pymodbus RTU server): inputs A=0, B=1, loop=2; "
            f"coils barrier=0, green=1, red=2, buzzer=3. Commands on stdin: {_GATE_IO_COMMANDS}. "
            "Coil changes are printed on stderr."
        ),
    )
    _add_where(parser)
    parser.add_argument("--unit", type=int, default=1, help="Modbus unit id (default 1)")
    add_fault_arguments(parser)
    parser.set_defaults(run=_run_gate_io)


def _run_gate_io(args: argparse.Namespace) -> None:
    try:
        faults = fault_plan_from_args(args)
        module = GateIoSimulator(unit=args.unit)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    # set_beam talks to the pymodbus datastore, which is async: lines queue for one task.
    lines: asyncio.Queue[str] = asyncio.Queue()

    async def obey() -> None:
        while True:
            line = await lines.get()
            match line.split():
                case []:
                    pass
                case ["beam", name, ("on" | "off") as state]:
                    try:
                        await module.set_beam(name, state == "on")
                    except ValueError as exc:
                        print(f"{PROG}: {exc}", file=sys.stderr)
                case _:
                    print(f"{PROG}: unknown command {line.strip()!r} (use: {_GATE_IO_COMMANDS})",
                          file=sys.stderr)  # fmt: skip

    async def report_coils(shown: dict[str, bool]) -> None:
        # The state to compare with is taken before the endpoint exists: a host may switch
        # a coil before this task first runs.
        def changed() -> bool:
            return module.coils() != shown

        while True:
            await module.until(changed)
            shown = module.coils()
            states = " ".join(f"{name}={'on' if on else 'off'}" for name, on in shown.items())
            # When, on the system-wide monotonic clock: a benchmark times the gate with it
            # without counting how long its own event loop took to read this line.
            at = f"at_mono_s={time.monotonic():.6f}"
            print(f"{PROG}: coils {states} {at}", file=sys.stderr, flush=True)

    async def serve() -> None:
        async with module, asyncio.TaskGroup() as group:
            group.create_task(obey(), name="gate-io-commands")
            group.create_task(report_coils(module.coils()), name="gate-io-coils")
            endpoint, _ = (
                serve_pty(module.converse, faults)
                if args.tcp is None
                else await serve_tcp(module.converse, args.tcp[0], args.tcp[1], faults)
            )
            await _serve(endpoint, lines.put_nowait)

    asyncio.run(serve())


def _add_lcus(devices: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = devices.add_parser(
        "lcus",
        help="LCUS USB relay board (PROTOCOLS.md §4)",
        description="Serve a simulated relay board. Relay changes are printed on stderr.",
    )
    _add_where(parser)
    parser.add_argument("--channels", type=int, default=4, help="relays (default 4)")
    add_fault_arguments(parser)
    parser.set_defaults(run=_run_lcus)


def _run_lcus(args: argparse.Namespace) -> None:
    try:
        faults = fault_plan_from_args(args)
        board = LcusSimulator(channels=args.channels)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None

    async def report_relays(shown: dict[int, bool]) -> None:
        # The state to compare with is taken before the endpoint exists: a host may switch
        # a relay before this task first runs.
        def changed(relays: dict[int, bool]) -> bool:
            return relays != shown

        while True:
            await board.until(changed)
            shown = board.relays()
            states = " ".join(f"{ch}={'on' if on else 'off'}" for ch, on in shown.items())
            print(f"{PROG}: relays {states}", file=sys.stderr, flush=True)

    async def serve() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(report_relays(board.relays()), name="lcus-relays")
            endpoint, _ = (
                serve_pty(board.converse, faults)
                if args.tcp is None
                else await serve_tcp(board.converse, args.tcp[0], args.tcp[1], faults)
            )
            await _serve(endpoint, _no_commands)

    asyncio.run(serve())


def _add_where(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--pty", action="store_true", help="serve on a new pseudo-terminal (the default)"
    )
    where.add_argument(
        "--tcp", metavar="HOST:PORT", type=_host_port, help="serve on a TCP port (0 = any)"
    )


def _r2000_command(simulator: R2000Simulator, line: str) -> None:
    words = line.split()
    try:
        match words:
            case []:
                return
            case ["add", *tag]:
                _add_tag(simulator, tag)
            case ["remove", epc]:
                simulator.remove_tag(epc)
            case ["clear"]:
                simulator.clear()
            case ["fault", port]:
                simulator.set_antenna_fault(int(port))
            case ["repair", port]:
                simulator.set_antenna_fault(int(port), faulty=False)
            case _:
                raise ValueError(f"unknown command {line.strip()!r} (use: {_R2000_COMMANDS})")
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)


def _add_tag(simulator: R2000Simulator, parts: Sequence[str]) -> None:
    """``EPC [PORT [RSSI]]``, as words of a command or fields of a ``--tag``."""
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"expected EPC [PORT [RSSI]], got {' '.join(parts)!r}")
    epc, *numbers = parts
    simulator.add_tag(epc, *(int(number) for number in numbers))


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def _serve(endpoint: _Endpoint, on_command: Callable[[str], None]) -> None:
    """Announce the endpoint's url and serve it until SIGINT / SIGTERM cancels this task."""
    loop = asyncio.get_running_loop()
    serving = asyncio.current_task()
    assert serving is not None  # asyncio.run() runs the coroutine in a task
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, serving.cancel)
    with _stdin_lines(loop, on_command):
        print(endpoint.url, flush=True)
        await endpoint.run()


@contextlib.contextmanager
def _stdin_lines(loop: asyncio.AbstractEventLoop, on_line: Callable[[str], None]) -> Iterator[None]:
    """Feed stdin to ``on_line`` a line at a time while the block runs.

    A plain ``add_reader`` rather than ``connect_read_pipe``: the latter switches stdin to
    non-blocking mode, which leaks into the shell that shares the terminal after we exit.
    """
    fd = sys.stdin.fileno()
    pending = bytearray()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""  # e.g. EIO from a terminal that hung up: as good as the end
        if not data:
            loop.remove_reader(fd)
            return
        pending.extend(data)
        *lines, rest = pending.split(b"\n")
        pending[:] = rest
        for line in lines:
            on_line(line.decode(errors="replace"))

    try:
        loop.add_reader(fd, readable)
    except PermissionError:  # epoll refuses regular files, e.g. `< commands.txt`
        print(f"{PROG}: stdin cannot be watched; commands are disabled", file=sys.stderr)
    try:
        yield
    finally:
        loop.remove_reader(fd)
