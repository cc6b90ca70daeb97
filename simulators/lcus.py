"""A simulated LCUS USB relay board (CH340, 9600 8N1; PROTOCOLS.md §4).

Owns a board's relays: it decodes the host's ``A0 <ch> <0|1> <sum>`` frames with
:class:`edgegate.wire.lcus.LcusDecoder` and switches its relays accordingly. Like the real
board it never answers.

Invariants:
- a relay changes only on a frame whose sum holds; a frame for a channel the board does not
  have is counted in :attr:`LcusSimulator.ignored` and changes nothing;
- the relays keep their state while hosts connect and disconnect (the board stays powered);
- every change wakes :meth:`LcusSimulator.until` waiters.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgegate.wire.lcus import LcusDecoder
from simulators.endpoints import Changes, PtyEndpoint, TcpEndpoint
from simulators.faults import Receive, Send


class LcusSimulator:
    """The board's relays, 1-based as printed on it."""

    def __init__(self, channels: int = 4) -> None:
        if not 1 <= channels <= 0xFF:
            raise ValueError(f"a board has 1-255 channels, got {channels}")
        self._relays = dict.fromkeys(range(1, channels + 1), False)
        self._changes = Changes()
        self.frames = 0
        self.checksum_errors = 0
        self.ignored = 0

    def relays(self) -> dict[int, bool]:
        """Every relay's state by channel."""
        return dict(self._relays)

    async def until(self, condition: Callable[[dict[int, bool]], bool]) -> None:
        """Return once ``condition(relays)`` holds; it is checked after every frame."""
        await self._changes.until(lambda: condition(self.relays()))

    async def converse(self, receive: Receive, send: Send) -> None:
        """Obey one host's frames until it goes away; the board sends nothing back."""
        decoder = LcusDecoder()
        while data := await receive():
            errors_before = decoder.checksum_errors
            for command in decoder.receive_data(data):
                self.frames += 1
                if command.channel in self._relays:
                    self._relays[command.channel] = command.on
                else:
                    self.ignored += 1
            self.checksum_errors += decoder.checksum_errors - errors_before
            self._changes.notify()

    def open_pty(self, link: Path | None = None) -> PtyEndpoint:
        """A new pseudo-terminal for this board (published at ``link`` if given).

        For faults, serve :meth:`converse` through :class:`simulators.faults.FaultLayer`.
        """
        return PtyEndpoint(self.converse, link)

    async def open_tcp(self, host: str = "127.0.0.1", port: int = 0) -> TcpEndpoint:
        """Listen on ``host:port`` (0 = any free port, see ``TcpEndpoint.port``)."""
        return await TcpEndpoint.listen(self.converse, host, port)
