"""A simulated QR / barcode scanner in USB CDC-ACM mode (PROTOCOLS.md §3).

Owns what a serial scanner sends: each :meth:`ScannerSimulator.scan` writes the code's bytes
followed by the configured suffix (CR, CR LF or LF), as one write or split where asked — a
USB CDC device may deliver a code in several transfers. GS separators and any other bytes
are sent as given. What a host writes to the scanner is read and ignored.

Invariants:
- scans are sent in the order they were made, each exactly once, to the host connected when
  it goes out; a scan made while no host is connected waits for the next one;
- a conversation ends when its host goes away (``receive`` returns ``b""``) or it is
  cancelled; a scan being written at that moment goes with it, as with a cable pulled
  mid-scan.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path

from edgegate.wire.lines import SUFFIXES
from simulators.endpoints import PtyEndpoint, TcpEndpoint
from simulators.faults import Receive, Send


class ScannerSimulator:
    """The scanner's state: what is still to be sent."""

    def __init__(self, suffix: bytes = b"\r") -> None:
        if suffix not in SUFFIXES:
            raise ValueError(f"suffix must be CR, CR LF or LF, got {suffix!r}")
        self._suffix = suffix
        self._pending: asyncio.Queue[bytes] = asyncio.Queue()
        self.scans = 0
        self.writes = 0

    @property
    def suffix(self) -> bytes:
        return self._suffix

    def scan(self, code: str | bytes, *, split_at: Sequence[int] = ()) -> None:
        """Send ``code`` and the suffix; ``split_at`` lists byte offsets where a new write
        starts (e.g. ``range(1, n)`` for one byte per write)."""
        data = (code.encode("utf-8") if isinstance(code, str) else code) + self._suffix
        cuts = sorted({0, *(i for i in split_at if 0 < i < len(data)), len(data)})
        for start, end in itertools.pairwise(cuts):
            self._pending.put_nowait(data[start:end])
        self.scans += 1

    async def converse(self, receive: Receive, send: Send) -> None:
        """Send scans to one host until it goes away; whatever it writes is ignored."""
        async with asyncio.TaskGroup() as group:
            sending = group.create_task(self._send_scans(send), name="scanner-send")
            while await receive():
                pass
            sending.cancel()

    def open_pty(self, link: Path | None = None) -> PtyEndpoint:
        """A new pseudo-terminal for this scanner (published at ``link`` if given).

        For faults, serve :meth:`converse` through :class:`simulators.faults.FaultLayer`.
        """
        return PtyEndpoint(self.converse, link)

    async def open_tcp(self, host: str = "127.0.0.1", port: int = 0) -> TcpEndpoint:
        """Listen on ``host:port`` (0 = any free port, see ``TcpEndpoint.port``)."""
        return await TcpEndpoint.listen(self.converse, host, port)

    async def _send_scans(self, send: Send) -> None:
        while True:
            data = await self._pending.get()
            await send(data)
            self.writes += 1
