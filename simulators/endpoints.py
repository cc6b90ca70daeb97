"""Where a simulated device is reached: a pseudo-terminal or a TCP port, and its plug.

Owns the two transports every simulator serves on (R2000, ThingMagic, scanner, gate I/O,
relay board) and :func:`serve_pty` / :func:`serve_tcp`, which serve a device with a fault plan,
for any device whose behaviour is a *conversation*: an ``async`` callable given ``receive``
(bytes from the host; ``b""`` when the host has gone) and ``send`` (bytes to the host), which
runs until the host goes or it is cancelled. Also :class:`Changes`, how a test waits for a
simulator's state.

Invariants:
- a :class:`PtyEndpoint` keeps its own descriptor of the port side open for its lifetime, so
  the port behaves like a device that stays plugged in while a host closes and reopens it;
  closing the endpoint is the unplug, and a host that still has the port open reads EIO;
- with ``link`` set, a :class:`PtyEndpoint` publishes its port under that path as a symbolic
  link while it lives — as udev does with ``/dev/serial/by-id/…`` — so unplugging one
  endpoint and plugging in a new one with the same ``link`` is a replug at a stable url;
- an endpoint's ``run()`` releases its descriptors / sockets (and its link) however it ends,
  cancellation included.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import tty
from collections.abc import Callable
from pathlib import Path

from simulators.faults import (
    NO_FAULTS,
    Conversation,
    Endpoint,
    FaultLayer,
    FaultPlan,
    Replugging,
    stable_link,
    with_faults,
)

_READ_SIZE = 4096


class PtyEndpoint:
    """A device behind a pseudo-terminal: ``url`` is the serial port a host opens."""

    def __init__(self, converse: Conversation, link: Path | None = None) -> None:
        self._converse = converse
        self._link = link
        self._master, self._slave = os.openpty()
        try:
            # Raw mode on the port side: no echo (the device would read its own bytes back),
            # no CR/LF mapping (a scanner's suffix must arrive as sent), no XON/XOFF.
            tty.setraw(self._slave)
            os.set_blocking(self._master, False)
            self._path = os.ttyname(self._slave)
            if link is not None:
                # Atomic replace: a host never sees the link missing or half-made.
                staging = link.with_name(f".{link.name}.{os.getpid()}")
                staging.unlink(missing_ok=True)
                staging.symlink_to(self._path)
                staging.replace(link)
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> str:
        """The pty's slave path, e.g. ``/dev/pts/7``."""
        return self._path

    @property
    def url(self) -> str:
        """What a reader's ``url`` setting names to reach this endpoint."""
        return str(self._link) if self._link is not None else self._path

    async def run(self) -> None:
        """Converse with the host until cancelled; the pty is gone afterwards."""
        try:
            await self._converse(self._receive, self._send)
        finally:
            self.close()

    def close(self) -> None:
        """Unplug: remove the link (if it is still ours) and close the pty (idempotent)."""
        link = self._link
        if link is not None and self._master >= 0:
            with contextlib.suppress(OSError):
                if os.readlink(link) == self._path:
                    link.unlink()
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    async def _receive(self) -> bytes:
        return await read_fd(self._master)

    async def _send(self, data: bytes) -> None:
        await write_fd(self._master, data)


class TcpEndpoint:
    """A device behind a TCP listener, as a serial-to-Ethernet converter would expose it."""

    def __init__(self, server: asyncio.Server, connections: set[asyncio.Task[None]]) -> None:
        self._server = server
        self._connections = connections
        self._host, self._port = server.sockets[0].getsockname()[:2]

    @classmethod
    async def listen(cls, converse: Conversation, host: str, port: int) -> TcpEndpoint:
        """Bind and start accepting; each connection is a conversation until it closes."""
        connections: set[asyncio.Task[None]] = set()
        server = await asyncio.start_server(
            functools.partial(_serve_connection, converse, connections), host, port
        )
        return cls(server, connections)

    @property
    def port(self) -> int:
        """The bound port (the one picked by the OS when 0 was asked for)."""
        return int(self._port)

    @property
    def url(self) -> str:
        """What a reader's ``url`` setting names to reach this endpoint."""
        return f"socket://{self._host}:{self._port}"

    async def run(self) -> None:
        """Serve until cancelled; then stop listening and drop every connection."""
        try:
            # Not serve_forever(): from Python 3.12 its cleanup waits for the clients to
            # disconnect, and they are only disconnected below.
            await asyncio.get_running_loop().create_future()
        finally:
            self._server.close()
            for task in self._connections:
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()


async def _serve_connection(
    converse: Conversation,
    connections: set[asyncio.Task[None]],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    task = asyncio.current_task()
    assert task is not None  # asyncio runs every client callback in a task
    connections.add(task)

    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    try:
        await converse(functools.partial(reader.read, _READ_SIZE), send)
    except ConnectionError:
        pass  # the host went away mid-reply: for a device that is not an error
    finally:
        connections.discard(task)
        writer.close()


def serve_pty(converse: Conversation, faults: FaultPlan = NO_FAULTS) -> tuple[Endpoint, FaultLayer]:
    """Serve ``converse`` on a pty with ``faults``; the layer tells what was applied.

    When the plan unplugs, the url is a stable link that follows the device to each new pty.
    """
    layer = FaultLayer(faults)
    faulty = with_faults(converse, layer)
    if not faults.unplugs:
        return PtyEndpoint(faulty), layer
    link = stable_link()

    async def replug() -> Endpoint:
        return PtyEndpoint(faulty, link)

    return Replugging(faults, PtyEndpoint(faulty, link), replug, link), layer


async def serve_tcp(
    converse: Conversation, host: str, port: int, faults: FaultPlan = NO_FAULTS
) -> tuple[Endpoint, FaultLayer]:
    """Serve ``converse`` on ``host:port`` with ``faults``; a replug listens on the same port."""
    layer = FaultLayer(faults)
    faulty = with_faults(converse, layer)
    first = await TcpEndpoint.listen(faulty, host, port)
    if not faults.unplugs:
        return first, layer

    async def replug() -> Endpoint:
        return await TcpEndpoint.listen(faulty, host, first.port)

    return Replugging(faults, first, replug), layer


class Changes:
    """Lets a test wait until a simulator's state satisfies a condition, without polling."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        """The state changed: wake every waiter so that it looks again."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds (at once if it already does)."""
        while not condition():
            await self._changed.wait()


async def read_fd(fd: int) -> bytes:
    """Read what a non-blocking descriptor has, waiting until it has something."""
    while True:
        try:
            return os.read(fd, _READ_SIZE)
        except BlockingIOError:
            await _until_ready(fd, writable=False)


async def write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking descriptor."""
    pending = memoryview(data)
    while pending:
        try:
            pending = pending[os.write(fd, pending) :]
        except BlockingIOError:
            await _until_ready(fd, writable=True)


async def _until_ready(fd: int, *, writable: bool) -> None:
    """Wait until ``fd`` is readable (or writable), via the loop's selector."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    watch, unwatch = (
        (loop.add_writer, loop.remove_writer) if writable else (loop.add_reader, loop.remove_reader)
    )
    watch(fd, _resolve, ready)
    try:
        await ready
    finally:
        unwatch(fd)


def _resolve(future: asyncio.Future[None]) -> None:
    # The selector may report the fd again before the waiting task runs and unregisters it.
    if not future.done():
        future.set_result(None)
