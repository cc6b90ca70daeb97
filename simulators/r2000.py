"""A simulated Impinj Indy R2000 reader (PROTOCOLS.md §1), served on a pty or a TCP port.

Owns a field of tags and the reader behaviour the daemon relies on: real-time (89) and
session (8B) inventory rounds, set/get work antenna (74/75) and firmware version (72). Bytes
are produced by :mod:`edgegate.wire.r2000`'s device role, so the simulator and the daemon
can only disagree about the protocol if the codec disagrees with PROTOCOLS.md.

Invariants:
- an inventory round answers one tag frame per field tag on the current work antenna, then
  exactly one end-of-round frame whose ``AntID`` is that antenna (§1, table);
- replies carry the simulator's own address; a request for another address gets no answer;
- the frequency index of every tag frame is fixed (default 7 = 902.0 MHz), so a known tag
  yields a byte-exact frame, e.g. the §1 golden vector;
- requests on one connection are answered strictly in order, one at a time, like the device;
- an endpoint's ``run()`` releases its descriptors / sockets however it ends, cancellation
  included.
"""

from __future__ import annotations

import asyncio
import functools
import os
import tty
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edgegate.wire.r2000 import (
    BROADCAST,
    INVENTORY_COMMANDS,
    Cmd,
    R2000Device,
    Request,
    Status,
    encode_error,
    encode_frame,
    encode_round_end,
    encode_tag,
    pc_for_epc,
)

_READ_SIZE = 4096
# Data length of each inventory request (§1): 89 carries Repeat; 8B Session, Target, Repeat.
_INVENTORY_DATA_LEN = {Cmd.REAL_TIME_INVENTORY: 1, Cmd.SESSION_INVENTORY: 3}

Receive = Callable[[], Awaitable[bytes]]
Send = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class FieldTag:
    """A tag in front of one antenna port (1-based, as labelled on the reader)."""

    epc: bytes
    antenna_port: int
    rssi_dbm: int

    @property
    def epc_hex(self) -> str:
        return self.epc.hex().upper()


class R2000Simulator:
    """The reader's state and behaviour, independent of how it is connected."""

    def __init__(
        self,
        *,
        address: int = 0x01,
        antenna_ports: int = 4,
        freq_index: int = 7,
        firmware: tuple[int, int] = (0x01, 0x08),
        round_delay_s: float = 0.02,
    ) -> None:
        if not 0 <= address < BROADCAST:
            raise ValueError(f"a reader address is 00-FE, got {address:#04x}")
        if not 1 <= antenna_ports <= 8:
            raise ValueError(f"antenna_ports must be 1-8, got {antenna_ports}")
        if not 0 <= freq_index <= 0x3F:
            raise ValueError(f"freq_index must be 0-63, got {freq_index}")
        if round_delay_s < 0:
            raise ValueError(f"round_delay_s must not be negative, got {round_delay_s}")
        self._address = address
        self._antenna_ports = antenna_ports
        self._freq_index = freq_index
        self._firmware = bytes(firmware)
        self._round_delay_s = round_delay_s
        self._work_antenna = 0
        self._field: dict[tuple[bytes, int], FieldTag] = {}
        self.frames_sent = 0
        self.tags_sent = 0
        self.rounds = 0

    @property
    def tags(self) -> tuple[FieldTag, ...]:
        """The tags in the field, in the order they were placed."""
        return tuple(self._field.values())

    @property
    def work_antenna(self) -> int:
        """The 0-based wire antenna the next round reads on (set by command 74)."""
        return self._work_antenna

    def add_tag(self, epc_hex: str, antenna_port: int = 1, rssi_dbm: int = -55) -> None:
        """Place a tag in front of ``antenna_port`` (or change its RSSI there).

        A tag may sit in front of several ports at once, as in overlapping fields.
        """
        epc = _parse_epc(epc_hex)
        pc_for_epc(epc)  # validates the length before the tag can reach a round
        if not 1 <= antenna_port <= self._antenna_ports:
            raise ValueError(f"antenna port must be 1-{self._antenna_ports}, got {antenna_port}")
        if not -129 <= rssi_dbm <= -2:
            raise ValueError(f"RSSI must be -129..-2 dBm, got {rssi_dbm}")
        self._field[epc, antenna_port] = FieldTag(epc, antenna_port, rssi_dbm)

    def remove_tag(self, epc_hex: str) -> None:
        """Take a tag out of the field, in front of every port (no-op if it is not there)."""
        epc = _parse_epc(epc_hex)
        self._field = {key: tag for key, tag in self._field.items() if tag.epc != epc}

    def clear(self) -> None:
        """Empty the field."""
        self._field.clear()

    def answer(self, request: Request) -> list[bytes]:
        """The frames the reader sends back for ``request``, updating its state."""
        if request.address not in (self._address, BROADCAST):
            return []
        cmd = request.cmd
        if cmd in INVENTORY_COMMANDS:
            frames = self._round(request)
        elif cmd == Cmd.SET_WORK_ANTENNA:
            frames = [self._set_work_antenna(request.data)]
        elif cmd == Cmd.GET_WORK_ANTENNA:
            frames = [encode_frame(self._address, cmd, bytes((self._work_antenna,)))]
        elif cmd == Cmd.GET_FIRMWARE_VERSION:
            frames = [encode_frame(self._address, cmd, self._firmware)]
        else:
            frames = [encode_error(self._address, cmd, Status.FAIL)]
        self.frames_sent += len(frames)
        return frames

    async def reply(self, request: Request) -> bytes:
        """:meth:`answer`, after the time an inventory round takes on air.

        The delay is what keeps a host that re-issues 89 after every round (§1: there is
        no stream-forever mode) from spinning both processes at 100 % CPU.
        """
        if request.cmd in INVENTORY_COMMANDS and self._round_delay_s:
            await asyncio.sleep(self._round_delay_s)
        return b"".join(self.answer(request))

    async def converse(self, receive: Receive, send: Send) -> None:
        """Answer requests read by ``receive`` until it returns ``b""`` (end of stream)."""
        device = R2000Device()
        while data := await receive():
            for request in device.receive_data(data):
                await send(await self.reply(request))

    def open_pty(self) -> PtyEndpoint:
        """A new pseudo-terminal for this reader; ``path`` is its serial port."""
        return PtyEndpoint(self)

    async def open_tcp(self, host: str = "127.0.0.1", port: int = 0) -> TcpEndpoint:
        """Listen on ``host:port`` (0 = any free port, see ``TcpEndpoint.port``)."""
        return await TcpEndpoint.listen(self, host, port)

    def _round(self, request: Request) -> list[bytes]:
        cmd = request.cmd
        if len(request.data) != _INVENTORY_DATA_LEN[Cmd(cmd)]:
            return [encode_error(self._address, cmd, Status.INVALID_PARAMETER)]
        antenna = self._work_antenna
        reads = [tag for tag in self._field.values() if tag.antenna_port == antenna + 1]
        frames = [
            encode_tag(
                self._address,
                cmd,
                self._freq_index,
                antenna,
                pc_for_epc(tag.epc),
                tag.epc,
                tag.rssi_dbm,
            )
            for tag in reads
        ]
        frames.append(
            encode_round_end(self._address, cmd, antenna, self._read_rate(len(reads)), len(reads))
        )
        self.rounds += 1
        self.tags_sent += len(reads)
        return frames

    def _read_rate(self, reads: int) -> int:
        # ReadRate is reads per second (§1); a simulated round lasts round_delay_s.
        if not self._round_delay_s:
            return 0
        return min(0xFFFF, round(reads / self._round_delay_s))

    def _set_work_antenna(self, data: bytes) -> bytes:
        cmd = Cmd.SET_WORK_ANTENNA
        if len(data) != 1:
            return encode_error(self._address, cmd, Status.INVALID_PARAMETER)
        if data[0] >= self._antenna_ports:
            return encode_error(self._address, cmd, Status.ANTENNA_MISSING)
        self._work_antenna = data[0]
        return encode_frame(self._address, cmd, bytes((Status.SUCCESS,)))


