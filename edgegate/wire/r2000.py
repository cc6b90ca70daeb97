"""The Impinj Indy R2000 "CN" serial protocol (PROTOCOLS.md §1) as a sans-I/O codec.

Owns the byte format of the protocol in both roles: :class:`R2000Host` (the daemon's side:
requests out, reply events in) and :class:`R2000Device` (a simulator's side: requests in,
reply frames out through the ``encode_*`` functions). Like h11 or wsproto, nothing here
performs I/O, reads a clock, logs or knows about asyncio: a caller feeds whatever bytes it
received and gets back zero or more events.

Invariants:
- ``receive_data`` accepts bytes at any chunk boundary (the events and counters do not
  depend on where the chunks split), never raises on any input and keeps at most one
  partial frame buffered (< 257 bytes, since ``Len`` is one byte);
- a frame becomes an event only if its checksum holds; a candidate that fails it costs
  exactly its ``0xA0`` byte, so a genuine frame hidden behind a false header is still found;
- a candidate is judged malformed, again costing only its ``0xA0``, as soon as its visible
  bytes rule it out: ``Len`` below 3, a ``Cmd`` that is not in :class:`Cmd`, or — for replies
  to 89 / 8A / 8B — a ``Len`` that is neither an error, an end of round, an antenna fault
  (8A only), nor ``7 +`` the EPC length its PC word announces. Without this, a stray
  ``0xA0`` before the last frame of a round would be read as a 160-byte ``Len`` and hold
  that frame back until the line, silent between rounds, timed out;
- the ``encode_*`` functions only ever produce frames that decode back to what was encoded,
  and raise ``ValueError`` for arguments that cannot be encoded;
- the ``decode_*`` functions, which read the data of a plain :class:`Reply` or
  :class:`Request`, raise nothing but :class:`R2000Error` on any input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum, auto

HEADER = 0xA0
BROADCAST = 0xFF
MAX_FRAME_BYTES = 0xFF + 2
"""``Len`` counts ``Addr`` through ``Check`` and is one byte, plus ``A0`` and ``Len`` (§1)."""

# Addr, Cmd and Check are always present: the shortest frame is a request without data (72).
_MIN_LEN = 3
# Fixed `Len` values of the non-tag frames that answer 89 / 8A / 8B (PROTOCOLS.md §1, table
# and the 8A notes below it). A tag frame has Len = 7 + EPC bytes >= 7, so it can never be
# mistaken for 04 or 05, and EPC bytes are whole 16-bit words, so its Len is odd and never 0A.
_ERROR_LEN = 0x04
_ANTENNA_FAULT_LEN = 0x05  # 8A only: AntID ErrCode, and the round goes on
_ROUND_END_LEN = 0x0A  # 89 / 8B: AntID ReadRate TotalRead; 8A: TotalRead(3) CommandDuration(4)
# 8A request data: four (antenna, stay) slots, then Interval and Repeat (§1).
FAST_SWITCH_SLOTS = 4
_FAST_SWITCH_DATA_LEN = 2 * FAST_SWITCH_SLOTS + 2
_FAST_SWITCH_MAX_ANTENNA = 3  # "antenna > 3 disables a slot" (§1)
_DISABLED_SLOT = (0xFF, 0x00)
# R2000 modules are specified for 0-33 dBm output power.
MAX_RF_POWER_DBM = 33
# FreqAnt + PC + RSSI around the EPC in a tag frame's data (§1).
_TAG_OVERHEAD = 4
# A0 Len Addr Cmd FreqAnt PC: enough of a tag frame to check its Len against its PC.
_VETTED_BYTES = 7
# 8-port readers reuse RSSI bit 7 as "antenna + 4" (§1); real RSSI values fit in 7 bits.
_RSSI_ANTENNA_BIT = 0x80
_RSSI_VALUE_MASK = 0x7F
_RSSI_OFFSET_DBM = 129
_MAX_EPC_BYTES = 0x1F * 2


class Cmd(IntEnum):
    """The commands of PROTOCOLS.md §1 — the only ones this codec frames.

    A reply echoes its request's code, so a frame carrying any other code is a false
    header. Supporting another command starts by adding it here.
    """

    RESET = 0x70
    SET_BAUD = 0x71  # data 03 = 38400, 04 = 115200
    GET_FIRMWARE_VERSION = 0x72
    SET_WORK_ANTENNA = 0x74  # data: antenna 0-3 (0-7 on 8-port readers)
    GET_WORK_ANTENNA = 0x75
    SET_RF_POWER = 0x76
    GET_RF_POWER = 0x77
    BUFFERED_INVENTORY = 0x80
    REAL_TIME_INVENTORY = 0x89  # data: Repeat
    FAST_SWITCH_INVENTORY = 0x8A  # data: A Astay B Bstay C Cstay D Dstay Interval Repeat
    SESSION_INVENTORY = 0x8B  # data: Session(0-3) Target(0=A, 1=B) Repeat
    GET_INVENTORY_BUFFER = 0x90
    GET_AND_RESET_INVENTORY_BUFFER = 0x91
    GET_INVENTORY_BUFFER_COUNT = 0x92
    RESET_INVENTORY_BUFFER = 0x93


class Status(IntEnum):
    """One-byte status and error codes (PROTOCOLS.md §1)."""

    SUCCESS = 0x10
    FAIL = 0x11
    ANTENNA_MISSING = 0x22
    INVENTORY_ERROR = 0x31
    NO_TAG = 0x36
    BUFFER_EMPTY = 0x38
    INVALID_PARAMETER = 0x41


# Commands whose replies are a stream of tag frames closed by an end-of-round or error frame.
INVENTORY_COMMANDS = frozenset(
    {Cmd.REAL_TIME_INVENTORY, Cmd.FAST_SWITCH_INVENTORY, Cmd.SESSION_INVENTORY}
)
# The inventory commands whose end of round is AntID ReadRate TotalRead (§1, table).
ROUND_END_COMMANDS = frozenset({Cmd.REAL_TIME_INVENTORY, Cmd.SESSION_INVENTORY})
_COMMANDS = frozenset(Cmd)


class R2000Error(ValueError):
    """Received data that does not fit its command (e.g. a 72 reply that is not two bytes)."""


def checksum(data: bytes) -> int:
    """The ``Check`` byte for ``data`` (everything before it): two's complement of the sum."""
    return -sum(data) & 0xFF


