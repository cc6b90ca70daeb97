"""LCUS USB relay boards (CH340, 9600 8N1; PROTOCOLS.md §4) as a sans-I/O codec.

Owns the four-byte command frame ``A0 <channel> <state> <sum>``: :func:`encode` builds the
frame the daemon sends, :class:`LcusDecoder` reads frames back (the simulator's side). The
boards never answer, so there is no reply format. Nothing here performs I/O.

Invariants:
- ``sum`` is the low byte of ``A0 + channel + state``, so ``A0 01 01 A2`` switches channel 1
  on and ``A0 01 00 A1`` switches it off (§4);
- :func:`encode` only produces frames that decode back to what was encoded, and raises
  ``ValueError`` for a channel outside 1-255;
- ``receive_data`` accepts bytes at any chunk boundary (the commands and counters do not
  depend on where the chunks split), never raises, and buffers fewer
  than :data:`FRAME_BYTES` bytes; a candidate whose sum fails, or whose channel is 0 or
  state is neither 0 nor 1, costs only its ``A0`` byte, so a genuine frame hidden behind
  a false header is still found.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

HEADER = 0xA0
FRAME_BYTES = 4


class State(IntEnum):
    """The operation byte (PROTOCOLS.md §4)."""

    OFF = 0x00
    ON = 0x01


@dataclass(frozen=True, slots=True)
class RelayCommand:
    """Switch one relay channel (1-based, as printed on the board)."""

    channel: int
    on: bool


def encode(channel: int, on: bool) -> bytes:
    """The frame that switches ``channel`` on or off."""
    if not 1 <= channel <= 0xFF:
        raise ValueError(f"an LCUS channel is 1-255, got {channel}")
    head = bytes((HEADER, channel, State.ON if on else State.OFF))
    return head + bytes((sum(head) & 0xFF,))


class LcusDecoder:
    """The board's side of the link: decodes the commands a host sends."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._frames = 0
        self._checksum_errors = 0
        self._malformed = 0
        self._resyncs = 0
        self._skipping = False

    @property
    def frames(self) -> int:
        """Commands decoded."""
        return self._frames

    @property
    def checksum_errors(self) -> int:
        """Candidates dropped at their ``A0`` because their sum byte did not match."""
        return self._checksum_errors

    @property
    def malformed(self) -> int:
        """Candidates dropped at their ``A0`` for a channel 0 or a state other than 0 / 1."""
        return self._malformed

    @property
    def resyncs(self) -> int:
        """Runs of bytes skipped to find the next ``A0`` (counted once per run)."""
        return self._resyncs

    def receive_data(self, data: bytes) -> list[RelayCommand]:
        """Feed received bytes; return the commands they complete, in order."""
        buf = self._buffer
        buf += data
        commands: list[RelayCommand] = []
        pos = 0
        while pos < len(buf):
            if buf[pos] != HEADER:
                found = buf.find(HEADER, pos)
                pos = len(buf) if found < 0 else found
                if not self._skipping:  # one run of junk is one resync, however it arrives
                    self._skipping = True
                    self._resyncs += 1
                continue
            self._skipping = False
            if len(buf) - pos < FRAME_BYTES:
                break
            _, channel, state, check = buf[pos : pos + FRAME_BYTES]
            if (HEADER + channel + state) & 0xFF != check:
                self._checksum_errors += 1
                pos += 1
            elif channel == 0 or state not in (State.OFF, State.ON):
                self._malformed += 1
                pos += 1
            else:
                self._frames += 1
                commands.append(RelayCommand(channel, state == State.ON))
                pos += FRAME_BYTES
        del buf[:pos]
        return commands
