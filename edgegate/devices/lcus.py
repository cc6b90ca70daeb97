"""An LCUS USB relay board as the gate's actuator: barrier, lights and buzzer on relays.

Owns the link to one configured LCUS board (CH340, PROTOCOLS.md §4) and keeps its relays at
the outputs last given to :meth:`LcusSession.apply`. Frames come from
:func:`edgegate.wire.lcus.encode`. The board never answers, so the session only writes; it
still reads the port, because reading is how an unplug (EOF, EIO) shows.

Invariants:
- :meth:`LcusSession.apply` never waits on the port and never raises: it records the desired
  outputs and wakes the writer, which sends a frame for each configured channel whose state
  differs from the one last sent on this link. After a reconnect nothing counts as sent, so
  every configured channel is sent again (the board powers up with every relay off). No
  frame is sent before the first ``apply()``;
- ReaderUp when the port opens (the board has nothing else to say), ReaderDown once per
  outage (a failed open, EOF, a serial error); the two alternate;
- the link is closed before the session reconnects or ends, cancellation included.

Health counters (:attr:`LcusSession.stats`): ``frames`` are frames written;
``last_seen_mono_s`` is the last time the port was opened or written without error — the
last moment the board was known to be reachable. The board sends nothing, so there is
nothing to count as corrupt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from edgegate.config import LcusReaderConfig
from edgegate.devices.base import DeviceStats
from edgegate.devices.link import Backoff, LinkError, open_link
from edgegate.devices.upkeep import Liveness, release_link
from edgegate.gate.model import GateOutputs, Observation
from edgegate.wire.lcus import encode

BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0
_READ_SIZE = 256

log = structlog.get_logger(__name__)


class _RelayError(Exception):
    """The board's link is gone; the message is the reason."""


class LcusSession:
    """Runs one relay board until cancelled; drives its relays on ``apply``."""

    def __init__(
        self,
        config: LcusReaderConfig,
        emit: Callable[[Observation], None],
        clock: Callable[[], float] = time.monotonic,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._backoff = backoff or Backoff(BACKOFF_BASE_S, BACKOFF_CAP_S)
        self._liveness = Liveness(config.name, config.url, emit, clock)
        self._desired: GateOutputs | None = None
        self._outputs_changed = asyncio.Event()
        self._frames = 0
        self._last_seen_mono_s: float | None = None

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def stats(self) -> DeviceStats:
        return DeviceStats(
            connected=self._liveness.up,
            frames=self._frames,
            checksum_errors=0,
            malformed=0,
            resyncs=0,
            last_seen_mono_s=self._last_seen_mono_s,
        )

    async def apply(self, outputs: GateOutputs) -> None:
        """Make ``outputs`` the gate's desired state; the session sends it (idempotent)."""
        if outputs != self._desired:
            self._desired = outputs
            self._outputs_changed.set()

    async def run(self) -> None:
        """Connect, drive, and reconnect with backoff, forever (until cancelled)."""
        while True:
            try:
                await self._connect_and_drive()
            except _RelayError as fault:
                self._liveness.report_down(str(fault))
            await asyncio.sleep(self._backoff.next_delay())

    async def _connect_and_drive(self) -> None:
        config = self._config
        try:
            reader, writer = await open_link(config.url, config.baudrate, config.record)
        except LinkError as exc:
            raise _RelayError(str(exc)) from exc
        try:
            self._last_seen_mono_s = self._clock()
            self._liveness.report_up()
            self._backoff.reset()
            async with asyncio.TaskGroup() as link:
                link.create_task(_until_closed(reader), name=f"lcus-{self.name}-link")
                link.create_task(self._drive(writer), name=f"lcus-{self.name}-drive")
        except* _RelayError as faults:
            raise faults.exceptions[0] from None
        finally:
            await release_link(writer)

    async def _drive(self, writer: asyncio.StreamWriter) -> None:
        sent: dict[int, bool] = {}  # channel -> state sent on this link
        while True:
            self._outputs_changed.clear()
            changes = {ch: on for ch, on in self._channel_states().items() if sent.get(ch) != on}
            if changes:
                frames = [encode(channel, on) for channel, on in changes.items()]
                writer.write(b"".join(frames))
                try:
                    await writer.drain()
                except OSError as exc:
                    raise _RelayError(f"link error: {exc}") from exc
                sent.update(changes)
                self._frames += len(frames)
                self._last_seen_mono_s = self._clock()
                log.debug("lcus.relays", reader=self.name, relays=sent)
            await self._outputs_changed.wait()

    def _channel_states(self) -> dict[int, bool]:
        desired = self._desired
        if desired is None:
            return {}
        config = self._config
        wired = (
            (config.barrier, desired.barrier_open),
            (config.green, desired.green),
            (config.red, desired.red),
            (config.buzzer, desired.buzzer),
        )
        return {channel: on for channel, on in wired if channel is not None}


async def _until_closed(reader: asyncio.StreamReader) -> None:
    try:
        while await reader.read(_READ_SIZE):
            pass  # an LCUS board sends nothing; a clone that echoes is ignored
    except OSError as exc:  # includes serial.SerialException, e.g. EIO on unplug
        raise _RelayError(f"link error: {exc}") from exc
    raise _RelayError("link closed by the far end")
