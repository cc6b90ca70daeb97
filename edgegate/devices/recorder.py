"""The flight recorder: every byte a device link carries, timestamped, in a file.

Owns the recording file format and both ends of it: :class:`FlightRecorder` writes what a
link sends and receives (wired in by :func:`edgegate.devices.link.open_link` when a reader
sets ``record = "path"``), and :func:`read_recording` reads a file back, for
``edgegate-sim replay`` to play it as a device so a field problem can be reproduced on a desk.

Format ``edgegate.flightrec/1``: UTF-8 JSON lines, one object per line, appended. Every line
has ``t`` (seconds since the link opened, monotonic clock, 6 decimals) and ``dir``:

- ``{"t": 0.0, "dir": "open", "format": "edgegate.flightrec/1", "url": "/dev/ttyUSB0",
  "baudrate": 115200, "at": "2026-11-25T08:00:00.123456+00:00"}`` starts each link (each
  (re)connect appends a new one; ``"continued": true`` marks the first line of a file that
  rotation started in the middle of a link, whose ``t`` keeps counting from that link's open);
- ``{"t": 0.0125, "dir": "tx", "hex": "a003ff72ec"}`` — bytes the host wrote, one line per write;
- ``{"t": 0.031, "dir": "rx", "hex": "a00501720108df"}`` — bytes received, one line per
  chunk the operating system delivered;
- ``{"t": 9.87, "dir": "close"}`` — the link closed (absent when the process died first).

Invariants:
- recording never raises into, and never blocks on, the link: lines are buffered in memory
  and written with one append per flush (at most ``FLUSH_INTERVAL_S`` after the first
  unflushed line, or sooner past ``FLUSH_BYTES``); any ``OSError`` (no directory, no
  permission, disk full) disables the recorder with one warning and the link goes on;
- a file never grows much past ``max_bytes`` (by at most one flush): it is then renamed to
  ``PATH.1``, replacing the previous one, and a new file begins — so the most recent
  ``max_bytes`` to ``2 * max_bytes`` of history are always kept, each file replayable alone;
- :func:`read_recording` raises nothing but :class:`RecordingError`, whose message names the
  file and line; a last line cut short by a crash is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import structlog

FORMAT = "edgegate.flightrec/1"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
FLUSH_INTERVAL_S = 0.5
FLUSH_BYTES = 256 * 1024
_ROTATED_SUFFIX = ".1"

Direction = Literal["tx", "rx"]

log = structlog.get_logger(__name__)


class RecordingError(ValueError):
    """A recording file that cannot be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class RecordedChunk:
    """Bytes one way across the link, ``t`` seconds after the link opened."""

    t: float
    direction: Direction
    data: bytes


@dataclass(frozen=True, slots=True)
class RecordedLink:
    """One link's life in a recording: from an ``open`` line to the next one."""

    url: str
    baudrate: int
    at: str
    chunks: tuple[RecordedChunk, ...]
    start_t: float = 0.0
    """``t`` of the open line: 0, or later for a file that rotation started mid-link."""


