"""Opening a byte link to a device, and pacing the attempts to reopen it.

Owns the mapping from a reader's configured ``url`` (DESIGN.md §6) to an asyncio stream pair,
the flight recorder's place on that pair (``record``, DESIGN.md §6), and the reconnect
backoff every device session shares (DESIGN.md §10: each device has its own reconnect and
backoff).

Invariants:
- ``socket://HOST:PORT`` is a TCP connection; any other url is a serial device path (or a
  pyserial url) opened exclusively, so two daemons can never share one reader;
- every failure to open surfaces as :class:`LinkError`, one line naming the url;
- with ``record`` set, every byte written and received on the link is appended to that file
  (:mod:`edgegate.devices.recorder`), from the moment the link opens until it closes however
  it is closed; recording can never fail or stall the link;
- a :class:`Backoff` delay is never negative and never above its cap.
"""

from __future__ import annotations

import asyncio
import random
import urllib.parse
from collections.abc import Callable

import serial_asyncio_fast

from edgegate.devices.recorder import (
    DEFAULT_MAX_BYTES,
    FlightRecorder,
    RecordingProtocol,
    RecordingWriter,
)

SOCKET_SCHEME = "socket"


class LinkError(OSError):
    """A device link could not be opened; the message names the url and the cause."""


async def open_link(
    url: str, baudrate: int, record: str = "", *, record_max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open ``url``: ``socket://HOST:PORT`` over TCP, else a serial port at ``baudrate``.

    ``baudrate`` is ignored for sockets (DESIGN.md §6). A non-empty ``record`` is a reader's
    ``record`` setting: the link's traffic is then appended to that file (rotated past
    ``record_max_bytes``). Every device session opens its links here, passing
    ``config.record``, and so gets the flight recorder without code of its own.
    """
    loop = asyncio.get_running_loop()
    # What asyncio.open_connection and open_serial_connection do, with our own protocol
    # and writer so that the recorder sees the bytes as the transport moves them.
    reader = asyncio.StreamReader(loop=loop)
    recorder = (
        FlightRecorder(record, url=url, baudrate=baudrate, max_bytes=record_max_bytes)
        if record
        else None
    )
    protocol = (
        RecordingProtocol(reader, recorder)
        if recorder
        else asyncio.StreamReaderProtocol(reader, loop=loop)
    )
    address = _socket_address(url) if urllib.parse.urlsplit(url).scheme == SOCKET_SCHEME else None
    try:
        if address is not None:
            transport, _ = await loop.create_connection(lambda: protocol, *address)
        else:
            # exclusive=True takes a flock on the port: a second opener fails instead of
            # silently stealing half of the reader's bytes.
            transport, _ = await serial_asyncio_fast.create_serial_connection(
                loop, lambda: protocol, url, baudrate=baudrate, exclusive=True
            )
    except (OSError, ValueError) as exc:  # serial.SerialException is an OSError
        raise LinkError(f"cannot open {url}: {exc}") from exc
    if recorder:
        # pyserial-asyncio-fast calls connection_made only on a later turn of the loop, and
        # the session's first request must not slip past the recording.
        recorder.start()
        return reader, RecordingWriter(transport, protocol, reader, loop, recorder)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def _socket_address(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path or parts.query or parts.fragment:
        raise LinkError(f"cannot open {url}: expected socket://HOST:PORT")
    return parts.hostname, port


class Backoff:
    """Capped exponential backoff with full jitter.

    The n-th consecutive delay is drawn uniformly from ``[0, min(cap, base * 2**n))``, so
    readers that lost power together do not all retry in lockstep.
    """

    def __init__(
        self,
        base_s: float,
        cap_s: float,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < base_s <= cap_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got {base_s} and {cap_s}")
        self._base_s = base_s
        self._cap_s = cap_s
        self._random_fraction = random_fraction
        self._ceiling_s = base_s

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the ceiling up to the cap."""
        delay = self._ceiling_s * self._random_fraction()
        self._ceiling_s = min(self._cap_s, self._ceiling_s * 2)
        return delay

    def reset(self) -> None:
        """Start again from ``base_s``: the link worked."""
        self._ceiling_s = self._base_s
