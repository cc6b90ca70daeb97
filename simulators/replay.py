"""A flight recording played back as a device (``edgegate-sim replay``).

Owns the playback of a file written by the daemon's flight recorder
(:mod:`edgegate.devices.recorder`, format ``edgegate.flightrec/1``): the bytes the reader sent
(``rx`` lines) are written to whoever connects, so a daemon pointed at the replay sees what
the daemon in the field saw — a field problem reproduced on a desk.

Timing follows the recording, divided by ``speed``. When the recording holds the host's side
too (``tx`` lines, which the recorder always writes), playback follows the conversation: at
each recorded request it waits until the new host has sent as many bytes again, and times
the reply chunks that followed it from that moment. A request/response device such as the
R2000 therefore answers each request of the new host with the recorded reply, however fast
or slow the new host is. The new host's bytes are counted, not compared: a host configured
differently (other requests) still drives playback, byte for byte, but then gets replies to
the recorded questions.

Invariants:
- rx chunks are written in recorded order, one write per recorded chunk (so chunk
  boundaries, a frequent cause of field bugs, are reproduced too), never before their time;
- each link of the recording (each reconnect of the recorded host) is played in turn, its
  timing restarting with it; the replay does not unplug between them;
- without ``loop`` playback ends after the last chunk and the device stays connected and
  silent; with ``loop`` it starts again from the first link;
- a recording with nothing to play back is refused when the replayer is built.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from edgegate.devices.recorder import RecordedLink, RecordingError, read_recording
from simulators.endpoints import PtyEndpoint, TcpEndpoint
from simulators.faults import Receive, Send


class Replayer:
    """Plays recorded links to one host per conversation."""

    def __init__(
        self, links: Sequence[RecordedLink], *, speed: float = 1.0, loop: bool = False
    ) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        chunks = [chunk for link in links for chunk in link.chunks]
        if not any(chunk.direction == "rx" for chunk in chunks):
            raise RecordingError("the recording holds no received bytes to play back")
        self._links = tuple(links)
        self._speed = speed
        self._loop = loop
        self._follow = any(chunk.direction == "tx" for chunk in chunks)
        self.chunks_sent = 0
        self.requests_awaited = 0

    @classmethod
    def from_file(cls, path: str | Path, *, speed: float = 1.0, loop: bool = False) -> Replayer:
        """Read ``path`` (:class:`RecordingError` with file and line if it is not valid)."""
        return cls(read_recording(path), speed=speed, loop=loop)

    @property
    def follows_host(self) -> bool:
        """Whether playback waits for the host's requests (the recording has ``tx`` lines)."""
        return self._follow

    def open_pty(self) -> PtyEndpoint:
        """A new pseudo-terminal playing the recording; ``path`` is its serial port."""
        return PtyEndpoint(self.converse)

    async def open_tcp(self, host: str = "127.0.0.1", port: int = 0) -> TcpEndpoint:
        """Listen on ``host:port`` (0 = any free port); each connection plays from the start."""
        return await TcpEndpoint.listen(self.converse, host, port)

    async def converse(self, receive: Receive, send: Send) -> None:
        """Play to one host until the recording ends (or forever, looping); keep reading
        what the host sends until it goes away, which ends playback too."""
        host = _HostBytes()
        async with asyncio.TaskGroup() as group:
            playing = group.create_task(self._play(send, host), name="replay-play")
            while data := await receive():
                host.add(data)
            playing.cancel()

    async def _play(self, send: Send, host: _HostBytes) -> None:
        clock = asyncio.get_running_loop().time
        expected = 0  # host bytes the recorded requests so far add up to
        while True:
            for link in self._links:
                anchor_s, anchor_t = clock(), link.start_t
                for chunk in link.chunks:
                    if chunk.direction == "tx":
                        expected += len(chunk.data)
                        await host.wait_for(expected)
                        self.requests_awaited += 1
                        anchor_s, anchor_t = clock(), chunk.t
                        continue
                    delay_s = anchor_s + (chunk.t - anchor_t) / self._speed - clock()
                    if delay_s > 0:
                        await asyncio.sleep(delay_s)
                    await send(chunk.data)
                    self.chunks_sent += 1
            if not self._loop:
                return
            await asyncio.sleep(0)  # a recording of instants must not starve the loop


class _HostBytes:
    """How many bytes the host has sent, and a way to wait for more."""

    def __init__(self) -> None:
        self.count = 0
        self._more = asyncio.Event()

    def add(self, data: bytes) -> None:
        self.count += len(data)
        self._more.set()

    async def wait_for(self, total: int) -> None:
        while self.count < total:
            self._more.clear()
            await self._more.wait()
