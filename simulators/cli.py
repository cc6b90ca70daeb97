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
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from simulators.r2000 import R2000Simulator

PROG = "edgegate-sim"
_R2000_COMMANDS = "add EPC [PORT [RSSI]] | remove EPC | clear"


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
    return parser


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
    parser.add_argument("--antennas", type=int, default=4, help="antenna ports (default 4)")
    parser.add_argument(
        "--round-delay",
        type=float,
        default=0.02,
        metavar="SECONDS",
        help="time an inventory round takes (default 0.02)",
    )
    parser.set_defaults(run=_run_r2000)


def _run_r2000(args: argparse.Namespace) -> None:
    try:
        simulator = R2000Simulator(antenna_ports=args.antennas, round_delay_s=args.round_delay)
        for spec in args.tag:
            _add_tag(simulator, spec.split(":"))
    except ValueError as exc:
        raise _UsageError(str(exc)) from None

    async def serve() -> None:
        endpoint = simulator.open_pty() if args.tcp is None else await simulator.open_tcp(*args.tcp)
        await _serve(endpoint, lambda line: _r2000_command(simulator, line))

    asyncio.run(serve())


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