class PtyEndpoint:
    """The reader behind a pseudo-terminal: ``path`` is the serial port a host opens.

    The endpoint keeps its own descriptor of the slave (port) side open for its whole
    lifetime. Without it, whenever the last host closes the port — as the daemon does
    while it reconnects — the kernel hangs up the master and every master read fails with
    EIO until the port is reopened. Holding it makes the port behave like a real reader
    that stays plugged in while nobody has it open. Closing the endpoint is the unplug:
    a host that still has the port open then reads EIO.
    """

    def __init__(self, simulator: R2000Simulator) -> None:
        self._simulator = simulator
        self._master, self._slave = os.openpty()
        try:
            # Raw mode on the port side: no echo (the simulator would read its own replies
            # back as requests), no CR/LF mapping and no XON/XOFF, since 0x11 and 0x13 are
            # ordinary bytes in R2000 frames (0x11 is the "fail" status, §1).
            tty.setraw(self._slave)
            os.set_blocking(self._master, False)
            self._path = os.ttyname(self._slave)
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
        return self._path

    async def run(self) -> None:
        """Answer the host until cancelled; the pty is gone afterwards."""
        try:
            await self._simulator.converse(self._receive, self._send)
        finally:
            self.close()

    def close(self) -> None:
        """Close both sides of the pty (idempotent)."""
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    async def _receive(self) -> bytes:
        while True:
            try:
                return os.read(self._master, _READ_SIZE)
            except BlockingIOError:
                await _until_ready(self._master, writable=False)

    async def _send(self, data: bytes) -> None:
        pending = memoryview(data)
        while pending:
            try:
                pending = pending[os.write(self._master, pending) :]
            except BlockingIOError:
                await _until_ready(self._master, writable=True)


class TcpEndpoint:
    """The reader behind a TCP listener, as a serial-to-Ethernet converter would expose it."""

    def __init__(self, server: asyncio.Server, connections: set[asyncio.Task[None]]) -> None:
        self._server = server
        self._connections = connections
        self._host, self._port = server.sockets[0].getsockname()[:2]

    @classmethod
    async def listen(cls, simulator: R2000Simulator, host: str, port: int) -> TcpEndpoint:
        """Bind and start accepting; each connection is answered until it closes."""
        connections: set[asyncio.Task[None]] = set()
        server = await asyncio.start_server(
            functools.partial(_serve_connection, simulator, connections), host, port
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
    simulator: R2000Simulator,
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
        await simulator.converse(functools.partial(reader.read, _READ_SIZE), send)
    except ConnectionError:
        pass  # the host went away mid-reply: for a device that is not an error
    finally:
        connections.discard(task)
        writer.close()


def _parse_epc(epc_hex: str) -> bytes:
    try:
        return bytes.fromhex(epc_hex)
    except ValueError:
        raise ValueError(f"an EPC is hex digits, got {epc_hex!r}") from None


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
