"""The ThingMagic / JADAK Mercury serial protocol (PROTOCOLS.md §2) as a sans-I/O codec.

Owns the byte format of the protocol in both roles: :class:`ThingMagicHost` (the daemon's
side: requests out, response and tag-record events in) and :class:`ThingMagicDevice` (a
simulator's side: requests in, responses out through the ``encode_*`` functions). Like h11 or
wsproto, nothing here performs I/O, reads a clock, logs or knows about asyncio: a caller
feeds whatever bytes it received and gets back zero or more events.

Invariants:
- ``receive_data`` accepts bytes at any chunk boundary (the events and counters do not
  depend on where the chunks split), never raises on any input and keeps at most one
  partial frame buffered (< :data:`MAX_FRAME_BYTES`);
- a frame becomes an event only if its message CRC holds. ``0xFF`` is common inside frames
  (metadata flags ``01FF``, EPCs, CRCs), so a candidate that fails its CRC costs exactly its
  ``0xFF`` and the search resumes at the next byte: a genuine frame behind a false header is
  still found;
- a candidate is judged malformed, again costing only its ``0xFF``, as soon as its visible
  bytes rule it out: a ``LEN`` that makes the frame longer than the module's 256-byte packet
  buffer (a stray ``0xFF`` before a real frame always reads the real ``0xFF`` as ``LEN``), or
  an opcode that the Mercury protocol does not have;
- a :class:`TagRecord` is produced only when the record's layout agrees with its metadata
  flags, its EPC length agrees with its PC word, and its tag CRC (CRC-16/GENIBUS over PC,
  XPC and EPC) holds; anything else is counted and dropped, so a phantom EPC needs both the
  message CRC and the tag CRC to be fooled at once;
- the ``encode_*`` functions and request builders only produce frames that decode back to
  what was encoded, and raise ``ValueError`` for arguments that cannot be encoded;
  :func:`decode_reading_command` raises :class:`ProtocolError` (a ``ValueError``) and nothing
  else for request data it cannot accept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from edgegate.wire import gen2

HEADER = 0xFF
MAX_FRAME_BYTES = 256
"""The Mercury API's packet buffer (``TMR_SR_MAX_PACKET_SIZE``): no frame is longer."""
GEN2_PROTOCOL = 0x05
"""Tag protocol code of EPC Gen2 (§2: set protocol ``93``, Gen2 = ``05``)."""

# FF LEN OPCODE ... CRC_HI CRC_LO (§2); responses add STATUS_HI STATUS_LO after OPCODE.
_REQUEST_OVERHEAD = 5
_RESPONSE_OVERHEAD = 7
_CRC_INIT = 0xFFFF
# §2's nibble table: T[i] = the CRC-16 (poly 0x1021) of the nibble i.
_NIBBLE_TABLE = (
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50A5, 0x60C6, 0x70E7,
    0x8108, 0x9129, 0xA14A, 0xB16B, 0xC18C, 0xD1AD, 0xE1CE, 0xF1EF,
)  # fmt: skip
# Option bit of a read command and of its echo in a streamed record: metadata follows.
_OPTION_METADATA = 0x10
# Offset 10 of a streamed 22 response (data offset 5) says what follows: 01 = one tag
# record and the stream continues; 00 ends a stream, 02 is a status report (Mercury API).
_ONE_STREAMED_TAG = 0x01
# option, search flags (2), metadata flags (2), tag count: before the first metadata field.
_RECORD_HEADER_BYTES = 6
# PC and tag CRC around the EPC: the least an "EPC bit length" can announce.
_MIN_TAG_BYTES = 4


