"""One ThingMagic / JADAK Mercury module kept reading: set it up, stream, reconnect on faults.

Owns the conversation with one configured module (PROTOCOLS.md §2) and turns it into
observations: a :class:`TagSeen` per streamed tag record (with the TID when the module reads
it alongside the EPC), :class:`ReaderUp` / :class:`ReaderDown` as the module becomes
trustworthy or stops being so. Bytes are framed and checked by
:class:`edgegate.wire.thingmagic.ThingMagicHost`; this module only decides what to send and
when.

Invariants:
- a fresh link starts with "stop reading": a module is powered by the gate, not by the
  daemon, and keeps streaming across a daemon restart or a host-side reconnect. Any 2F
  answer ends that step (an idle module answers it with an error status), as the Mercury
  API does;
- set-up requests go one at a time, each waiting for the response with its opcode; frames
  of a stream still draining are skipped, never reported. The firmware version is read on
  every link (for health) but a module that does not tell it stays usable;
- tags are reported only after the module has acknowledged the start of continuous
  reading, with the 1-based antenna port that energised them (the TX nibble);
- ReaderUp is emitted at that acknowledgement; ReaderDown once per outage — a failed open,
  a lost link or EOF, a refused set-up request, a fault status while streaming, no answer
  within ``reply_timeout_s``, or no frame at all within ``keepalive_timeout_s`` while
  streaming (an idle module still sends a 0400 keep-alive every search cycle) — and the two
  alternate;
- on cancellation the module is told to stop before the port is closed (best effort,
  bounded by ``reply_timeout_s``), so it is not left streaming into a closed port; every
  link is closed before the session reconnects or ends, and no task is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from edgegate.config import ThingMagicReaderConfig
from edgegate.devices.base import DeviceStats
from edgegate.devices.link import Backoff, LinkError, open_link
from edgegate.devices.upkeep import push_back, release_link
from edgegate.gate.model import Observation, ReaderDown, ReaderUp, TagSeen
from edgegate.wire.thingmagic import (
    EmbeddedRead,
    HostEvent,
    MemoryBank,
    Opcode,
    ProtocolError,
    ReadingCommand,
    ReadingPlan,
    Response,
    StatusWord,
    TagRecord,
    ThingMagicHost,
    decode_version,
)

BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0
_READ_SIZE = 4096
# Statuses of a streamed 22 frame that leave reading running: a search cycle's summary (OK,
# no data), the keep-alive, and the module throttling itself while it cools down (§2).
_STREAMING_STATUSES = frozenset(
    {StatusWord.OK, StatusWord.NO_TAGS_FOUND, StatusWord.TEMPERATURE_THROTTLE}
)

log = structlog.get_logger(__name__)


class _ReaderError(Exception):
    """The module's reads cannot be trusted any more; the message is the reason."""


@dataclass(slots=True)
class _Link:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    host: ThingMagicHost
    pending: deque[HostEvent] = field(default_factory=deque)
    throttled: bool = False