def encode_frame(address: int, cmd: int, data: bytes = b"") -> bytes:
    """``A0 Len Addr Cmd Data Check`` (PROTOCOLS.md §1)."""
    _require_byte("address", address)
    if cmd not in _COMMANDS:
        raise ValueError(f"not a command of PROTOCOLS.md §1: {cmd:#04x}")
    length = _MIN_LEN + len(data)
    if length > 0xFF:
        raise ValueError(f"data too long for one frame: {len(data)} bytes")
    head = bytes((HEADER, length, address, cmd)) + data
    return head + bytes((checksum(head),))


def pc_for_epc(epc: bytes) -> int:
    """A Gen2 PC word whose length bits announce ``epc`` (other PC bits zero)."""
    if len(epc) % 2 or len(epc) > _MAX_EPC_BYTES:
        raise ValueError(f"an EPC is 0-{_MAX_EPC_BYTES} bytes in whole words, got {len(epc)}")
    return (len(epc) // 2) << 11


def _epc_length(pc: int) -> int:
    """EPC length in bytes from the PC word: ``((PC >> 11) & 0x1F) * 2`` (§1)."""
    return ((pc >> 11) & 0x1F) * 2


# --------------------------------------------------------------------------- host role


@dataclass(frozen=True, slots=True)
class TagRead:
    """One tag frame of an inventory round (reply to 89 / 8A / 8B)."""

    address: int
    cmd: int
    freq_index: int
    antenna: int
    """0-based wire antenna, 0-7: FreqAnt bits 1-0, plus 4 when RSSI bit 7 is set (§1)."""
    pc: int
    epc: bytes
    rssi_dbm: int

    @property
    def epc_hex(self) -> str:
        """The EPC as the whitelist keys it: upper-case hex (PROTOCOLS.md §5)."""
        return self.epc.hex().upper()


@dataclass(frozen=True, slots=True)
class RoundEnd:
    """The closing frame of a successful 89 / 8B round."""

    address: int
    cmd: int
    antenna: int
    read_rate: int
    """Tags read per second, as the reader measured it."""
    total_reads: int


@dataclass(frozen=True, slots=True)
class FastSwitchEnd:
    """The closing frame of a successful fast-switch (8A) round (§1, ``Len`` 0A)."""

    address: int
    cmd: int
    total_reads: int
    duration_ms: int
    """How long the reader spent on the command, as it measured it."""


@dataclass(frozen=True, slots=True)
class AntennaFault:
    """An 8A slot whose antenna failed (§1, ``Len`` 05); the round goes on with the next slot."""

    address: int
    cmd: int
    antenna: int
    """0-based wire antenna of the slot."""
    code: int
    """Usually :attr:`Status.ANTENNA_MISSING`."""


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """The closing frame of a failed inventory round: a :class:`Status` code, usually."""

    address: int
    cmd: int
    code: int


@dataclass(frozen=True, slots=True)
class Reply:
    """Any other reply, undecoded: the ``Data`` bytes between ``Cmd`` and ``Check``.

    Whether a one-byte reply is a status or a value depends on the command (74 answers
    :attr:`Status.SUCCESS`, 75 answers the antenna number), so that is left to the caller.
    """

    address: int
    cmd: int
    data: bytes


HostEvent = TagRead | RoundEnd | FastSwitchEnd | AntennaFault | ErrorReply | Reply


@dataclass(frozen=True, slots=True)
class FirmwareVersion:
    """The reply to 72: ``Major Minor``."""

    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


def decode_firmware_version(data: bytes) -> FirmwareVersion:
    """The ``Data`` of a 72 reply; a one-byte reply is a failure status, not a version."""
    if len(data) != 2:
        raise R2000Error(f"a firmware version is 2 bytes (major, minor), got {data.hex()!r}")
    return FirmwareVersion(data[0], data[1])


def decode_rf_power(data: bytes) -> tuple[int, ...]:
    """The ``Data`` of a 77 reply: one output power in dBm for every antenna, or one per port.

    A single byte is the power of every antenna. Per-port replies (4 or 8 bytes) come from
    readers that set each antenna's power separately.
    """
    if len(data) not in (1, 4, 8):
        raise R2000Error(f"an RF power reply is 1, 4 or 8 bytes, got {data.hex()!r}")
    if any(power > MAX_RF_POWER_DBM for power in data):
        raise R2000Error(f"RF power above {MAX_RF_POWER_DBM} dBm in {data.hex()!r}")
    return tuple(data)


@dataclass(frozen=True, slots=True)
class Request:
    """One request frame as a device receives it."""

    address: int
    cmd: int
    data: bytes


class _Header(Enum):
    """What the visible bytes of a candidate frame say about it."""

    NEED_MORE = auto()
    PLAUSIBLE = auto()
    MALFORMED = auto()


class _FrameReceiver:
    """Framing shared by both roles: find ``A0``, vet the header, wait for ``Len + 2`` bytes,
    verify the checksum."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._frames = 0
        self._checksum_errors = 0
        self._malformed = 0
        self._resyncs = 0
        self._bytes_discarded = 0

    @property
    def frames(self) -> int:
        """Frames whose checksum held."""
        return self._frames

    @property
    def checksum_errors(self) -> int:
        """Complete, well-formed candidate frames whose checksum failed."""
        return self._checksum_errors

    @property
    def malformed(self) -> int:
        """Candidates dropped at their ``A0`` because their header cannot be a frame's."""
        return self._malformed

    @property
    def resyncs(self) -> int:
        """Times a run of bytes had to be skipped to find the next ``A0``."""
        return self._resyncs

    @property
    def buffered(self) -> int:
        """Bytes held back until the rest of their frame arrives (< ``MAX_FRAME_BYTES``)."""
        return len(self._buffer)

    @property
    def bytes_discarded(self) -> int:
        """Every byte dropped: skipped runs plus the ``A0`` of each false header."""
        return self._bytes_discarded

    def _receive_frames(self, data: bytes) -> list[bytes]:
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        pos = 0
        end_of_data = len(buf)
        while pos < end_of_data:
            if buf[pos] != HEADER:
                found = buf.find(HEADER, pos)
                skip_to = end_of_data if found < 0 else found
                self._resyncs += 1
                self._bytes_discarded += skip_to - pos
                pos = skip_to
                continue
            header = self._vet_header(buf[pos : pos + _VETTED_BYTES])
            if header is _Header.NEED_MORE:
                break
            if header is _Header.MALFORMED:
                self._malformed += 1
                pos = self._drop_header(pos)
                continue
            end = pos + buf[pos + 1] + 2
            if end > end_of_data:
                break
            frame = bytes(buf[pos:end])
            # A valid frame sums to 0 mod 256 because Check is the two's complement (§1).
            if sum(frame) & 0xFF:
                self._checksum_errors += 1
                # Drop only the A0: the real frame may start inside this false candidate.
                pos = self._drop_header(pos)
                continue
            self._frames += 1
            frames.append(frame)
            pos = end
        del buf[:pos]
        return frames

    def _vet_header(self, head: bytearray) -> _Header:
        """Judge a candidate from its first bytes (``A0 Len Addr Cmd ...``, as many as have
        arrived, up to ``_VETTED_BYTES``)."""
        if len(head) < 2:
            return _Header.NEED_MORE
        if head[1] < _MIN_LEN:
            return _Header.MALFORMED
        if len(head) < 4:
            return _Header.NEED_MORE
        # Every reply echoes its request's Cmd, and this codec only sends and serves the
        # commands of §1, so any other byte here marks a false header.
        if head[3] not in _COMMANDS:
            return _Header.MALFORMED
        return _Header.PLAUSIBLE

    def _drop_header(self, pos: int) -> int:
        self._bytes_discarded += 1
        return pos + 1


class R2000Host(_FrameReceiver):
    """The host (daemon) side of one connection to one reader."""

    def __init__(self, address: int = BROADCAST) -> None:
        super().__init__()
        _require_byte("address", address)
        self._address = address

    @property
    def address(self) -> int:
        """The reader address put in every request (``FF`` = broadcast)."""
        return self._address

    def receive_data(self, data: bytes) -> list[HostEvent]:
        """Feed received bytes; return the events they complete, in order."""
        return [_decode_reply(frame) for frame in self._receive_frames(data)]

    def inventory(self, repeat: int) -> bytes:
        """Real-time inventory (89) on the work antenna, ``repeat`` rounds."""
        _require_byte("repeat", repeat)
        return encode_frame(self._address, Cmd.REAL_TIME_INVENTORY, bytes((repeat,)))

    def session_inventory(self, session: int, target: int, repeat: int) -> bytes:
        """Session inventory (8B): Gen2 ``session`` 0-3, ``target`` 0 = A, 1 = B."""
        if not 0 <= session <= 3:
            raise ValueError(f"session must be 0-3, got {session}")
        if target not in (0, 1):
            raise ValueError(f"target must be 0 (A) or 1 (B), got {target}")
        _require_byte("repeat", repeat)
        return encode_frame(self._address, Cmd.SESSION_INVENTORY, bytes((session, target, repeat)))

    def fast_switch_inventory(
        self, slots: Sequence[tuple[int, int]], interval_ms: int, repeat: int
    ) -> bytes:
        """Fast-switch antenna inventory (8A) over up to four ``(antenna, stay)`` slots.

        ``antenna`` is 0-3 (wire numbering), ``stay`` the rounds spent on it per visit;
        unused slots are sent disabled (antenna ``FF``, §1: "antenna > 3 disables a slot").
        ``interval_ms`` is the rest between antennas, ``repeat`` the loops over the slots.
        """
        if not 1 <= len(slots) <= FAST_SWITCH_SLOTS:
            raise ValueError(f"8A takes 1-{FAST_SWITCH_SLOTS} slots, got {len(slots)}")
        for antenna, stay in slots:
            if not 0 <= antenna <= _FAST_SWITCH_MAX_ANTENNA:
                raise ValueError(f"8A antennas are 0-{_FAST_SWITCH_MAX_ANTENNA}, got {antenna}")
            if not 1 <= stay <= 0xFF:
                raise ValueError(f"stay must be 1-255, got {stay}")
        _require_byte("interval_ms", interval_ms)
        _require_byte("repeat", repeat)
        padded = [*slots] + [_DISABLED_SLOT] * (FAST_SWITCH_SLOTS - len(slots))
        data = bytes(b for slot in padded for b in slot) + bytes((interval_ms, repeat))
        return encode_frame(self._address, Cmd.FAST_SWITCH_INVENTORY, data)

    def set_work_antenna(self, antenna: int) -> bytes:
        """Set work antenna (74): 0-based wire antenna, 0-7."""
        if not 0 <= antenna <= 7:
            raise ValueError(f"antenna must be 0-7, got {antenna}")
        return encode_frame(self._address, Cmd.SET_WORK_ANTENNA, bytes((antenna,)))

    def get_work_antenna(self) -> bytes:
        """Get work antenna (75)."""
        return encode_frame(self._address, Cmd.GET_WORK_ANTENNA)

    def set_rf_power(self, dbm: int) -> bytes:
        """Set RF output power (76) of every antenna, in dBm."""
        if not 0 <= dbm <= MAX_RF_POWER_DBM:
            raise ValueError(f"RF power must be 0-{MAX_RF_POWER_DBM} dBm, got {dbm}")
        return encode_frame(self._address, Cmd.SET_RF_POWER, bytes((dbm,)))

    def get_rf_power(self) -> bytes:
        """Get RF output power (77); the reply is read by :func:`decode_rf_power`."""
        return encode_frame(self._address, Cmd.GET_RF_POWER)

    def get_firmware_version(self) -> bytes:
        """Get firmware version (72); the reply is read by :func:`decode_firmware_version`."""
        return encode_frame(self._address, Cmd.GET_FIRMWARE_VERSION)

    def _vet_header(self, head: bytearray) -> _Header:
        header = super()._vet_header(head)
        if header is not _Header.PLAUSIBLE or head[3] not in INVENTORY_COMMANDS:
            return header
        # Which frame answers 89 / 8A / 8B is told by Len alone (§1, table); a tag
        # frame's Len must also agree with the EPC length announced by its PC.
        if head[1] in (_ERROR_LEN, _ROUND_END_LEN):
            return _Header.PLAUSIBLE
        if head[1] == _ANTENNA_FAULT_LEN:
            # Only 8A reports a faulty slot and goes on; for 89 / 8B, 05 is no frame's Len.
            if head[3] == Cmd.FAST_SWITCH_INVENTORY:
                return _Header.PLAUSIBLE
            return _Header.MALFORMED
        if len(head) < _VETTED_BYTES:
            return _Header.NEED_MORE
        pc = int.from_bytes(head[5:7], "big")
        if head[1] == _MIN_LEN + _TAG_OVERHEAD + _epc_length(pc):
            return _Header.PLAUSIBLE
        return _Header.MALFORMED


def _decode_reply(frame: bytes) -> HostEvent:
    """Decode a frame that passed :meth:`R2000Host._vet_header` and its checksum."""
    length, address, cmd = frame[1], frame[2], frame[3]
    data = frame[4:-1]
    if cmd not in INVENTORY_COMMANDS:
        return Reply(address, cmd, data)
    if length == _ERROR_LEN:
        return ErrorReply(address, cmd, data[0])
    if length == _ANTENNA_FAULT_LEN:
        return AntennaFault(address, cmd, antenna=data[0], code=data[1])
    if length == _ROUND_END_LEN and cmd == Cmd.FAST_SWITCH_INVENTORY:
        return FastSwitchEnd(
            address,
            cmd,
            total_reads=int.from_bytes(data[0:3], "big"),
            duration_ms=int.from_bytes(data[3:7], "big"),
        )
    if length == _ROUND_END_LEN:
        return RoundEnd(
            address,
            cmd,
            antenna=data[0],
            read_rate=int.from_bytes(data[1:3], "big"),
            total_reads=int.from_bytes(data[3:7], "big"),
        )
    freq_ant, rssi = data[0], data[-1]
    return TagRead(
        address,
        cmd,
        freq_index=freq_ant >> 2,
        antenna=(freq_ant & 0x03) + (4 if rssi & _RSSI_ANTENNA_BIT else 0),
        pc=int.from_bytes(data[1:3], "big"),
        epc=data[3:-1],
        rssi_dbm=(rssi & _RSSI_VALUE_MASK) - _RSSI_OFFSET_DBM,
    )


# ------------------------------------------------------------------------- device role


class R2000Device(_FrameReceiver):
    """The device (reader) side of one connection: decodes requests."""

    def receive_data(self, data: bytes) -> list[Request]:
        """Feed received bytes; return the requests they complete, in order."""
        return [Request(f[2], f[3], f[4:-1]) for f in self._receive_frames(data)]


@dataclass(frozen=True, slots=True)
class FastSwitchRequest:
    """The data of an 8A request as a device reads it (§1)."""

    slots: tuple[tuple[int, int], ...]
    """The enabled ``(antenna, stay)`` slots, in order: antenna 0-3 and stay above 0."""
    interval_ms: int
    repeat: int


def decode_fast_switch_request(data: bytes) -> FastSwitchRequest:
    """``A Astay B Bstay C Cstay D Dstay Interval Repeat``; a slot whose antenna is above 3
    is disabled (§1), and so, since it would read nothing, is one whose stay is 0."""
    if len(data) != _FAST_SWITCH_DATA_LEN:
        raise R2000Error(f"8A data is {_FAST_SWITCH_DATA_LEN} bytes, got {len(data)}")
    slots = tuple(
        (data[i], data[i + 1])
        for i in range(0, 2 * FAST_SWITCH_SLOTS, 2)
        if data[i] <= _FAST_SWITCH_MAX_ANTENNA and data[i + 1]
    )
    return FastSwitchRequest(slots, interval_ms=data[-2], repeat=data[-1])


def encode_tag(
    address: int,
    cmd: int,
    freq_index: int,
    antenna: int,
    pc: int,
    epc: bytes,
    rssi_dbm: int,
) -> bytes:
    """One tag frame of an inventory round; ``antenna`` 4-7 sets RSSI bit 7 (§1)."""
    _require_inventory(cmd)
    if not 0 <= freq_index <= 0x3F:
        raise ValueError(f"frequency index must be 0-63, got {freq_index}")
    if not 0 <= antenna <= 7:
        raise ValueError(f"antenna must be 0-7, got {antenna}")
    _require_word("pc", pc)
    if _epc_length(pc) != len(epc):
        raise ValueError(f"PC {pc:04X} announces {_epc_length(pc)} EPC bytes, got {len(epc)}")
    rssi = rssi_dbm + _RSSI_OFFSET_DBM
    if not 0 <= rssi <= _RSSI_VALUE_MASK:
        raise ValueError(f"RSSI must be -129..-2 dBm, got {rssi_dbm}")
    if antenna >= 4:
        rssi |= _RSSI_ANTENNA_BIT
    data = bytes((freq_index << 2 | antenna & 0x03,)) + pc.to_bytes(2, "big") + epc
    return encode_frame(address, cmd, data + bytes((rssi,)))


def encode_round_end(
    address: int, cmd: int, antenna: int, read_rate: int, total_reads: int
) -> bytes:
    """The closing frame of a successful 89 / 8B round: ``AntID ReadRate TotalRead``."""
    if cmd not in ROUND_END_COMMANDS:
        raise ValueError(f"not 89 / 8B (8A closes with encode_fast_switch_end): {cmd:#04x}")
    _require_byte("antenna", antenna)
    _require_word("read_rate", read_rate)
    if not 0 <= total_reads <= 0xFFFFFFFF:
        raise ValueError(f"total_reads must fit in 4 bytes, got {total_reads}")
    data = bytes((antenna,)) + read_rate.to_bytes(2, "big") + total_reads.to_bytes(4, "big")
    return encode_frame(address, cmd, data)


def encode_fast_switch_end(address: int, total_reads: int, duration_ms: int) -> bytes:
    """The closing frame of a successful 8A round: ``TotalRead(3) CommandDuration(4, ms)``."""
    if not 0 <= total_reads <= 0xFFFFFF:
        raise ValueError(f"total_reads must fit in 3 bytes, got {total_reads}")
    if not 0 <= duration_ms <= 0xFFFFFFFF:
        raise ValueError(f"duration_ms must fit in 4 bytes, got {duration_ms}")
    data = total_reads.to_bytes(3, "big") + duration_ms.to_bytes(4, "big")
    return encode_frame(address, Cmd.FAST_SWITCH_INVENTORY, data)


def encode_antenna_fault(address: int, antenna: int, code: int) -> bytes:
    """An 8A antenna fault frame: ``AntID ErrCode`` (§1, ``Len`` 05)."""
    _require_byte("antenna", antenna)
    _require_byte("code", code)
    return encode_frame(address, Cmd.FAST_SWITCH_INVENTORY, bytes((antenna, code)))


def encode_error(address: int, cmd: int, code: int) -> bytes:
    """The error frame (``Len`` 04) closing a failed 89 / 8A / 8B round.

    Other commands report a failure in the same shape, e.g. 74 answering 22 (antenna missing).
    """
    _require_byte("code", code)
    return encode_frame(address, cmd, bytes((code,)))


def _require_inventory(cmd: int) -> None:
    # Only replies to 89 / 8A / 8B are read as tags; for any other command the same bytes
    # would decode as a plain Reply.
    if cmd not in INVENTORY_COMMANDS:
        raise ValueError(f"not an inventory command (89 / 8A / 8B): {cmd:#04x}")


def _require_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{name} must be 0-255, got {value}")


def _require_word(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} must be 0-65535, got {value}")