class Opcode(IntEnum):
    """Mercury opcodes (§2 lists the ones edgegate sends; the rest appear in the captures or
    in the Mercury API). A response echoes its request's opcode, so a candidate frame with
    any other byte there is a false header."""

    WRITE_FLASH = 0x01
    READ_FLASH = 0x02
    VERSION = 0x03
    BOOT_FIRMWARE = 0x04
    SET_BAUD_RATE = 0x06  # data: baud rate, 4 bytes
    ERASE_FLASH = 0x07
    VERIFY_IMAGE_CRC = 0x08
    BOOT_BOOTLOADER = 0x09
    MODIFY_FLASH = 0x0A
    GET_DSP_SILICON_ID = 0x0B
    GET_CURRENT_PROGRAM = 0x0C
    WRITE_FLASH_SECTOR = 0x0D
    GET_SECTOR_SIZE = 0x0E
    MODIFY_FLASH_SECTOR = 0x0F
    HW_VERSION = 0x10
    READ_TAG_ID_SINGLE = 0x21
    READ_TAG_ID_MULTIPLE = 0x22  # also the opcode of every streamed record and keep-alive
    WRITE_TAG_ID = 0x23
    WRITE_TAG_DATA = 0x24
    LOCK_TAG = 0x25
    KILL_TAG = 0x26
    READ_TAG_DATA = 0x28  # embedded in a 22 command to read e.g. the TID bank
    GET_TAG_ID_BUFFER = 0x29
    CLEAR_TAG_ID_BUFFER = 0x2A
    WRITE_TAG_SPECIFIC = 0x2D
    ERASE_BLOCK_TAG_SPECIFIC = 0x2E
    MULTI_PROTOCOL_TAG_OP = 0x2F  # continuous reading: start (option 01) / stop (option 02)
    GET_ANTENNA_PORT = 0x61
    GET_READ_TX_POWER = 0x62
    GET_TAG_PROTOCOL = 0x63
    GET_WRITE_TX_POWER = 0x64
    GET_FREQ_HOP_TABLE = 0x65
    GET_USER_GPIO_INPUTS = 0x66
    GET_REGION = 0x67
    GET_POWER_MODE = 0x68
    GET_USER_MODE = 0x69
    GET_READER_OPTIONAL_PARAMS = 0x6A
    GET_PROTOCOL_PARAM = 0x6B
    GET_READER_STATS = 0x6C
    GET_USER_PROFILE = 0x6D
    GET_AVAILABLE_PROTOCOLS = 0x70
    GET_AVAILABLE_REGIONS = 0x71
    GET_TEMPERATURE = 0x72
    SET_ANTENNA_PORT = 0x91  # data: 02 (logical list) then TX RX per antenna
    SET_READ_TX_POWER = 0x92  # data: centi-dBm, 2 bytes
    SET_TAG_PROTOCOL = 0x93  # data: protocol, 2 bytes (Gen2 = 0005)
    SET_WRITE_TX_POWER = 0x94
    SET_FREQ_HOP_TABLE = 0x95
    SET_USER_GPIO_OUTPUTS = 0x96
    SET_REGION = 0x97  # data: region code, 1 byte
    SET_POWER_MODE = 0x98
    SET_USER_MODE = 0x99
    SET_READER_OPTIONAL_PARAMS = 0x9A  # data 01 0C 00: read filter off
    SET_PROTOCOL_PARAM = 0x9B
    SET_USER_PROFILE = 0x9D
    SET_PROTOCOL_LICENSE_KEY = 0x9E
    SET_OPERATING_FREQ = 0xC1
    TX_CW_SIGNAL = 0xC3


class StatusWord(IntEnum):
    """Response status words (§2; names from the Mercury API's status codes)."""

    OK = 0x0000
    WRONG_NUMBER_OF_DATA = 0x0100
    INVALID_OPCODE = 0x0101
    UNIMPLEMENTED_OPCODE = 0x0102
    POWER_TOO_HIGH = 0x0103
    INVALID_FREQUENCY = 0x0104
    INVALID_PARAMETER_VALUE = 0x0105
    POWER_TOO_LOW = 0x0106
    UNIMPLEMENTED_FEATURE = 0x0109
    INVALID_BAUD_RATE = 0x010A
    INVALID_REGION = 0x010B
    NO_TAGS_FOUND = 0x0400  # also the keep-alive while streaming
    NO_PROTOCOL_DEFINED = 0x0401
    INVALID_PROTOCOL = 0x0402
    AFE_NOT_ON = 0x0405
    GENERAL_TAG_ERROR = 0x040A
    ANTENNA_NOT_CONNECTED = 0x0503
    TEMPERATURE_THROTTLE = 0x0504
    HIGH_RETURN_LOSS = 0x0505
    INVALID_ANTENNA_CONFIG = 0x0507
    TAG_ID_BUFFER_FULL = 0x0601
    SYSTEM_UNKNOWN_ERROR = 0x7F00


class MetadataFlag(IntFlag):
    """Which metadata fields a tag record carries, in this wire order (§2)."""

    READ_COUNT = 0x0001  # 1 byte
    RSSI = 0x0002  # 1 byte, signed dBm
    ANTENNA = 0x0004  # 1 byte: TX port in the high nibble, RX port in the low
    FREQUENCY = 0x0008  # 3 bytes, kHz
    TIMESTAMP = 0x0010  # 4 bytes, ms
    PHASE = 0x0020  # 2 bytes
    PROTOCOL = 0x0040  # 1 byte
    DATA = 0x0080  # bit length (2 bytes) then the bytes, e.g. an embedded TID read
    GPIO = 0x0100  # 1 byte
    ALL = 0x01FF


class SearchFlag(IntFlag):
    """Search flags of a read command (Mercury API ``TMR_SR_SearchFlag``)."""

    CONFIGURED_LIST = 0x0003  # read on the antennas set by 91
    EMBEDDED_COMMAND = 0x0004  # an embedded tag operation follows the metadata flags
    TAG_STREAMING = 0x0008  # stream each record as it is read (continuous reading)
    LARGE_TAG_POPULATION = 0x0010


