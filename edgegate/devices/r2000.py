"""One R2000 reader kept talking: open the link, run inventory rounds, reconnect on faults.

Owns the conversation with one configured reader (PROTOCOLS.md §1) and turns it into
observations: a :class:`TagSeen` per tag frame, :class:`ReaderUp` / :class:`ReaderDown` as
the reader becomes trustworthy or stops being so. Bytes are framed and checked by
:class:`edgegate.wire.r2000.R2000Host`; this module only decides what to send and when.

Invariants:
- exactly one request is in flight; the next is sent only after the reply that closes it
  (§1: there is no stream-forever mode, the host re-issues 89 / 8B after every round);
- no inventory runs on a port until the reader has confirmed switching to it (74), so a
  tag is never reported on the wrong antenna; antennas are 1-based ports (R2000 wire 0 =
  port 1, DESIGN.md §6);
- ReaderUp is emitted when a fresh link's first request succeeds, ReaderDown once per
  outage (a failed open, a lost link, a reply timeout, or a reader-reported fault), and
  the two alternate;
- every link is closed before the session reconnects or ends, cancellation included; the
  session never leaves a task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from edgegate.config import R2000ReaderConfig
from edgegate.devices.base import DeviceStats
from edgegate.devices.link import Backoff, LinkError, open_link
from edgegate.gate.model import Observation, ReaderDown, ReaderUp, TagSeen
from edgegate.wire.r2000 import (
    Cmd,
    ErrorReply,
    HostEvent,
    R2000Host,
    Reply,
    RoundEnd,
    Status,
    TagRead,
)

BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0
_READ_SIZE = 4096
_TARGETS = {"A": 0, "B": 1}

log = structlog.get_logger(__name__)


class _ReaderError(Exception):
    """The reader's reads cannot be trusted any more; the message is the reported reason."""


@dataclass(frozen=True, slots=True)
class _Link:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    host: R2000Host
    pending: deque[HostEvent] = field(default_factory=deque)


