"""One scanner in HID keyboard mode, read through python-evdev: key events in, codes out.

Owns the input device of one configured scanner whose ``url`` is under ``/dev/input/``
(PROTOCOLS.md §3). The device is grabbed, so its keystrokes reach only this session and
never a console or a login prompt; every ``EV_KEY`` event goes to
:class:`edgegate.wire.hid.HidDecoder`, which does all the decoding (and is what the tests
exercise: CI has no ``/dev/uinput`` to fake a keyboard with). This module is kept to the
evdev calls.

Invariants:
- ReaderUp once the device is open and grabbed (a scanner is silent until used), ReaderDown
  once per outage (missing device, a grab refused because another program holds it, ENODEV
  on unplug); the two alternate;
- a code cut short by an outage is never emitted: each open starts a fresh decoder;
- the device is closed (and so released) before the session reconnects or ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import evdev
import structlog

from edgegate.config import ScannerReaderConfig
from edgegate.devices.base import DeviceStats
from edgegate.devices.link import Backoff
from edgegate.devices.upkeep import Liveness
from edgegate.gate.model import CodeScanned, Observation
from edgegate.wire.hid import HidDecoder

HID_URL_PREFIX = "/dev/input/"
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0

log = structlog.get_logger(__name__)


class _HidError(Exception):
    """The input device is gone or cannot be had; the message is the reason."""


class HidScannerSession:
    """Runs one keyboard-mode scanner until cancelled, emitting observations through ``emit``."""

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
        self._decoder: HidDecoder | None = None
        # Counters of devices already closed; the open device's decoder holds the rest.
        self._codes = self._unmapped = self._overlong = self._lost = 0
        self._last_seen_mono_s: float | None = None

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def stats(self) -> DeviceStats:
        """``frames`` are codes; ``malformed`` counts keys that named no character;
        ``resyncs`` counts overlong codes dropped and kernel reports of lost events."""
        decoder = self._decoder
        return DeviceStats(
            connected=self._liveness.up,
            frames=self._codes + (decoder.codes if decoder else 0),
            checksum_errors=0,
            malformed=self._unmapped + (decoder.unmapped if decoder else 0),
            resyncs=self._overlong
            + self._lost
            + (decoder.overlong + decoder.lost if decoder else 0),
            last_seen_mono_s=self._last_seen_mono_s,
        )

    async def run(self) -> None:
        """Open, read, and reopen with backoff, forever (until cancelled)."""
        while True:
            try:
                await self._open_and_read()
            except _HidError as fault:
                self._liveness.report_down(str(fault))
            await asyncio.sleep(self._backoff.next_delay())

    async def _open_and_read(self) -> None:
        url = self._config.url
        try:
            device = evdev.InputDevice(url)
        except OSError as exc:
            raise _HidError(f"cannot open {url}: {exc}") from exc
        decoder = self._decoder = HidDecoder()
        try:
            device.grab()
            self._liveness.report_up()
            self._backoff.reset()
            async for event in device.async_read_loop():
                if event.type == evdev.ecodes.EV_KEY:
                    value = decoder.key_event(event.code, event.value)
                    if value is not None:
                        self._code_scanned(value)
                elif event.type == evdev.ecodes.EV_SYN and event.code == evdev.ecodes.SYN_DROPPED:
                    decoder.events_lost()
        except OSError as exc:  # EBUSY: grabbed by another program; ENODEV: unplugged
            raise _HidError(f"input device {url}: {exc}") from exc
        finally:
            self._retire(decoder)
            device.close()

    def _code_scanned(self, value: str) -> None:
        now = self._last_seen_mono_s = self._clock()
        log.debug("scanner.code", reader=self._config.name, length=len(value))
        self._emit(CodeScanned(reader=self._config.name, value=value, at_mono_s=now))

    def _retire(self, decoder: HidDecoder) -> None:
        self._codes += decoder.codes
        self._unmapped += decoder.unmapped
        self._overlong += decoder.overlong
        self._lost += decoder.lost
        self._decoder = None