class MemoryBank(IntEnum):
    """Gen2 memory banks, for an embedded read (opcode 28)."""

    RESERVED = 0
    EPC = 1
    TID = 2
    USER = 3


class ReadingCommand(IntEnum):
    """The option byte of a 2F multi-protocol operation (§2)."""

    START = 0x01
    STOP = 0x02


_OPCODES = frozenset(Opcode)
_MAX_RESPONSE_LEN = MAX_FRAME_BYTES - _RESPONSE_OVERHEAD
_MAX_REQUEST_LEN = MAX_FRAME_BYTES - _REQUEST_OVERHEAD
# Plain ints, not IntFlag: `~` on an IntFlag inverts only its defined bits.
_KNOWN_METADATA = int(MetadataFlag.ALL)
# Sizes of the fixed-size metadata fields; DATA has a bit-length prefix instead.
_FIELD_BYTES = {
    MetadataFlag.READ_COUNT: 1,
    MetadataFlag.RSSI: 1,
    MetadataFlag.ANTENNA: 1,
    MetadataFlag.FREQUENCY: 3,
    MetadataFlag.TIMESTAMP: 4,
    MetadataFlag.PHASE: 2,
    MetadataFlag.PROTOCOL: 1,
    MetadataFlag.GPIO: 1,
}
# Every field in wire order (§2) as (flag bit, size); size 0 marks DATA.
_FIELD_LAYOUT = tuple(
    (int(flag), _FIELD_BYTES.get(flag, 0))
    for flag in (
        MetadataFlag.READ_COUNT,
        MetadataFlag.RSSI,
        MetadataFlag.ANTENNA,
        MetadataFlag.FREQUENCY,
        MetadataFlag.TIMESTAMP,
        MetadataFlag.PHASE,
        MetadataFlag.PROTOCOL,
        MetadataFlag.DATA,
        MetadataFlag.GPIO,
    )
)
_XPC_XEB_BIT = gen2.XPC_XEB >> 8  # XEB is the top bit of XPC_W1's first byte
# Continuous reading, §2: the outer 2F op wraps one 22 read command for one protocol.
_OUTER_SEARCH_FLAGS = 0x0000
_STREAMING_SEARCH = int(
    SearchFlag.CONFIGURED_LIST | SearchFlag.TAG_STREAMING | SearchFlag.LARGE_TAG_POPULATION
)
# Embedded tag operations: count 1, then the 28 command's length after its opcode.
_EMBEDDED_COUNT = 1
_EMBEDDED_READ_LEN = 9


class ProtocolError(ValueError):
    """Well-framed bytes that say something this codec cannot accept."""


def _nibble_step(crc: int, nibble: int) -> int:
    """One step of §2's CRC: ``crc = ((crc << 4) | nibble) ^ T[crc >> 12]`` (16-bit)."""
    return (((crc << 4) | nibble) ^ _NIBBLE_TABLE[crc >> 12]) & 0xFFFF


# Two nibble steps on a byte depend on the CRC's high byte only through T, so they fold into
# one table lookup per byte: step(step(c, hi), lo) == ((c << 8) | byte) ^ B[c >> 8], where
# B[h] is what the two steps make of h << 8 and a zero byte.
_BYTE_TABLE = tuple(_nibble_step(_nibble_step(high << 8, 0), 0) for high in range(256))


def crc(data: bytes) -> int:
    """§2's message CRC over ``data`` (``LEN`` through the last data byte, no ``FF``)."""
    value = _CRC_INIT
    table = _BYTE_TABLE
    for byte in data:
        value = (((value << 8) & 0xFFFF) | byte) ^ table[value >> 8]
    return value


def encode_request(opcode: int, data: bytes = b"") -> bytes:
    """``FF LEN OPCODE DATA CRC`` (host → module, §2)."""
    _require_opcode(opcode)
    if len(data) > _MAX_REQUEST_LEN:
        raise ValueError(f"request data too long for one frame: {len(data)} bytes")
    body = bytes((len(data), opcode)) + data
    return bytes((HEADER,)) + body + crc(body).to_bytes(2, "big")


def encode_response(opcode: int, status: int = StatusWord.OK, data: bytes = b"") -> bytes:
    """``FF LEN OPCODE STATUS DATA CRC`` (module → host, §2)."""
    _require_opcode(opcode)
    _require_word("status", status)
    if len(data) > _MAX_RESPONSE_LEN:
        raise ValueError(f"response data too long for one frame: {len(data)} bytes")
    body = bytes((len(data), opcode)) + status.to_bytes(2, "big") + data
    return bytes((HEADER,)) + body + crc(body).to_bytes(2, "big")


# --------------------------------------------------------------------------- host role