class R2000Session:
    """Runs one reader until cancelled, emitting observations through ``emit``."""

    def __init__(
        self,
        config: R2000ReaderConfig,
        emit: Callable[[Observation], None],
        clock: Callable[[], float] = time.monotonic,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self._config = config
        self._emit = emit
        self._clock = clock
        self._backoff = backoff or Backoff(BACKOFF_BASE_S, BACKOFF_CAP_S)
        self._up: bool | None = None  # None until the first attempt has reported either way
        self._host: R2000Host | None = None
        # Counters of links already closed; the open link's host holds the rest.
        self._frames = self._checksum_errors = self._malformed = self._resyncs = 0
        self._last_seen_mono_s: float | None = None

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def stats(self) -> DeviceStats:
        host = self._host
        return DeviceStats(
            connected=self._up is True,
            frames=self._frames + (host.frames if host else 0),
            checksum_errors=self._checksum_errors + (host.checksum_errors if host else 0),
            malformed=self._malformed + (host.malformed if host else 0),
            resyncs=self._resyncs + (host.resyncs if host else 0),
            last_seen_mono_s=self._last_seen_mono_s,
        )

    async def run(self) -> None:
        """Connect, poll, and reconnect with backoff, forever (until cancelled)."""
        while True:
            try:
                await self._connect_and_poll()
            except _ReaderError as fault:
                self._report_down(str(fault))
            await asyncio.sleep(self._backoff.next_delay())

    async def _connect_and_poll(self) -> None:
        try:
            reader, writer = await open_link(self._config.url, self._config.baudrate)
        except LinkError as exc:
            raise _ReaderError(str(exc)) from exc
        link = _Link(reader, writer, R2000Host(self._config.address))
        self._host = link.host
        try:
            await self._poll(link)
        except OSError as exc:  # includes serial.SerialException, e.g. EIO on unplug
            raise _ReaderError(f"link error: {exc}") from exc
        finally:
            self._retire(link.host)
            await _close(writer)

    async def _poll(self, link: _Link) -> None:
        work_antenna: int | None = None  # unknown on a fresh link: the reader may have rebooted
        while True:
            for port in self._config.antennas:
                antenna = port - 1
                if antenna != work_antenna:
                    await self._set_work_antenna(link, antenna)
                    work_antenna = antenna
                await self._inventory_round(link)
            # A full cycle over every antenna worked: the next outage backs off from scratch.
            self._backoff.reset()

    async def _set_work_antenna(self, link: _Link, antenna: int) -> None:
        reply = await self._transact(
            link, link.host.set_work_antenna(antenna), Cmd.SET_WORK_ANTENNA
        )
        # 74 answers one status byte (§1); anything but success leaves the old antenna active.
        if not (isinstance(reply, Reply) and reply.data == bytes((Status.SUCCESS,))):
            raise _ReaderError(f"reader refused antenna port {antenna + 1}: {_describe(reply)}")
        self._report_up()

    async def _inventory_round(self, link: _Link) -> None:
        config = self._config
        if config.session is None:
            cmd = Cmd.REAL_TIME_INVENTORY
            request = link.host.inventory(config.repeat)
        else:
            cmd = Cmd.SESSION_INVENTORY
            request = link.host.session_inventory(
                config.session, _TARGETS[config.target], config.repeat
            )
        closing = await self._transact(link, request, cmd)
        # "No tag" only says the field was empty; any other error means the round did not
        # look at the field, so reads cannot be trusted (DESIGN.md §8, READER_FAULT).
        if isinstance(closing, ErrorReply) and closing.code != Status.NO_TAG:
            raise _ReaderError(f"inventory failed: {_describe(closing)}")

    async def _transact(
        self, link: _Link, request: bytes, cmd: Cmd
    ) -> RoundEnd | ErrorReply | Reply:
        """Send ``request``; emit the tags that stream back; return the reply that closes it.

        The timeout bounds the silence between decoded frames, not the whole exchange, so
        a long round with many tags is never cut short.
        """
        timeout_s = self._config.reply_timeout_s
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                link.writer.write(request)
                await link.writer.drain()
                while True:
                    event = await self._next_event(link)
                    deadline.reschedule(loop.time() + timeout_s)
                    if isinstance(event, TagRead):
                        self._tag_seen(event)
                    elif event.cmd == cmd:
                        return event
        except TimeoutError:
            if not deadline.expired():
                raise  # a socket's own ETIMEDOUT: an OSError like any other link error
            raise _ReaderError(f"no reply to command {cmd:02X} within {timeout_s} s") from None

    async def _next_event(self, link: _Link) -> HostEvent:
        while not link.pending:
            data = await link.reader.read(_READ_SIZE)
            if not data:
                raise _ReaderError("link closed by the far end")
            events = link.host.receive_data(data)
            if events:
                self._last_seen_mono_s = self._clock()
            link.pending.extend(events)
        return link.pending.popleft()

    def _tag_seen(self, read: TagRead) -> None:
        self._emit(
            TagSeen(
                reader=self._config.name,
                epc=read.epc_hex,
                antenna=read.antenna + 1,
                rssi_dbm=float(read.rssi_dbm),
                at_mono_s=self._clock(),
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

    def _retire(self, host: R2000Host) -> None:
        self._frames += host.frames
        self._checksum_errors += host.checksum_errors
        self._malformed += host.malformed
        self._resyncs += host.resyncs
        self._host = None


async def _close(writer: asyncio.StreamWriter) -> None:
    # abort(), not close(): nothing queued for a reader we are abandoning is worth waiting
    # for, and a flush towards a wedged port could block forever. A transport that already
    # closed itself on an error must not be closed twice (pyserial-asyncio-fast would run
    # its teardown again on a released port).
    if not writer.transport.is_closing():
        writer.transport.abort()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _describe(reply: RoundEnd | ErrorReply | Reply) -> str:
    if isinstance(reply, ErrorReply):
        code = reply.code
    elif isinstance(reply, Reply) and len(reply.data) == 1:
        code = reply.data[0]
    else:
        return f"unexpected reply {reply!r}"
    try:
        return f"status {code:02X} ({Status(code).name.lower().replace('_', ' ')})"
    except ValueError:
        return f"status {code:02X}"
