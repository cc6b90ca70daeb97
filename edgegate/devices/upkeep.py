"""What every device session does besides talking to its device.

Owns three small duties the device sessions share: reporting whether a device can be
trusted (:class:`Liveness`, DESIGN.md §9 ``reader_down`` and §8 ``READER_FAULT``), letting go
of a stream link (:func:`release_link`), and pushing a silence timeout back as frames arrive
(:func:`push_back`).

Invariants:
- :class:`Liveness` emits :class:`ReaderUp` / :class:`ReaderDown` only on a change, so the
  two alternate and a device that stays down is reported once per outage, however many
  reconnect attempts fail;
- :func:`release_link` never waits for queued bytes and never raises for a link that is
  already broken;
- after :func:`push_back` the timeout expires no sooner than ``timeout_s`` after the call,
  and no later than ``timeout_s`` plus ``PUSH_BACK_SLACK`` of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from edgegate.gate.model import Observation, ReaderDown, ReaderUp

log = structlog.get_logger(__name__)

# How far past its due time push_back may leave a silence timeout, as a fraction of it.
PUSH_BACK_SLACK = 0.05


class Liveness:
    """ReaderUp / ReaderDown bookkeeping for one configured device."""

    def __init__(
        self, reader: str, url: str, emit: Callable[[Observation], None], clock: Callable[[], float]
    ) -> None:
        self._reader = reader
        self._url = url
        self._emit = emit
        self._clock = clock
        self._up: bool | None = None  # None until the first attempt has reported either way

    @property
    def up(self) -> bool:
        """The device is connected and trusted."""
        return self._up is True

    def report_up(self) -> None:
        if self._up is True:
            return
        self._up = True
        log.info("reader.up", reader=self._reader, url=self._url)
        self._emit(ReaderUp(reader=self._reader, at_mono_s=self._clock()))

    def report_down(self, reason: str) -> None:
        if self._up is False:
            log.debug("reader.still_down", reader=self._reader, reason=reason)
            return
        self._up = False
        log.warning("reader.down", reader=self._reader, url=self._url, reason=reason)
        self._emit(ReaderDown(reader=self._reader, reason=reason, at_mono_s=self._clock()))


async def release_link(writer: asyncio.StreamWriter) -> None:
    """Close a link at once, dropping whatever is still queued for the device.

    abort(), not close(): nothing queued for a device we are abandoning is worth waiting
    for, and a flush towards a wedged port could block forever. A transport that already
    closed itself on an error is not closed twice (pyserial-asyncio-fast would run its
    teardown again on a released port).
    """
    if not writer.transport.is_closing():
        writer.transport.abort()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def push_back(deadline: asyncio.Timeout, timeout_s: float) -> None:
    """Frames just arrived: let ``deadline`` expire only after ``timeout_s`` more of silence.

    Moving a timer is a heap push on the event loop, and a line-rate reader delivers a
    chunk every few milliseconds: under 16 readers, moving it on every chunk cost a tenth
    of the daemon's busy time. So the timer is moved a little further than needed and left
    alone until it is due again, at most once per ``PUSH_BACK_SLACK`` of the timeout.
    """
    loop = asyncio.get_running_loop()
    due = loop.time() + timeout_s
    when = deadline.when()
    if when is None or when < due:
        deadline.reschedule(due + timeout_s * PUSH_BACK_SLACK)