@dataclass(frozen=True, slots=True)
class Response:
    """Any response that is not a streamed tag record, undecoded: its status and data.

    While streaming, ``Response(0x22, 0x0400, b"")`` is the keep-alive (§2).
    """

    opcode: int
    status: int
    data: bytes

    @property
    def ok(self) -> bool:
        return self.status == StatusWord.OK


@dataclass(frozen=True, slots=True)
class TagRecord:
    """One streamed tag record (opcode 22), every metadata field as the module sent it.

    A field is ``None`` when the record's metadata flags leave it out; :attr:`metadata`
    is derived from which fields are present, so a record always re-encodes to its bytes.
    """

    pc: int
    epc: bytes
    xpc: bytes = b""
    """XPC_W1 (and XPC_W2) when PC bit 0x0200 announces them."""
    read_count: int | None = None
    rssi_dbm: int | None = None
    antenna: int | None = None
    """The raw antenna byte: TX port in the high nibble, RX port in the low (§2)."""
    frequency_khz: int | None = None
    timestamp_ms: int | None = None
    phase: int | None = None
    protocol: int | None = None
    data: bytes | None = None
    """Embedded read data, e.g. the TID, when the DATA flag is set (may be empty)."""
    gpio: int | None = None
    option: int = _OPTION_METADATA
    """The read command's option byte, echoed."""
    search_flags: int = _STREAMING_SEARCH
    """The read command's search flags, echoed."""

    @property
    def epc_hex(self) -> str:
        """The EPC as the whitelist keys it: upper-case hex (PROTOCOLS.md §5)."""
        return self.epc.hex().upper()

    @property
    def tx_port(self) -> int | None:
        """The 1-based antenna port that energised the tag (high nibble of the antenna)."""
        return None if self.antenna is None else self.antenna >> 4

    @property
    def rx_port(self) -> int | None:
        """The 1-based antenna port that heard the tag (low nibble of the antenna)."""
        return None if self.antenna is None else self.antenna & 0x0F

    @property
    def metadata(self) -> MetadataFlag:
        flags = MetadataFlag(0)
        for flag, value in (
            (MetadataFlag.READ_COUNT, self.read_count),
            (MetadataFlag.RSSI, self.rssi_dbm),
            (MetadataFlag.ANTENNA, self.antenna),
            (MetadataFlag.FREQUENCY, self.frequency_khz),
            (MetadataFlag.TIMESTAMP, self.timestamp_ms),
            (MetadataFlag.PHASE, self.phase),
            (MetadataFlag.PROTOCOL, self.protocol),
            (MetadataFlag.DATA, self.data),
            (MetadataFlag.GPIO, self.gpio),
        ):
            if value is not None:
                flags |= flag
        return flags


HostEvent = Response | TagRecord


@dataclass(frozen=True, slots=True)
class EmbeddedRead:
    """A memory read (opcode 28) the module performs on every tag it streams."""

    bank: int = MemoryBank.TID
    word_address: int = 0
    word_count: int = 6
    """Words to read: 6 words = the 96-bit serialised TID of most Gen2 chips."""


@dataclass(frozen=True, slots=True)
class ReadingPlan:
    """What a start of continuous reading asks for (§2); the defaults are the captured
    start command, byte for byte."""

    metadata: int = MetadataFlag.ALL
    on_time_ms: int = 1000
    """Length of one search cycle; a cycle that finds nothing ends in a 0400 keep-alive."""
    embedded_read: EmbeddedRead | None = None

    @property
    def search_flags(self) -> int:
        if self.embedded_read is None:
            return _STREAMING_SEARCH
        return _STREAMING_SEARCH | int(SearchFlag.EMBEDDED_COMMAND)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """The reply to get version (03): four 4-byte fields and the supported protocols."""

    bootloader: bytes
    hardware: bytes
    firmware_date: bytes
    """BCD ``YYYYMMDD``."""
    firmware: bytes
    protocols: int
    """Bit mask of the supported tag protocols (bit 4 = protocol 05, Gen2)."""

    @property
    def firmware_version(self) -> str:
        """As the Mercury API prints it, e.g. ``"01.03.01.47"``."""
        return ".".join(f"{byte:02x}" for byte in self.firmware)


_VERSION_BYTES = 20


def decode_version(data: bytes) -> VersionInfo:
    """Decode a version response's data; :class:`ProtocolError` unless it is 20 bytes."""
    if len(data) != _VERSION_BYTES:
        raise ProtocolError(f"a version reply carries {_VERSION_BYTES} bytes, got {len(data)}")
    return VersionInfo(
        bootloader=data[0:4],
        hardware=data[4:8],
        firmware_date=data[8:12],
        firmware=data[12:16],
        protocols=int.from_bytes(data[16:20], "big"),
    )


_DEFAULT_PLAN = ReadingPlan()


