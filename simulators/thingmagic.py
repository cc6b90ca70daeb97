"""A simulated ThingMagic / JADAK Mercury module (PROTOCOLS.md §2), served on a pty or TCP.

Owns a field of tags and the module behaviour the daemon relies on: the set-up commands
(version, baud rate, protocol, region, antennas, read power, reader options) answered with
their settings kept; continuous reading — a 2F start is acknowledged, then tag records
stream with the metadata the start asked for (and the TID, when it embedded a read of the
TID bank), with a 0400 keep-alive after every search cycle that finds nothing — and its stop.
Bytes come from :mod:`edgegate.wire.thingmagic`'s device role, so the simulator and the
daemon can only disagree about the protocol if the codec disagrees with PROTOCOLS.md, whose
golden vectors and real captures the codec tests check on their own.

Invariants:
- every request is answered by exactly one response carrying its opcode, except a stop
  while streaming: after the last record it is answered by ``FF 00 22 04 00 84 E0`` and then
  ``FF 01 2F 00 00 02 30 E6``, and no record follows (§2);
- while streaming, each read interval sends one record per field tag in front of an enabled
  antenna; when none is there, a keep-alive goes out once per on-time of the start command;
- frames never interleave on the line: every write of a connection is serialised;
- a module keeps streaming until told to stop, also while nobody has its port open (as a
  real module does while the daemon restarts); a hung simulator neither answers nor streams
  while its port stays open, like a wedged module.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from edgegate.wire import gen2
from edgegate.wire.thingmagic import (
    GEN2_PROTOCOL,
    MemoryBank,
    MetadataFlag,
    Opcode,
    ProtocolError,
    ReadingPlan,
    Request,
    StatusWord,
    StopReading,
    TagRecord,
    ThingMagicDevice,
    decode_reading_command,
    encode_keepalive,
    encode_response,
    encode_start_ack,
    encode_stop_ack,
    encode_tag_record,
)
from simulators.endpoints import PtyEndpoint, TcpEndpoint
from simulators.faults import Receive, Send

# The version reply of the M6e Nano in the captures (connect.log): bootloader, hardware,
# firmware date and version, supported protocols.
VERSION_DATA = bytes.fromhex("1412080030000002201503100103014700000010")
# Read filter key of set reader optional params (9A 01 0C xx, §2).
_READ_FILTER_KEY = b"\x01\x0c"
# How often an empty field, or a hung module, looks again.
_POLL_S = 0.005
# Data lengths of the fixed-size set-up commands.
_DATA_LEN: dict[int, int] = {
    Opcode.SET_BAUD_RATE: 4,
    Opcode.SET_TAG_PROTOCOL: 2,
    Opcode.SET_REGION: 1,
    Opcode.SET_READ_TX_POWER: 2,
}


@dataclass(frozen=True, slots=True)
class FieldTag:
    """A tag in front of one antenna port (1-based, as labelled on the module)."""

    epc: bytes
    antenna_port: int
    rssi_dbm: int
    tid: bytes | None = None

    @property
    def epc_hex(self) -> str:
        return self.epc.hex().upper()


class ThingMagicSimulator:
    """The module's state and behaviour, independent of how it is connected.

    Records carry ``frequency_khz`` and ``gpio`` as given; the defaults (923.2 MHz, inputs
    0F) are what the captured M6e Nano reported, so a field tag yields the captured bytes.
    """

    def __init__(
        self,
        *,
        antenna_ports: int = 4,
        frequency_khz: int = 923_200,
        max_power_cdbm: int = 3000,
        gpio: int = 0x0F,
        read_interval_s: float = 0.02,
    ) -> None:
        if not 1 <= antenna_ports <= 0x0F:
            raise ValueError(f"antenna_ports must be 1-15, got {antenna_ports}")
        if not 0 <= frequency_khz <= 0xFFFFFF:
            raise ValueError(f"frequency must fit in 3 bytes of kHz, got {frequency_khz}")
        if not 0 <= gpio <= 0xFF:
            raise ValueError(f"gpio must be one byte, got {gpio}")
        if read_interval_s < 0:
            raise ValueError(f"read_interval_s must not be negative, got {read_interval_s}")
        self._antenna_ports = antenna_ports
        self._frequency_khz = frequency_khz
        self._max_power_cdbm = max_power_cdbm
        self._gpio = gpio
        self._read_interval_s = read_interval_s
        self._field: dict[tuple[bytes, int], FieldTag] = {}
        self._statuses: deque[int] = deque()
        self.antennas: tuple[int, ...] = (1,)
        self.protocol: int | None = None
        self.region: int | None = None
        self.read_power_cdbm = 2700
        self.read_filter = True
        self.reading: ReadingPlan | None = None
        """The plan being streamed, or ``None`` while the module is not reading."""
        self.hung = False
        self.frames_sent = 0
        self.records_sent = 0
        self.keepalives_sent = 0

    @property
    def read_interval_s(self) -> float:
        """The pause between two read intervals that found tags."""
        return self._read_interval_s

    @property
    def tags(self) -> tuple[FieldTag, ...]:
        """The tags in the field, in the order they were placed."""
        return tuple(self._field.values())

    def add_tag(
        self, epc_hex: str, antenna_port: int = 1, rssi_dbm: int = -55, tid: str | None = None
    ) -> None:
        """Place a tag in front of ``antenna_port`` (or change its RSSI / TID there).

        A tag may sit in front of several ports at once, as in overlapping fields.
        """
        epc = _parse_hex("EPC", epc_hex)
        gen2.pc_for_epc(epc)  # validates the length before the tag can reach a record
        tid_bytes = None if tid is None else _parse_hex("TID", tid)
        if tid_bytes is not None and (len(tid_bytes) % 2 or not tid_bytes):
            raise ValueError(f"a TID is whole 16-bit words, got {len(tid_bytes)} bytes")
        if not 1 <= antenna_port <= self._antenna_ports:
            raise ValueError(f"antenna port must be 1-{self._antenna_ports}, got {antenna_port}")
        if not -128 <= rssi_dbm <= 0:
            raise ValueError(f"RSSI must be -128..0 dBm, got {rssi_dbm}")
        self._field[epc, antenna_port] = FieldTag(epc, antenna_port, rssi_dbm, tid_bytes)

    def remove_tag(self, epc_hex: str) -> None:
        """Take a tag out of the field, in front of every port (no-op if it is not there)."""
        epc = _parse_hex("EPC", epc_hex)
        self._field = {key: tag for key, tag in self._field.items() if tag.epc != epc}

    def clear(self) -> None:
        """Empty the field."""
        self._field.clear()

    def hang(self) -> None:
        """Wedge the module: requests are ignored and nothing streams, the port stays open."""
        self.hung = True

    def recover(self) -> None:
        """Un-wedge the module: it answers again and resumes any reading it was doing."""
        self.hung = False

    def report_status(self, status: int) -> None:
        """Make the stream carry a 22 frame with ``status`` (e.g. 0504, 0503) next."""
        self._statuses.append(status)

    @property
    def pending_statuses(self) -> tuple[int, ...]:
        """Statuses reported but not streamed yet."""
        return tuple(self._statuses)

    def answer(self, request: Request) -> bytes:
        """The response to a set-up request (anything but 2F), updating the settings."""
        opcode, data = request.opcode, request.data
        if len(data) != _DATA_LEN.get(opcode, len(data)):
            return encode_response(opcode, StatusWord.WRONG_NUMBER_OF_DATA)
        status = StatusWord.OK
        reply = b""
        match opcode:
            case Opcode.VERSION:
                reply = VERSION_DATA
            case Opcode.SET_BAUD_RATE | Opcode.SET_PROTOCOL_PARAM | Opcode.CLEAR_TAG_ID_BUFFER:
                pass
            case Opcode.SET_TAG_PROTOCOL:
                protocol = int.from_bytes(data, "big")
                if protocol == GEN2_PROTOCOL:
                    self.protocol = protocol
                else:
                    status = StatusWord.INVALID_PROTOCOL
            case Opcode.SET_REGION:
                self.region = data[0]
            case Opcode.SET_ANTENNA_PORT:
                status = self._set_antennas(data)
            case Opcode.SET_READ_TX_POWER:
                power = int.from_bytes(data, "big")
                if power > self._max_power_cdbm:
                    status = StatusWord.POWER_TOO_HIGH
                else:
                    self.read_power_cdbm = power
            case Opcode.SET_READER_OPTIONAL_PARAMS:
                if data[:2] == _READ_FILTER_KEY and len(data) == 3:
                    self.read_filter = bool(data[2])
            case _:
                status = StatusWord.UNIMPLEMENTED_OPCODE
        return encode_response(opcode, status, reply)

    async def converse(self, receive: Receive, send: Send) -> None:
        """Answer requests read by ``receive`` until it returns ``b""`` (end of stream)."""
        try:
            async with asyncio.TaskGroup() as tasks:
                await _Conversation(self, send, tasks).serve(receive)
        except* ConnectionError:
            pass  # the host went away mid-stream: for a device that is not an error

    def open_pty(self, link: Path | None = None) -> PtyEndpoint:
        """A new pseudo-terminal for this module; ``url`` is its serial port — ``link``, a
        stable symlink to it as udev makes under /dev/serial/by-id/, when given."""
        return PtyEndpoint(self.converse, link)

    async def open_tcp(self, host: str = "127.0.0.1", port: int = 0) -> TcpEndpoint:
        """Listen on ``host:port`` (0 = any free port, see ``TcpEndpoint.port``)."""
        return await TcpEndpoint.listen(self.converse, host, port)

    def cycle(self, plan: ReadingPlan, timestamp_ms: int) -> list[bytes]:
        """What one read interval streams: pending statuses, then a record per read."""
        frames = [
            encode_response(Opcode.READ_TAG_ID_MULTIPLE, self._statuses.popleft())
            for _ in range(len(self._statuses))
        ]
        for tag in self._field.values():
            if tag.antenna_port in self.antennas:
                frames.append(encode_tag_record(self._record(plan, tag, timestamp_ms)))
                self.records_sent += 1
        return frames

    def _record(self, plan: ReadingPlan, tag: FieldTag, timestamp_ms: int) -> TagRecord:
        flags = plan.metadata
        port = tag.antenna_port
        return TagRecord(
            pc=gen2.pc_for_epc(tag.epc),
            epc=tag.epc,
            read_count=1 if flags & MetadataFlag.READ_COUNT else None,
            rssi_dbm=tag.rssi_dbm if flags & MetadataFlag.RSSI else None,
            antenna=port << 4 | port if flags & MetadataFlag.ANTENNA else None,
            frequency_khz=self._frequency_khz if flags & MetadataFlag.FREQUENCY else None,
            timestamp_ms=timestamp_ms & 0xFFFFFFFF if flags & MetadataFlag.TIMESTAMP else None,
            phase=0 if flags & MetadataFlag.PHASE else None,
            protocol=GEN2_PROTOCOL if flags & MetadataFlag.PROTOCOL else None,
            data=_embedded_data(plan, tag) if flags & MetadataFlag.DATA else None,
            gpio=self._gpio if flags & MetadataFlag.GPIO else None,
            search_flags=plan.search_flags,
        )

    def _set_antennas(self, data: bytes) -> StatusWord:
        # Two forms (Mercury API): TX RX for one antenna, or 02 then TX RX per antenna.
        pairs = data if len(data) == 2 else data[1:] if data[:1] == b"\x02" else b""
        if not pairs or len(pairs) % 2:
            return StatusWord.WRONG_NUMBER_OF_DATA
        ports = []
        for tx, rx in zip(pairs[::2], pairs[1::2], strict=True):
            if tx != rx or not 1 <= tx <= self._antenna_ports:
                return StatusWord.INVALID_ANTENNA_CONFIG
            ports.append(tx)
        self.antennas = tuple(ports)
        return StatusWord.OK


class _Conversation:
    """One connection: its codec, its serialised writes, and its stream while reading."""

    def __init__(
        self, simulator: ThingMagicSimulator, send: Send, tasks: asyncio.TaskGroup
    ) -> None:
        self._simulator = simulator
        self._raw_send = send
        self._tasks = tasks
        self._writing = asyncio.Lock()
        self._streamer: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def serve(self, receive: Receive) -> None:
        device = ThingMagicDevice()
        try:
            while data := await receive():
                for request in device.receive_data(data):
                    if not self._simulator.hung:
                        await self._handle(request)
        finally:
            # The host is gone: nobody is left to stop the stream, or to read it.
            if self._streamer is not None:
                self._streamer.cancel()
                self._simulator.reading = None

    async def _handle(self, request: Request) -> None:
        if request.opcode != Opcode.MULTI_PROTOCOL_TAG_OP:
            await self._send(self._simulator.answer(request))
            return
        try:
            command = decode_reading_command(request.data)
        except ProtocolError:
            await self._send(encode_response(request.opcode, StatusWord.INVALID_PARAMETER_VALUE))
            return
        was_streaming = await self._end_stream()
        if isinstance(command, StopReading):
            # §2: the stream's last word is a keep-alive, then the stop is acknowledged.
            if was_streaming:
                await self._send(encode_keepalive() + encode_stop_ack(), frames=2)
            else:
                await self._send(encode_stop_ack())
            return
        await self._send(encode_start_ack())
        self._simulator.reading = command
        self._stopping = asyncio.Event()
        self._streamer = self._tasks.create_task(
            self._stream(command, self._stopping), name="thingmagic-sim-stream"
        )

    async def _end_stream(self) -> bool:
        """Stop streaming after the frame being written, if streaming; say whether it was."""
        streamer, self._streamer = self._streamer, None
        if streamer is None:
            return False
        self._stopping.set()
        await streamer
        self._simulator.reading = None
        return True

    async def _stream(self, plan: ReadingPlan, stopping: asyncio.Event) -> None:
        simulator = self._simulator
        loop = asyncio.get_running_loop()
        started = quiet_since = loop.time()
        on_time_s = plan.on_time_ms / 1000
        while not stopping.is_set():
            now = loop.time()
            if simulator.hung:
                quiet_since = now
                await _pause(stopping, _POLL_S)
                continue
            frames = simulator.cycle(plan, round((now - started) * 1000))
            if frames:
                await self._send(b"".join(frames), frames=len(frames))
                quiet_since = loop.time()
                await _pause(stopping, simulator.read_interval_s)
            elif now - quiet_since >= on_time_s:
                await self._send(encode_keepalive())
                simulator.keepalives_sent += 1
                quiet_since = now
            else:
                await _pause(stopping, min(_POLL_S, quiet_since + on_time_s - now))

    async def _send(self, data: bytes, *, frames: int = 1) -> None:
        async with self._writing:
            await self._raw_send(data)
        self._simulator.frames_sent += frames


async def _pause(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if a stop arrives meanwhile."""
    if seconds <= 0:
        await asyncio.sleep(0)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stopping.wait()


def _embedded_data(plan: ReadingPlan, tag: FieldTag) -> bytes:
    """The embedded read's result: the TID words asked for, or nothing if the tag lacks
    them (the module still streams the EPC, with an empty data field)."""
    read = plan.embedded_read
    if read is None or read.bank != MemoryBank.TID or tag.tid is None:
        return b""
    start = read.word_address * 2
    end = start + read.word_count * 2
    return tag.tid[start:end] if end <= len(tag.tid) else b""


def _parse_hex(what: str, text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{what} must be hex digits, got {text!r}") from None
