"""One R2000 reader kept talking: open the link, run inventory rounds, reconnect on faults.

Owns the conversation with one configured reader (PROTOCOLS.md §1) and turns it into
observations: a :class:`TagSeen` per tag frame, :class:`ReaderUp` / :class:`ReaderDown` as
the reader becomes trustworthy or stops being so. Bytes are framed and checked by
:class:`edgegate.wire.r2000.R2000Host`; this module only decides what to send and when.

On every link the session first reads the firmware version (72, logged and kept in
:attr:`R2000Session.firmware`) and, when ``rf_power_dbm`` is set, sets the output power (76)
and reads it back (77). Then it runs the configured ``inventory``: real-time (89) or session
(8B) rounds, one per antenna after selecting it (74), or fast-switch (8A) rounds that visit
every configured antenna in one command.

Antenna faults (status 22, "antenna missing": a 74 refusal, an 89 / 8B round closed by it,
or an 8A fault frame) are counted, logged and kept per port until that port's next round
succeeds. With ``antenna_fault = "down"`` (the default, fail closed) any faulty configured
antenna makes the reader down: its reads no longer cover what the gate was configured to
see, so passages must carry READER_FAULT. With ``"degrade"`` the reader is down only while
every configured antenna is faulty (redundant portal antennas). Either way the session
stays connected and keeps polling, so a repaired antenna brings the reader back up.

Invariants:
- exactly one request is in flight; the next is sent only after the reply that closes it
  (§1: there is no stream-forever mode, the host re-issues 89 / 8A / 8B after every round);
- no 89 / 8B round runs on a port until the reader has confirmed switching to it (74), so a
  tag is never reported on the wrong antenna; antennas are 1-based ports (R2000 wire 0 =
  port 1, DESIGN.md §6), and ports 5-8 of an 8-port reader arrive via the RSSI bit (§1);
- ReaderUp is emitted once a fresh link's set-up has succeeded and its first antenna is
  selected, unless antenna faults hold it down; ReaderDown once per outage (a failed open, a
  lost link, a reply timeout, a reader-reported fault, or antenna faults as above); the two
  alternate;
- every link is closed before the session reconnects or ends, cancellation included; the
  session never leaves a task behind.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto

import structlog

from edgegate.config import R2000ReaderConfig
from edgegate.devices.base import DeviceStats
from edgegate.devices.link import Backoff, LinkError, open_link
from edgegate.devices.upkeep import push_back, release_link
from edgegate.gate.model import Observation, ReaderDown, ReaderUp, TagSeen
from edgegate.wire.r2000 import (
    AntennaFault,
    Cmd,
    ErrorReply,
    FastSwitchEnd,
    HostEvent,
    R2000Error,
    R2000Host,
    Reply,
    RoundEnd,
    Status,
    TagRead,
    decode_firmware_version,
    decode_rf_power,
)

BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0
_READ_SIZE = 4096
# A reply whose frame was damaged on the line (noise, a UART overrun) never completes: the
# reader has answered and waits for the next command. Once bytes have been dropped since
# the last good frame, or a frame has started and stalled, this much silence means the
# reply is lost — ask again at once rather than wait out reply_timeout_s and call the
# reader down. The reader writes a frame in one go, so a frame stalled this long at 115200
# baud (~2 ms for the largest) is not still arriving.
LOST_REPLY_QUIET_S = 0.1
# Setup commands (firmware, power, antenna) are asked again this often before giving up.
LOST_REPLY_ATTEMPTS = 3
_TARGETS = {"A": 0, "B": 1}
_SUCCESS = bytes((Status.SUCCESS,))


class _Lost(Enum):
    """The reply that closes an exchange was damaged on the line and will not come."""

    REPLY = auto()


LOST = _Lost.REPLY

Closing = RoundEnd | FastSwitchEnd | ErrorReply | Reply

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
        self._firmware: str | None = None
        self._antenna_faults = 0
        # Port -> why it faulted. Kept across links: a loose antenna cable does not heal by
        # reopening the serial port, and forgetting it would flap the reader up and down.
        self._faulty: dict[int, str] = {}

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def firmware(self) -> str | None:
        """The firmware version (72) the reader reported on its last connect, e.g. ``"1.8"``."""
        return self._firmware

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
            antenna_faults=self._antenna_faults,
            faulty_antennas=tuple(sorted(self._faulty)),
            firmware=self._firmware,
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
            reader, writer = await open_link(
                self._config.url, self._config.baudrate, self._config.record
            )
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
            await release_link(writer)

    async def _poll(self, link: _Link) -> None:
        await self._set_up(link)
        if self._config.inventory == "8a":
            await self._poll_fast_switch(link)
        else:
            await self._poll_each_antenna(link)

    async def _set_up(self, link: _Link) -> None:
        """Read the firmware version and apply the configured RF power: once per link, since
        the reader may have been power-cycled (or swapped) while the link was down."""
        reply = await self._transact(
            link, link.host.get_firmware_version(), Cmd.GET_FIRMWARE_VERSION
        )
        try:
            if not isinstance(reply, Reply):
                raise R2000Error(f"unexpected reply {reply!r}")
            self._firmware = str(decode_firmware_version(reply.data))
        except R2000Error as exc:
            # Only informative: a reader that will not tell its version can still read tags.
            self._firmware = None
            log.warning("reader.firmware_unknown", reader=self._config.name, reason=str(exc))
        else:
            log.info("reader.firmware", reader=self._config.name, firmware=self._firmware)
        if self._config.rf_power_dbm is not None:
            await self._apply_rf_power(link, self._config.rf_power_dbm)

    async def _apply_rf_power(self, link: _Link, dbm: int) -> None:
        reply = await self._transact(link, link.host.set_rf_power(dbm), Cmd.SET_RF_POWER)
        if not (isinstance(reply, Reply) and reply.data == _SUCCESS):
            raise _ReaderError(f"reader refused RF power {dbm} dBm: {_describe(reply)}")
        reply = await self._transact(link, link.host.get_rf_power(), Cmd.GET_RF_POWER)
        try:
            if not isinstance(reply, Reply):
                raise R2000Error(f"unexpected reply {reply!r}")
            powers = decode_rf_power(reply.data)
        except R2000Error as exc:
            raise _ReaderError(f"cannot verify RF power: {exc}") from None
        # A reader that silently kept another power reads a field of another size than the
        # gate was set up for: its reads cannot be trusted (fail closed, READER_FAULT).
        if set(powers) != {dbm}:
            shown = ", ".join(str(power) for power in powers)
            raise _ReaderError(f"reader reports RF power {shown} dBm after setting {dbm} dBm")
        log.info("reader.rf_power", reader=self._config.name, dbm=dbm)

    async def _poll_each_antenna(self, link: _Link) -> None:
        work_antenna: int | None = None  # unknown on a fresh link: the reader may have rebooted
        while True:
            for port in self._config.antennas:
                antenna = port - 1
                if antenna != work_antenna:
                    work_antenna = None  # a refused switch leaves it unknown
                    refusal = await self._set_work_antenna(link, antenna)
                    if refusal is not None:
                        self._antenna_outcome(port, refusal)
                        continue
                    work_antenna = antenna
                    self._settle()
                outcome = await self._inventory_round(link)
                if outcome is not LOST:  # else: how the antenna did is unknown; go on
                    self._antenna_outcome(port, outcome)
            # A full cycle over every antenna worked: the next outage backs off from scratch.
            self._backoff.reset()

    async def _set_work_antenna(self, link: _Link, antenna: int) -> str | None:
        """Select ``antenna`` (74); the antenna fault it reports, if any."""
        reply = await self._transact(
            link, link.host.set_work_antenna(antenna), Cmd.SET_WORK_ANTENNA
        )
        if isinstance(reply, Reply) and reply.data == _SUCCESS:
            return None
        if isinstance(reply, Reply) and reply.data == bytes((Status.ANTENNA_MISSING,)):
            return _describe(reply)
        # Anything else leaves the old antenna active: no round may run now.
        raise _ReaderError(f"reader refused antenna port {antenna + 1}: {_describe(reply)}")

    async def _inventory_round(self, link: _Link) -> str | _Lost | None:
        """One 89 / 8B round on the work antenna; the antenna fault it reports, if any, or
        LOST when the reply closing it was damaged (its tags were still read)."""
        config = self._config
        if config.inventory == "89":
            cmd = Cmd.REAL_TIME_INVENTORY
            request = link.host.inventory(config.repeat)
        else:
            assert config.session is not None  # the config model requires it for "8b"
            cmd = Cmd.SESSION_INVENTORY
            request = link.host.session_inventory(
                config.session, _TARGETS[config.target], config.repeat
            )
        closing = await self._exchange(link, request, cmd)
        if closing is LOST:
            return LOST
        if isinstance(closing, ErrorReply) and closing.code == Status.ANTENNA_MISSING:
            return _describe(closing)
        # "No tag" only says the field was empty; any other error means the round did not
        # look at the field, so reads cannot be trusted (DESIGN.md §8, READER_FAULT).
        if isinstance(closing, ErrorReply) and closing.code != Status.NO_TAG:
            raise _ReaderError(f"inventory failed: {_describe(closing)}")
        return None

    async def _poll_fast_switch(self, link: _Link) -> None:
        config = self._config
        slots = [(port - 1, config.stay) for port in config.antennas]
        self._settle()
        while True:
            request = link.host.fast_switch_inventory(
                slots, config.switch_interval_ms, config.repeat
            )
            faults: list[AntennaFault] = []
            closing = await self._exchange(link, request, Cmd.FAST_SWITCH_INVENTORY, faults)
            if closing is LOST:
                continue  # the round's end was damaged: its antenna outcomes are unknown
            if isinstance(closing, ErrorReply) and closing.code != Status.NO_TAG:
                raise _ReaderError(f"inventory failed: {_describe(closing)}")
            faulted = {fault.antenna + 1: _describe(fault) for fault in faults}
            self._antenna_faults += len(faults) - len(faulted)  # repeats beyond the first
            for port in dict.fromkeys(config.antennas):
                self._antenna_outcome(port, faulted.get(port))
            self._backoff.reset()

    def _antenna_outcome(self, port: int, fault: str | None) -> None:
        """Record how ``port``'s latest inventory went, then settle the reader's state."""
        name = self._config.name
        if fault is None:
            if self._faulty.pop(port, None) is not None:
                log.info("reader.antenna_recovered", reader=name, port=port)
        else:
            self._antenna_faults += 1
            if port not in self._faulty:
                log.warning("reader.antenna_fault", reader=name, port=port, reason=fault)
            self._faulty[port] = fault
        self._settle()

    def _settle(self) -> None:
        """Up or down from the antenna faults; called only on a link that answers."""
        configured = set(self._config.antennas)
        faulty = sorted(port for port in self._faulty if port in configured)
        if faulty and (self._config.antenna_fault == "down" or set(faulty) == configured):
            ports = ", ".join(str(port) for port in faulty)
            plural = "s" if len(faulty) > 1 else ""
            self._report_down(f"antenna port{plural} {ports} faulted: {self._faulty[faulty[0]]}")
        else:
            self._report_up()

    async def _transact(self, link: _Link, request: bytes, cmd: Cmd) -> Closing:
        """Send a setup command and return its reply, asking again if a reply is lost."""
        for _ in range(LOST_REPLY_ATTEMPTS):
            reply = await self._exchange(link, request, cmd)
            if reply is not LOST:
                return reply
        raise _ReaderError(
            f"the reply to command {cmd:02X} was damaged on the line {LOST_REPLY_ATTEMPTS} "
            "times in a row"
        )

    async def _exchange(
        self, link: _Link, request: bytes, cmd: Cmd, faults: list[AntennaFault] | None = None
    ) -> Closing | _Lost:
        """Send ``request``; emit the tags that stream back; return the reply that closes it,
        or LOST when that reply was damaged on the line (see LOST_REPLY_QUIET_S).

        8A antenna fault frames arrive mid-round and are appended to ``faults``. The timeout
        bounds the silence between decoded frames, not the whole exchange, so a long round
        with many tags is never cut short. It is pushed back per chunk that completes frames
        (they all arrived at that instant), not per frame, and only as often as
        :func:`push_back` needs to.
        """
        timeout_s = self._config.reply_timeout_s
        host, pending = link.host, link.pending
        discarded = host.bytes_discarded
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                link.writer.write(request)
                await link.writer.drain()
                while True:
                    while not pending:
                        before = host.bytes_discarded
                        if host.buffered or before != discarded:
                            if not await self._receive_within(link, LOST_REPLY_QUIET_S):
                                log.debug("reader.reply_lost", reader=self._config.name, cmd=cmd)
                                return LOST
                        else:
                            await self._receive(link)
                        if pending:
                            # Good frames in a chunk that dropped nothing: the line is clean
                            # again. (A chunk may hold good frames and then the damaged reply.)
                            if host.bytes_discarded == before:
                                discarded = before
                            push_back(deadline, timeout_s)
                    event = pending.popleft()
                    if isinstance(event, TagRead):
                        self._tag_seen(event)
                    elif isinstance(event, AntennaFault):
                        if faults is not None and event.cmd == cmd:
                            faults.append(event)
                    elif event.cmd == cmd:
                        return event
        except TimeoutError:
            if not deadline.expired():
                raise  # a socket's own ETIMEDOUT: an OSError like any other link error
            raise _ReaderError(f"no reply to command {cmd:02X} within {timeout_s} s") from None

    async def _receive(self, link: _Link) -> None:
        """Read one chunk; the events of the frames it completes go to ``link.pending``."""
        data = await link.reader.read(_READ_SIZE)
        if not data:
            raise _ReaderError("link closed by the far end")
        events = link.host.receive_data(data)
        if events:
            self._last_seen_mono_s = self._clock()
            link.pending.extend(events)

    async def _receive_within(self, link: _Link, quiet_s: float) -> bool:
        """:meth:`_receive`, unless the line stays silent for ``quiet_s`` (then False)."""
        try:
            async with asyncio.timeout(quiet_s) as quiet:
                await self._receive(link)
        except TimeoutError:
            if not quiet.expired():
                raise
            return False
        return True

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


def _describe(reply: Closing | AntennaFault) -> str:
    if isinstance(reply, ErrorReply | AntennaFault):
        code = reply.code
    elif isinstance(reply, Reply) and len(reply.data) == 1:
        code = reply.data[0]
    else:
        return f"unexpected reply {reply!r}"
    try:
        return f"status {code:02X} ({Status(code).name.lower().replace('_', ' ')})"
    except ValueError:
        return f"status {code:02X}"