@dataclass(frozen=True, slots=True)
class StopReading:
    """The stop of continuous reading (§2: ``FF 03 2F 00 00 02 5E 86``)."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request frame as a device receives it."""

    opcode: int
    data: bytes


class _FrameReceiver:
    """Framing shared by both roles: find ``FF``, vet the header, wait for the whole frame,
    verify the CRC."""

    _overhead = _RESPONSE_OVERHEAD

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._frames = 0
        self._crc_errors = 0
        self._malformed = 0
        self._resyncs = 0
        self._skipping = False  # the last chunk ended inside a run of junk
        self._bytes_discarded = 0

    @property
    def frames(self) -> int:
        """Frames whose message CRC held."""
        return self._frames

    @property
    def crc_errors(self) -> int:
        """Complete, well-formed candidate frames whose message CRC failed."""
        return self._crc_errors

    @property
    def malformed(self) -> int:
        """Candidates dropped at their ``FF`` because their header cannot be a frame's."""
        return self._malformed

    @property
    def resyncs(self) -> int:
        """Times a run of bytes had to be skipped to find the next ``FF``."""
        return self._resyncs

    @property
    def buffered(self) -> int:
        """Bytes held back until the rest of their frame arrives (< ``MAX_FRAME_BYTES``)."""
        return len(self._buffer)

    @property
    def bytes_discarded(self) -> int:
        """Every byte dropped: skipped runs plus the ``FF`` of each false header."""
        return self._bytes_discarded

    def _receive_frames(self, data: bytes) -> list[bytes]:
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        overhead = self._overhead
        pos = 0
        end_of_data = len(buf)
        while pos < end_of_data:
            if buf[pos] != HEADER:
                found = buf.find(HEADER, pos)
                skip_to = end_of_data if found < 0 else found
                # One run of junk is one resync, however many chunks it arrives in.
                if not (pos == 0 and self._skipping):
                    self._resyncs += 1
                self._skipping = found < 0
                self._bytes_discarded += skip_to - pos
                pos = skip_to
                continue
            self._skipping = False
            if pos + 1 >= end_of_data:
                break
            size = buf[pos + 1] + overhead
            if size > MAX_FRAME_BYTES:
                self._malformed += 1
                pos = self._drop_header(pos)
                continue
            if pos + 2 >= end_of_data:
                break
            if buf[pos + 2] not in _OPCODES:
                self._malformed += 1
                pos = self._drop_header(pos)
                continue
            end = pos + size
            if end > end_of_data:
                break
            frame = bytes(buf[pos:end])
            if crc(frame[1:-2]) != int.from_bytes(frame[-2:], "big"):
                self._crc_errors += 1
                # Drop only the FF: the real frame may start inside this false candidate.
                pos = self._drop_header(pos)
                continue
            self._frames += 1
            frames.append(frame)
            pos = end
        del buf[:pos]
        return frames

    def _drop_header(self, pos: int) -> int:
        self._bytes_discarded += 1
        return pos + 1