class ThingMagicSession:
    """Runs one module until cancelled, emitting observations through ``emit``."""

    def __init__(
        self,
        config: ThingMagicReaderConfig,
        emit: Callable[[Observation], None],
        clock: Callable[[], float] = time.monotonic,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self._config = config
        self._emit = emit
        self._clock = clock
        self._backoff = backoff or Backoff(BACKOFF_BASE_S, BACKOFF_CAP_S)
        self._plan = ReadingPlan(
            on_time_ms=config.on_time_ms,
            embedded_read=(
                EmbeddedRead(MemoryBank.TID, 0, config.tid_words) if config.read_tid else None
            ),
        )
        self._up: bool | None = None  # None until the first attempt has reported either way
        self._host: ThingMagicHost | None = None
        # Counters of links already closed; the open link's host holds the rest.
        self._frames = self._checksum_errors = self._malformed = self._resyncs = 0
        self._last_seen_mono_s: float | None = None
        self._firmware: str | None = None

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def stats(self) -> DeviceStats:
        host = self._host
        return DeviceStats(
            connected=self._up is True,
            frames=self._frames + (host.frames if host else 0),
            checksum_errors=self._checksum_errors + (_checksum_errors(host) if host else 0),
            malformed=self._malformed + (_malformed(host) if host else 0),
            resyncs=self._resyncs + (host.resyncs if host else 0),
            last_seen_mono_s=self._last_seen_mono_s,
            firmware=self._firmware,
        )

    async def run(self) -> None:
        """Connect, stream, and reconnect with backoff, forever (until cancelled)."""
        while True:
            try:
                await self._connect_and_stream()
            except _ReaderError as fault:
                self._report_down(str(fault))
            await asyncio.sleep(self._backoff.next_delay())

    async def _connect_and_stream(self) -> None:
        try:
            reader, writer = await open_link(
                self._config.url, self._config.baudrate, self._config.record
            )
        except LinkError as exc:
            raise _ReaderError(str(exc)) from exc
        link = _Link(reader, writer, ThingMagicHost())
        self._host = link.host
        try:
            await self._set_up(link)
            try:
                await self._start_reading(link)
                await self._stream(link)
            except asyncio.CancelledError:
                await self._stop_reading(link)
                raise
        except OSError as exc:  # includes serial.SerialException, e.g. EIO on unplug
            raise _ReaderError(f"link error: {exc}") from exc
        finally:
            self._retire(link.host)
            await release_link(writer)

    async def _set_up(self, link: _Link) -> None:
        host, config = link.host, self._config
        # Whatever the module says to the stop, it is not streaming afterwards.
        await self._transact(link, host.stop_reading(), Opcode.MULTI_PROTOCOL_TAG_OP)
        await self._read_version(link)
        steps: list[tuple[Opcode, bytes, str]] = []
        if config.region is not None:
            steps.append(
                (Opcode.SET_REGION, host.set_region(config.region), f"region {config.region}")
            )
        steps.append((Opcode.SET_TAG_PROTOCOL, host.set_protocol_gen2(), "protocol Gen2"))
        steps.append(
            (
                Opcode.SET_ANTENNA_PORT,
                host.set_antennas(config.antennas),
                f"antennas {list(config.antennas)}",
            )
        )
        if config.read_power_cdbm is not None:
            power = config.read_power_cdbm
            steps.append(
                (Opcode.SET_READ_TX_POWER, host.set_read_power(power), f"power {power} cdBm")
            )
        # Off: the filter would hold back repeats, which are what proves a tag still there.
        steps.append((Opcode.SET_READER_OPTIONAL_PARAMS, host.disable_read_filter(), "filter"))
        for opcode, request, what in steps:
            response = await self._transact(link, request, opcode)
            if not response.ok:
                raise _ReaderError(f"reader refused {what}: {_describe(response.status)}")

    async def _read_version(self, link: _Link) -> None:
        """Learn the firmware version, once per link: the module may have been replaced.

        Informational only (health, logs): a module that does not tell stays usable.
        """
        reply = await self._transact(link, link.host.version(), Opcode.VERSION)
        try:
            if not reply.ok:
                raise ProtocolError(_describe(reply.status))
            self._firmware = decode_version(reply.data).firmware_version
        except ProtocolError as exc:
            self._firmware = None
            log.warning("reader.firmware_unknown", reader=self._config.name, reason=str(exc))
        else:
            log.info("reader.firmware", reader=self._config.name, firmware=self._firmware)

    async def _start_reading(self, link: _Link) -> None:
        ack = await self._transact(
            link, link.host.start_reading(self._plan), Opcode.MULTI_PROTOCOL_TAG_OP
        )
        if not (ack.ok and ack.data[:1] == bytes((ReadingCommand.START,))):
            raise _ReaderError(f"reader refused continuous reading: {_describe_response(ack)}")
        self._report_up()

    async def _stream(self, link: _Link) -> None:
        """Report what streams in until the module faults or falls silent."""
        while link.pending:
            self._on_stream_event(link, link.pending.popleft())
        timeout_s = self._config.keepalive_timeout_s
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                while True:
                    frames = link.host.frames
                    events = await self._receive(link)
                    if link.host.frames != frames:
                        push_back(deadline, timeout_s)
                    for event in events:
                        self._on_stream_event(link, event)
        except TimeoutError:
            if not deadline.expired():
                raise  # a socket's own ETIMEDOUT: an OSError like any other link error
            raise _ReaderError(f"no frame while reading within {timeout_s} s") from None

    def _on_stream_event(self, link: _Link, event: HostEvent) -> None:
        if isinstance(event, TagRecord):
            self._tag_seen(event)
            # Tags stream: the link works, so the next outage backs off from scratch.
            self._backoff.reset()
            return
        if event.opcode == Opcode.READ_TAG_ID_MULTIPLE and event.status in _STREAMING_STATUSES:
            self._backoff.reset()
            throttled = event.status == StatusWord.TEMPERATURE_THROTTLE
            if throttled and not link.throttled:
                log.warning("reader.throttled", reader=self._config.name, reason="temperature")
            link.throttled = throttled
            return
        if event.opcode in (Opcode.READ_TAG_ID_MULTIPLE, Opcode.MULTI_PROTOCOL_TAG_OP):
            # A fault status ends a module's reading; a 2F here means it stopped.
            raise _ReaderError(f"reader stopped reading: {_describe_response(event)}")
        log.debug("reader.unexpected_response", reader=self._config.name, opcode=event.opcode)

    async def _stop_reading(self, link: _Link) -> None:
        """Ask the module to stop streaming into a port we are about to close.

        Best effort and bounded: records still draining are dropped, not reported — the
        session is ending.
        """
        with contextlib.suppress(OSError, TimeoutError, _ReaderError):
            async with asyncio.timeout(self._config.reply_timeout_s):
                link.writer.write(link.host.stop_reading())
                await link.writer.drain()
                while True:
                    event = await self._next_event(link)
                    if isinstance(event, Response) and event.opcode == (
                        Opcode.MULTI_PROTOCOL_TAG_OP
                    ):
                        return

    async def _transact(self, link: _Link, request: bytes, opcode: int) -> Response:
        """Send ``request``; return the first response carrying ``opcode``.

        The timeout bounds the whole exchange: a module that keeps streaming instead of
        answering is as down as a silent one (§2: a stop drains within ~0.7 s).
        """
        timeout_s = self._config.reply_timeout_s
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                link.writer.write(request)
                await link.writer.drain()
                while True:
                    event = await self._next_event(link)
                    if isinstance(event, Response) and event.opcode == opcode:
                        return event
        except TimeoutError:
            if not deadline.expired():
                raise
            raise _ReaderError(f"no reply to command {opcode:02X} within {timeout_s} s") from None

    async def _next_event(self, link: _Link) -> HostEvent:
        while not link.pending:
            link.pending.extend(await self._receive(link))
        return link.pending.popleft()

    async def _receive(self, link: _Link) -> list[HostEvent]:
        data = await link.reader.read(_READ_SIZE)
        if not data:
            raise _ReaderError("link closed by the far end")
        frames = link.host.frames
        events = link.host.receive_data(data)
        if link.host.frames != frames:
            self._last_seen_mono_s = self._clock()
        return events

    def _tag_seen(self, record: TagRecord) -> None:
        # Both are asked for in every start (MetadataFlag.ALL); without them a read cannot
        # be placed or filtered, so a module that omits them is misconfigured, not a tag.
        if not record.tx_port or record.rssi_dbm is None:
            raise _ReaderError(f"reader omits antenna or RSSI (metadata {record.metadata:04X})")
        tid = record.data.hex().upper() if self._config.read_tid and record.data else None
        self._emit(
            TagSeen(
                reader=self._config.name,
                epc=record.epc_hex,
                antenna=record.tx_port,
                rssi_dbm=float(record.rssi_dbm),
                at_mono_s=self._clock(),
                tid=tid,
            )
        )

    def _report_up(self) -> None:
        if self._up is True:
            return
        self._up = True
        log.info("reader.up", reader=self._config.name, url=self._config.url)
        self._emit(ReaderUp(reader=self._config.name, at_mono_s=self._clock()))

    def _report_down(self, reason: str) -> None:
        if self._up is False:
            log.debug("reader.still_down", reader=self._config.name, reason=reason)
            return
        self._up = False
        log.warning("reader.down", reader=self._config.name, url=self._config.url, reason=reason)
        self._emit(ReaderDown(reader=self._config.name, reason=reason, at_mono_s=self._clock()))

    def _retire(self, host: ThingMagicHost) -> None:
        self._frames += host.frames
        self._checksum_errors += _checksum_errors(host)
        self._malformed += _malformed(host)
        self._resyncs += host.resyncs
        self._host = None


def _checksum_errors(host: ThingMagicHost) -> int:
    # Both CRCs guard a read: the message CRC and the tag's own CRC-16 (§2).
    return host.crc_errors + host.tag_crc_errors


def _malformed(host: ThingMagicHost) -> int:
    return host.malformed + host.malformed_records


def _describe(status: int) -> str:
    try:
        return f"status {status:04X} ({StatusWord(status).name.lower().replace('_', ' ')})"
    except ValueError:
        return f"status {status:04X}"


def _describe_response(response: Response) -> str:
    if response.ok:
        return f"unexpected {response.opcode:02X} reply {response.data.hex().upper() or '(empty)'}"
    return _describe(response.status)
