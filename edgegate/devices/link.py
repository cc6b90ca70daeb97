"""Opening a byte link to a device, and pacing the attempts to reopen it.

Owns the mapping from a reader's configured ``url`` (DESIGN.md §6) to an asyncio stream pair,
and the reconnect backoff every device session shares (DESIGN.md §10: each device has its own
reconnect and backoff).

Invariants:
- ``socket://HOST:PORT`` is a TCP connection; any other url is a serial device path (or a
  pyserial url) opened exclusively, so two daemons can never share one reader;
- every failure to open surfaces as :class:`LinkError`, one line naming the url;
- a :class:`Backoff` delay is never negative and never above its cap.
"""

from __future__ import annotations

import asyncio
import random
import urllib.parse
from collections.abc import Awaitable, Callable

import serial_asyncio_fast

SOCKET_SCHEME = "socket"


class LinkError(OSError):
    """A device link could not be opened; the message names the url and the cause."""


async def open_link(url: str, baudrate: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open ``url``: ``socket://HOST:PORT`` over TCP, else a serial port at ``baudrate``.

    ``baudrate`` is ignored for sockets (DESIGN.md §6).
    """
    opening: Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    if urllib.parse.urlsplit(url).scheme == SOCKET_SCHEME:
        host, port = _socket_address(url)
        opening = asyncio.open_connection(host, port)
    else:
        # exclusive=True takes a flock on the port: a second opener fails instead of
        # silently stealing half of the reader's bytes.
        opening = serial_asyncio_fast.open_serial_connection(
            url=url, baudrate=baudrate, exclusive=True
        )
    try:
        return await opening
    except (OSError, ValueError) as exc:  # serial.SerialException is an OSError
        raise LinkError(f"cannot open {url}: {exc}") from exc


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