class ThingMagicHost(_FrameReceiver):
    """The host (daemon) side of one connection to one module."""

    def __init__(self) -> None:
        super().__init__()
        self._tag_crc_errors = 0
        self._malformed_records = 0

    @property
    def tag_crc_errors(self) -> int:
        """Streamed records whose tag CRC (CRC-16/GENIBUS over PC, XPC, EPC) failed."""
        return self._tag_crc_errors

    @property
    def malformed_records(self) -> int:
        """Streamed records whose layout disagrees with their metadata flags or PC word."""
        return self._malformed_records

    def receive_data(self, data: bytes) -> list[HostEvent]:
        """Feed received bytes; return the events they complete, in order."""
        events: list[HostEvent] = []
        for frame in self._receive_frames(data):
            opcode = frame[2]
            status = int.from_bytes(frame[3:5], "big")
            payload = frame[5:-2]
            if not _is_streamed_tag(opcode, status, payload):
                events.append(Response(opcode, status, payload))
                continue
            try:
                events.append(_decode_tag_record(payload))
            except _TagCrcError:
                self._tag_crc_errors += 1
            except _MalformedRecordError:
                self._malformed_records += 1
        return events

    def version(self) -> bytes:
        """Get version (03): ``FF 00 03 1D 0C``."""
        return encode_request(Opcode.VERSION)

    def set_baud_rate(self, baudrate: int) -> bytes:
        """Set baud rate (06): the new rate as 4 bytes, big-endian."""
        if not 0 < baudrate <= 0xFFFFFFFF:
            raise ValueError(f"baud rate must fit in 4 bytes, got {baudrate}")
        return encode_request(Opcode.SET_BAUD_RATE, baudrate.to_bytes(4, "big"))

    def set_protocol_gen2(self) -> bytes:
        """Set tag protocol (93) to EPC Gen2 (``0005``)."""
        return encode_request(Opcode.SET_TAG_PROTOCOL, GEN2_PROTOCOL.to_bytes(2, "big"))

    def set_region(self, region: int) -> bytes:
        """Set region (97): the module's one-byte region code."""
        _require_byte("region", region)
        return encode_request(Opcode.SET_REGION, bytes((region,)))

    def set_antennas(self, ports: Sequence[int]) -> bytes:
        """Set antenna port (91), logical list: each 1-based port transmits and receives."""
        if not ports or any(not 1 <= port <= 0x0F for port in ports):
            raise ValueError(f"antenna ports must be 1-15, got {list(ports)}")
        pairs = b"".join(bytes((port, port)) for port in ports)
        return encode_request(Opcode.SET_ANTENNA_PORT, b"\x02" + pairs)

    def set_read_power(self, power_cdbm: int) -> bytes:
        """Set read TX power (92), in centi-dBm (2700 = 27 dBm)."""
        _require_word("read power", power_cdbm)
        return encode_request(Opcode.SET_READ_TX_POWER, power_cdbm.to_bytes(2, "big"))

    def disable_read_filter(self) -> bytes:
        """Set reader optional params (9A): read filter (0C) off, so every read streams."""
        return encode_request(Opcode.SET_READER_OPTIONAL_PARAMS, b"\x01\x0c\x00")

    def start_reading(self, plan: ReadingPlan = _DEFAULT_PLAN) -> bytes:
        """Start continuous reading (2F, option 01) with an embedded 22 read command."""
        _require_word("metadata flags", plan.metadata)
        if plan.metadata & ~_KNOWN_METADATA:
            raise ValueError(f"unknown metadata flags in {plan.metadata:04X}")
        if not 0 <= plan.on_time_ms <= 0xFFFF:
            raise ValueError(f"on-time must be 0-65535 ms, got {plan.on_time_ms}")
        read = (
            bytes((_OPTION_METADATA,))
            + plan.search_flags.to_bytes(2, "big")
            + plan.on_time_ms.to_bytes(2, "big")
            + plan.metadata.to_bytes(2, "big")
        )
        if plan.embedded_read is not None:
            read += _encode_embedded_read(plan.embedded_read)
        data = (
            bytes(2)  # timeout 0: run until stopped
            + bytes((ReadingCommand.START, Opcode.READ_TAG_ID_MULTIPLE))
            + _OUTER_SEARCH_FLAGS.to_bytes(2, "big")
            + bytes((GEN2_PROTOCOL, len(read), Opcode.READ_TAG_ID_MULTIPLE))
            + read
        )
        return encode_request(Opcode.MULTI_PROTOCOL_TAG_OP, data)

    def stop_reading(self) -> bytes:
        """Stop continuous reading (2F, option 02): ``FF 03 2F 00 00 02 5E 86``."""
        return encode_request(Opcode.MULTI_PROTOCOL_TAG_OP, bytes((0, 0, ReadingCommand.STOP)))


def _is_streamed_tag(opcode: int, status: int, payload: bytes) -> bool:
    # §2 offsets 5 (option echo) and 10 (tag count): the metadata option and one tag.
    return (
        opcode == Opcode.READ_TAG_ID_MULTIPLE
        and status == StatusWord.OK
        and len(payload) >= _RECORD_HEADER_BYTES
        and bool(payload[0] & _OPTION_METADATA)
        and payload[_RECORD_HEADER_BYTES - 1] == _ONE_STREAMED_TAG
    )


class _MalformedRecordError(Exception):
    """A record whose layout disagrees with its metadata flags or its PC word."""


class _TagCrcError(Exception):
    """A record whose tag CRC does not hold: the air interface garbled the tag's reply."""