class FlightRecorder:
    """Appends one link's traffic to ``path``. Does nothing until :meth:`start`."""

    def __init__(
        self,
        path: str,
        *,
        url: str,
        baudrate: int,
        max_bytes: int = DEFAULT_MAX_BYTES,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be positive, got {flush_interval_s}")
        self._flush_interval_s = flush_interval_s
        self._path = path
        self._url = url
        self._baudrate = baudrate
        self._max_bytes = max_bytes
        self._clock = clock
        self._origin_s = 0.0
        self._fd = -1
        self._size = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._pending_since_t = 0.0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._state: Literal["new", "recording", "closed"] = "new"

    @property
    def path(self) -> str:
        return self._path

    @property
    def recording(self) -> bool:
        """Started, not closed, and not disabled by an I/O error."""
        return self._state == "recording"

    def start(self) -> None:
        """The link is open: note the time and append the ``open`` line."""
        if self._state != "new":
            return
        self._state = "recording"
        self._origin_s = self._clock()
        try:
            self._open_file()
        except OSError as exc:
            self._disable(exc)
            return
        self._append(0.0, **self._open_fields())

    def record(self, direction: Direction, data: bytes) -> None:
        """Append one chunk; cheap, and silent after an I/O error."""
        if self._state != "recording" or not data:
            return
        self._append(self._elapsed_s(), dir=direction, hex=data.hex())

    def close(self) -> None:
        """The link closed: append the ``close`` line and write everything out (idempotent)."""
        if self._state != "recording":
            self._state = "closed"
            return
        self._append(self._elapsed_s(), dir="close")
        self._flush()
        self._state = "closed"
        self._release()

    def _elapsed_s(self) -> float:
        return round(self._clock() - self._origin_s, 6)

    def _open_fields(self) -> dict[str, object]:
        return {
            "dir": "open",
            "format": FORMAT,
            "url": self._url,
            "baudrate": self._baudrate,
            "at": datetime.now(UTC).isoformat(),
        }

    def _append(self, t: float, **fields: object) -> None:
        if not self._pending:
            self._pending_since_t = t
        encoded = _encode({"t": t, **fields})
        self._pending.append(encoded)
        self._pending_bytes += len(encoded)
        if self._pending_bytes >= FLUSH_BYTES:
            self._flush()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                self._flush_interval_s, self._flush
            )

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._state != "recording" or not self._pending:
            return
        try:
            if self._size >= self._max_bytes:
                # Rotating before the write, never after it, so that every file a rotation
                # starts holds what made it necessary and opens with its own open line.
                self._rotate()
                # It opens at its first line's time, so that t never runs backwards in it.
                continued = {"t": self._pending_since_t, **self._open_fields(), "continued": True}
                self._pending.insert(0, _encode(continued))
            joined = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            unwritten = memoryview(joined)
            while unwritten:
                unwritten = unwritten[os.write(self._fd, unwritten) :]
            self._size += len(joined)
        except OSError as exc:
            self._disable(exc)

    def _open_file(self) -> None:
        # O_APPEND: each flush lands whole at the end even if something else appends too.
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        self._release()
        os.replace(self._path, self._path + _ROTATED_SUFFIX)
        self._open_file()
        log.info("recorder.rotated", path=self._path, kept=self._path + _ROTATED_SUFFIX)

    def _disable(self, exc: OSError) -> None:
        log.warning("recorder.disabled", path=self._path, url=self._url, error=str(exc))
        self._state = "closed"
        self._pending.clear()
        self._pending_bytes = 0
        self._release()

    def _release(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError as exc:  # e.g. a deferred write error of a network file system
                log.warning("recorder.close_failed", path=self._path, error=str(exc))


def _encode(line: dict[str, object]) -> bytes:
    return (json.dumps(line) + "\n").encode()


class RecordingProtocol(asyncio.StreamReaderProtocol):
    """A stream protocol that also records what it receives, and when the link opens and
    closes, so the recorder's lifetime is exactly the transport's however it is closed."""

    def __init__(self, reader: asyncio.StreamReader, recorder: FlightRecorder) -> None:
        super().__init__(reader)
        self._recorder = recorder

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._recorder.start()
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._recorder.record("rx", data)
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._recorder.close()


class RecordingWriter(asyncio.StreamWriter):
    """A stream writer that also records every write."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        protocol: asyncio.StreamReaderProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
        recorder: FlightRecorder,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._recorder = recorder

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._recorder.record("tx", bytes(data))
        super().write(data)

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(data))


def read_recording(path: str | Path) -> list[RecordedLink]:
    """Every link recorded in ``path``, in order."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path}: cannot read recording: {exc}") from None
    lines = text.split("\n")
    # A crash can cut the last line short; everything before it is intact (whole lines are
    # appended at once), so the tail is read only if it is a whole line without its newline.
    complete, last = lines[:-1], lines[-1]
    with contextlib.suppress(RecordingError):
        if last.strip():
            _parse_line(path, len(lines), last)
            complete.append(last)
    links: list[RecordedLink] = []
    chunks: list[RecordedChunk] = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        entry = _parse_line(path, number, line)
        if entry is None:
            continue
        if isinstance(entry, RecordedChunk):
            if not links:
                raise RecordingError(f"{path}:{number}: bytes before the first open line")
            chunks.append(entry)
            continue
        if links:
            links[-1] = _with_chunks(links[-1], chunks)
        chunks = []
        links.append(entry)
    if not links:
        raise RecordingError(f"{path}: not an {FORMAT} recording (no open line)")
    links[-1] = _with_chunks(links[-1], chunks)
    return links


def _with_chunks(link: RecordedLink, chunks: list[RecordedChunk]) -> RecordedLink:
    return RecordedLink(link.url, link.baudrate, link.at, tuple(chunks), link.start_t)


def _parse_line(path: str | Path, number: int, line: str) -> RecordedChunk | RecordedLink | None:
    """A chunk, an open line as an empty link, or None for a close line."""
    where = f"{path}:{number}"
    try:
        entry = json.loads(line)
    except ValueError:
        raise RecordingError(f"{where}: not a JSON line") from None
    if not isinstance(entry, dict):
        raise RecordingError(f"{where}: not a JSON object")
    t = entry.get("t")
    if not isinstance(t, int | float) or isinstance(t, bool) or t < 0:
        raise RecordingError(f"{where}: t must be a non-negative number")
    match entry.get("dir"):
        case "tx" | "rx" as direction:
            try:
                data = bytes.fromhex(str(entry.get("hex")))
            except ValueError:
                raise RecordingError(f"{where}: hex is not hex digits") from None
            return RecordedChunk(float(t), direction, data)
        case "open":
            if entry.get("format") != FORMAT:
                raise RecordingError(f"{where}: format {entry.get('format')!r}, not {FORMAT!r}")
            baudrate = entry.get("baudrate")
            if not isinstance(baudrate, int):
                raise RecordingError(f"{where}: baudrate must be an integer")
            return RecordedLink(str(entry.get("url")), baudrate, str(entry.get("at")), (), float(t))
        case "close":
            return None
        case other:
            raise RecordingError(f"{where}: unknown dir {other!r}")
