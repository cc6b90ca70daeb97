"""One QR / barcode scanner in USB CDC-ACM mode kept open: read codes, reconnect on faults.

Owns the link to one configured serial scanner (PROTOCOLS.md §3) and turns it into
observations: a :class:`CodeScanned` per code, :class:`ReaderUp` / :class:`ReaderDown` as the
port comes and goes. Framing is :class:`edgegate.wire.lines.LineDecoder`'s.

Invariants:
- ReaderUp is emitted when the port opens — a scanner says nothing until something is
  scanned, so an open port is all the evidence of it there is — and ReaderDown once per
  outage (a failed open, EOF, a serial error such as EIO on unplug); the two alternate;
- a code cut short by an outage is never emitted: each link starts with a fresh decoder;
- the link is closed before the session reconnects or ends, cancellation included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from edgegate.config import ScannerReaderConfig
from edgegate.devices.base import DeviceStats
from edgegate.devices.link import Backoff, LinkError, open_link
from edgegate.devices.upkeep import Liveness, release_link
from edgegate.gate.model import CodeScanned, Observation
from edgegate.wire.lines import LineDecoder

BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0
_READ_SIZE = 4096

log = structlog.get_logger(__name__)


class _ScannerError(Exception):
    """The scanner's link is gone; the message is the reason."""


class ScannerSession:
    """Runs one serial scanner until cancelled, emitting observations through ``emit``."""

    def __init__(
        self,
        config: ScannerReaderConfig,
        emit: Callable[[Observation], None],
        clock: Callable[[], float] = time.monotonic,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self._config = config
        self._emit = emit
        self._clock = clock
        self._backoff = backoff or Backoff(BACKOFF_BASE_S, BACKOFF_CAP_S)
        self._liveness = Liveness(config.name, config.url, emit, clock)
        self._decoder: LineDecoder | None = None
        # Counters of links already closed; the open link's decoder holds the rest.
        self._codes = self._undecodable = self._overlong = 0
        self._last_seen_mono_s: float | None = None

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def stats(self) -> DeviceStats:
        """``frames`` are codes; ``malformed`` codes held bytes that were not UTF-8;
        ``resyncs`` are overlong lines dropped up to their suffix (no checksum exists)."""
        decoder = self._decoder
        return DeviceStats(
            connected=self._liveness.up,
            frames=self._codes + (decoder.codes if decoder else 0),
            checksum_errors=0,
            malformed=self._undecodable + (decoder.undecodable if decoder else 0),
            resyncs=self._overlong + (decoder.overlong if decoder else 0),
            last_seen_mono_s=self._last_seen_mono_s,
        )

    async def run(self) -> None:
        """Connect, read, and reconnect with backoff, forever (until cancelled)."""
        while True:
            try:
                await self._connect_and_read()
            except _ScannerError as fault:
                self._liveness.report_down(str(fault))
            await asyncio.sleep(self._backoff.next_delay())

    async def _connect_and_read(self) -> None:
        config = self._config
        try:
            reader, writer = await open_link(config.url, config.baudrate, config.record)
        except LinkError as exc:
            raise _ScannerError(str(exc)) from exc
        decoder = self._decoder = LineDecoder(config.suffix.encode("ascii"))
        try:
            self._liveness.report_up()
            self._backoff.reset()
            while data := await reader.read(_READ_SIZE):
                for value in decoder.receive_data(data):
                    self._code_scanned(value)
            raise _ScannerError("link closed by the far end")
        except OSError as exc:  # includes serial.SerialException, e.g. EIO on unplug
            raise _ScannerError(f"link error: {exc}") from exc
        finally:
            self._retire(decoder)
            await release_link(writer)

    def _code_scanned(self, value: str) -> None:
        now = self._last_seen_mono_s = self._clock()
        log.debug("scanner.code", reader=self._config.name, length=len(value))
        self._emit(CodeScanned(reader=self._config.name, value=value, at_mono_s=now))

    def _retire(self, decoder: LineDecoder) -> None:
        self._codes += decoder.codes
        self._undecodable += decoder.undecodable
        self._overlong += decoder.overlong
        self._decoder = None