def _decode_tag_record(payload: bytes) -> TagRecord:
    """Parse a streamed record by its metadata flags, in the order of §2, never by offsets."""
    flags = int.from_bytes(payload[3:5], "big")
    if flags & ~_KNOWN_METADATA:
        raise _MalformedRecordError  # an unknown field would shift everything after it
    values: list[int | None] = []
    data: bytes | None = None
    pos = _RECORD_HEADER_BYTES
    for flag, size in _FIELD_LAYOUT:
        if not flags & flag:
            values.append(None)
        elif size:
            values.append(int.from_bytes(payload[pos : pos + size], "big"))
            pos += size
        else:  # DATA: a bit length, then the bytes
            bits = int.from_bytes(payload[pos : pos + 2], "big")
            if bits % 8:
                raise _MalformedRecordError
            data = payload[pos + 2 : pos + 2 + bits // 8]
            pos += 2 + bits // 8
            values.append(None)
    # EPC bit length counts PC, XPC, EPC and the tag CRC: exactly what is left (§2).
    if pos + 2 > len(payload):
        raise _MalformedRecordError
    tag_bits = int.from_bytes(payload[pos : pos + 2], "big")
    tag = payload[pos + 2 :]
    if tag_bits % 16 or tag_bits // 8 != len(tag) or len(tag) < _MIN_TAG_BYTES:
        raise _MalformedRecordError
    pc = int.from_bytes(tag[:2], "big")
    xpc_end = 2
    if pc & gen2.PC_XI:
        xpc_end = 6 if len(tag) > 2 and tag[2] & _XPC_XEB_BIT else 4
    if len(tag) < xpc_end + 2 or len(tag) - xpc_end - 2 != gen2.epc_length(pc):
        raise _MalformedRecordError
    if gen2.crc16(tag[:-2]) != int.from_bytes(tag[-2:], "big"):
        raise _TagCrcError
    read_count, rssi, antenna, frequency, timestamp, phase, protocol, _, gpio = values
    return TagRecord(
        pc=pc,
        epc=tag[xpc_end:-2],
        xpc=tag[2:xpc_end],
        read_count=read_count,
        rssi_dbm=None if rssi is None else _signed_byte(rssi),
        antenna=antenna,
        frequency_khz=frequency,
        timestamp_ms=timestamp,
        phase=phase,
        protocol=protocol,
        data=data,
        gpio=gpio,
        option=payload[0],
        search_flags=int.from_bytes(payload[1:3], "big"),
    )


def _signed_byte(value: int) -> int:
    return value - 0x100 if value & 0x80 else value


# ------------------------------------------------------------------------- device role


class ThingMagicDevice(_FrameReceiver):
    """The device (module) side of one connection: decodes requests."""

    _overhead = _REQUEST_OVERHEAD

    def receive_data(self, data: bytes) -> list[Request]:
        """Feed received bytes; return the requests they complete, in order."""
        return [Request(f[2], f[3:-2]) for f in self._receive_frames(data)]


def decode_reading_command(data: bytes) -> ReadingPlan | StopReading:
    """What a 2F request's data asks for: a start of continuous reading, or its stop.

    Raises :class:`ProtocolError` for anything else, including a start this codec could not
    have built (another protocol, no streaming, no metadata, unknown metadata flags).
    """
    if len(data) < 3:
        raise ProtocolError(f"2F needs timeout and option, got {len(data)} bytes")
    if data[2] == ReadingCommand.STOP:
        if len(data) != 3:
            raise ProtocolError(f"stop reading carries 3 bytes, got {len(data)}")
        return StopReading()
    if data[2] != ReadingCommand.START:
        raise ProtocolError(f"unsupported 2F option {data[2]:02X}")
    head, read = data[:9], data[9:]
    if len(head) < 9 or head[3] != Opcode.READ_TAG_ID_MULTIPLE or head[8] != head[3]:
        raise ProtocolError("start reading must wrap one 22 read command")
    if head[6] != GEN2_PROTOCOL:
        raise ProtocolError(f"unsupported tag protocol {head[6]:02X}")
    if head[7] != len(read) or len(read) < 7:
        raise ProtocolError(f"22 sub-command length {head[7]} disagrees with {len(read)} bytes")
    option = read[0]
    search = int.from_bytes(read[1:3], "big")
    on_time_ms = int.from_bytes(read[3:5], "big")
    metadata = int.from_bytes(read[5:7], "big")
    if not option & _OPTION_METADATA or not search & SearchFlag.TAG_STREAMING:
        raise ProtocolError("continuous reading needs metadata and tag streaming")
    if metadata & ~_KNOWN_METADATA:
        raise ProtocolError(f"unknown metadata flags in {metadata:04X}")
    embedded = None
    if search & SearchFlag.EMBEDDED_COMMAND:
        embedded = _decode_embedded_read(read[7:])
    elif len(read) != 7:
        raise ProtocolError("bytes after the metadata flags without an embedded command")
    return ReadingPlan(metadata=metadata, on_time_ms=on_time_ms, embedded_read=embedded)


def _encode_embedded_read(read: EmbeddedRead) -> bytes:
    _require_byte("bank", read.bank)
    if not 0 <= read.word_address <= 0xFFFFFFFF:
        raise ValueError(f"word address must fit in 4 bytes, got {read.word_address}")
    if not 1 <= read.word_count <= 0xFF:
        raise ValueError(f"word count must be 1-255, got {read.word_count}")
    return (
        bytes((_EMBEDDED_COUNT, _EMBEDDED_READ_LEN, Opcode.READ_TAG_DATA))
        + bytes(2)  # the read's own timeout: 0, as the Mercury API sends it
        + bytes((0, read.bank))  # option 0, bank
        + read.word_address.to_bytes(4, "big")
        + bytes((read.word_count,))
    )


def _decode_embedded_read(data: bytes) -> EmbeddedRead:
    if (
        len(data) != 2 + 1 + _EMBEDDED_READ_LEN
        or data[0] != _EMBEDDED_COUNT
        or data[1] != _EMBEDDED_READ_LEN
        or data[2] != Opcode.READ_TAG_DATA
    ):
        raise ProtocolError("the embedded command must be one read tag data (28)")
    if not data[11]:
        raise ProtocolError("an embedded read of zero words")
    return EmbeddedRead(
        bank=data[6], word_address=int.from_bytes(data[7:11], "big"), word_count=data[11]
    )


def encode_tag_record(record: TagRecord) -> bytes:
    """One streamed tag record (opcode 22, status 0000) carrying exactly ``record``."""
    _require_byte("option", record.option)
    if not record.option & _OPTION_METADATA:
        raise ValueError(f"a streamed record's option has the metadata bit, got {record.option}")
    _require_word("search flags", record.search_flags)
    _require_word("pc", record.pc)
    if gen2.epc_length(record.pc) != len(record.epc):
        raise ValueError(
            f"PC {record.pc:04X} announces {gen2.epc_length(record.pc)} EPC bytes,"
            f" got {len(record.epc)}"
        )
    _require_xpc(record.pc, record.xpc)
    if record.rssi_dbm is not None and not -128 <= record.rssi_dbm <= 127:
        raise ValueError(f"RSSI must be -128..127 dBm, got {record.rssi_dbm}")
    metadata = record.metadata
    fields = bytearray()
    for flag, value in (
        (MetadataFlag.READ_COUNT, record.read_count),
        (MetadataFlag.RSSI, None if record.rssi_dbm is None else record.rssi_dbm & 0xFF),
        (MetadataFlag.ANTENNA, record.antenna),
        (MetadataFlag.FREQUENCY, record.frequency_khz),
        (MetadataFlag.TIMESTAMP, record.timestamp_ms),
        (MetadataFlag.PHASE, record.phase),
        (MetadataFlag.PROTOCOL, record.protocol),
    ):
        if value is not None:
            fields += _field_bytes(flag, value)
    if record.data is not None:
        fields += (len(record.data) * 8).to_bytes(2, "big") + record.data
    if record.gpio is not None:
        fields += _field_bytes(MetadataFlag.GPIO, record.gpio)
    tag = record.pc.to_bytes(2, "big") + record.xpc + record.epc
    tag += gen2.crc16(tag).to_bytes(2, "big")
    payload = (
        bytes((record.option,))
        + record.search_flags.to_bytes(2, "big")
        + metadata.to_bytes(2, "big")
        + bytes((_ONE_STREAMED_TAG,))
        + fields
        + (len(tag) * 8).to_bytes(2, "big")
        + tag
    )
    return encode_response(Opcode.READ_TAG_ID_MULTIPLE, StatusWord.OK, payload)


def encode_keepalive() -> bytes:
    """The "no tags found" status of a search cycle: ``FF 00 22 04 00 84 E0`` (§2)."""
    return encode_response(Opcode.READ_TAG_ID_MULTIPLE, StatusWord.NO_TAGS_FOUND)


def encode_start_ack() -> bytes:
    """The start of continuous reading acknowledged: ``FF 04 2F 00 00 01 22 00 00 6D C3``."""
    data = bytes((ReadingCommand.START, Opcode.READ_TAG_ID_MULTIPLE))
    return encode_response(
        Opcode.MULTI_PROTOCOL_TAG_OP, data=data + _OUTER_SEARCH_FLAGS.to_bytes(2, "big")
    )


def encode_stop_ack() -> bytes:
    """Continuous reading stopped: ``FF 01 2F 00 00 02 30 E6`` (§2)."""
    return encode_response(Opcode.MULTI_PROTOCOL_TAG_OP, data=bytes((ReadingCommand.STOP,)))


def _field_bytes(flag: MetadataFlag, value: int) -> bytes:
    size = _FIELD_BYTES[flag]
    if not 0 <= value < 1 << (8 * size):
        raise ValueError(f"{flag.name} must fit in {size} byte(s), got {value}")
    return value.to_bytes(size, "big")


def _require_xpc(pc: int, xpc: bytes) -> None:
    if not pc & gen2.PC_XI:
        expected = 0
    elif len(xpc) >= 2 and xpc[0] & _XPC_XEB_BIT:
        expected = 4
    else:
        expected = 2
    if len(xpc) != expected:
        raise ValueError(f"PC {pc:04X} and XPC {xpc.hex()} announce {expected} XPC bytes")


def _require_opcode(opcode: int) -> None:
    # Only frames with a known opcode survive the receiver's header vetting.
    if opcode not in _OPCODES:
        raise ValueError(f"not a Mercury opcode: {opcode:#04x}")


def _require_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{name} must be 0-255, got {value}")


def _require_word(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} must be 0-65535, got {value}")
