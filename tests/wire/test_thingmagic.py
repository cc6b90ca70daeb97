"""The ThingMagic codec against PROTOCOLS.md §2 and real captures: golden vectors, every
captured frame, chunking, resync, round trips and no phantom EPCs."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegate.wire import gen2
from edgegate.wire.thingmagic import (
    MAX_FRAME_BYTES,
    EmbeddedRead,
    HostEvent,
    MemoryBank,
    MetadataFlag,
    Opcode,
    ProtocolError,
    ReadingPlan,
    Request,
    Response,
    StatusWord,
    StopReading,
    TagRecord,
    ThingMagicDevice,
    ThingMagicHost,
    crc,
    decode_reading_command,
    decode_version,
    encode_keepalive,
    encode_request,
    encode_response,
    encode_start_ack,
    encode_stop_ack,
    encode_tag_record,
)

CAPTURES = Path(__file__).parent / "captures" / "thingmagic"
# No per-example deadline: the machine is shared, and these properties are about
# behaviour, not speed (bench/codecs.py measures speed).
relaxed = settings(deadline=None)

# Verbatim from PROTOCOLS.md §2.
CRC_VECTORS = ["FF 00 03 1D 0C", "FF 01 61 05 BD B8", "FF 05 22 00 00 13 01 F4 2B 19"]
DISABLE_FILTER = bytes.fromhex("FF 03 9A 01 0C 00 A3 5D")
START = bytes.fromhex("FF 10 2F 00 00 01 22 00 00 05 07 22 10 00 1B 03 E8 01 FF DD 2B")
START_ACK = bytes.fromhex("FF 04 2F 00 00 01 22 00 00 6D C3")
STOP = bytes.fromhex("FF 03 2F 00 00 02 5E 86")
KEEPALIVE = bytes.fromhex("FF 00 22 04 00 84 E0")
STOP_ACK = bytes.fromhex("FF 01 2F 00 00 02 30 E6")
# First record of tag-596F596F-7-reads.log and of tag-1545-4-reads.log.
RECORD_596F = bytes.fromhex(
    "FF2022000010001B01FF0101C1110E16400000002E00000500000F00401000596F596FF3130EB0"
)
RECORD_1545 = bytes.fromhex(
    "FF2822000010001B01FF0101C4110E0A88000001C800000500000F00803000000000000000000000001545E94A281F"
)
EPC_596F = bytes.fromhex("596F596F")
EPC_1545 = bytes.fromhex("000000000000000000001545")

READ_596F = TagRecord(
    pc=0x1000,
    epc=EPC_596F,
    read_count=1,
    rssi_dbm=-63,
    antenna=0x11,
    frequency_khz=923_200,
    timestamp_ms=46,
    phase=0,
    protocol=0x05,
    data=b"",
    gpio=0x0F,
    option=0x10,
    search_flags=0x001B,
)
READ_1545 = TagRecord(
    pc=0x3000,
    epc=EPC_1545,
    read_count=1,
    rssi_dbm=-60,
    antenna=0x11,
    frequency_khz=920_200,
    timestamp_ms=456,
    phase=0,
    protocol=0x05,
    data=b"",
    gpio=0x0F,
    option=0x10,
    search_flags=0x001B,
)
KEEPALIVE_EVENT = Response(Opcode.READ_TAG_ID_MULTIPLE, StatusWord.NO_TAGS_FOUND, b"")
START_ACK_EVENT = Response(Opcode.MULTI_PROTOCOL_TAG_OP, StatusWord.OK, b"\x01\x22\x00\x00")
STOP_ACK_EVENT = Response(Opcode.MULTI_PROTOCOL_TAG_OP, StatusWord.OK, b"\x02")

GOLDEN_REPLIES = [
    pytest.param(RECORD_596F, READ_596F, id="record-32-bit-epc"),
    pytest.param(RECORD_1545, READ_1545, id="record-96-bit-epc"),
    pytest.param(KEEPALIVE, KEEPALIVE_EVENT, id="keep-alive"),
    pytest.param(START_ACK, START_ACK_EVENT, id="start-ack"),
    pytest.param(STOP_ACK, STOP_ACK_EVENT, id="stop-ack"),
]


def captured(name: str, side: str) -> list[bytes]:
    """The frames one side sent in a capture file, in file order."""
    frames = []
    for line in (CAPTURES / name).read_text().splitlines():
        _, who, frame = line.split()
        if who == side:
            frames.append(bytes.fromhex(frame))
    return frames


CAPTURE_FILES = sorted(path.name for path in CAPTURES.glob("*.log"))


def feed(host: ThingMagicHost, chunks: Iterable[bytes]) -> list[HostEvent]:
    return [event for chunk in chunks for event in host.receive_data(chunk)]


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def tag_records(events: Iterable[HostEvent]) -> list[TagRecord]:
    return [event for event in events if isinstance(event, TagRecord)]


def nibble_crc(data: bytes) -> int:
    """§2's CRC exactly as written: nibble by nibble, high nibble first."""
    table = [0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50A5, 0x60C6, 0x70E7]
    table += [0x8108, 0x9129, 0xA14A, 0xB16B, 0xC18C, 0xD1AD, 0xE1CE, 0xF1EF]
    value = 0xFFFF
    for byte in data:
        for nibble in (byte >> 4, byte & 0x0F):
            value = (((value << 4) | nibble) ^ table[value >> 12]) & 0xFFFF
    return value


# --------------------------------------------------------------------- CRC and captures


@pytest.mark.parametrize("vector", CRC_VECTORS)
def test_documented_crc_vectors_hold(vector: str) -> None:
    frame = bytes.fromhex(vector)

    assert crc(frame[1:-2]) == int.from_bytes(frame[-2:], "big")


@relaxed
@given(st.binary(max_size=300))
def test_byte_table_crc_equals_the_documented_nibble_algorithm(data: bytes) -> None:
    assert crc(data) == nibble_crc(data)


@pytest.mark.parametrize("name", CAPTURE_FILES)
def test_every_frame_in_a_capture_passes_its_crc(name: str) -> None:
    frames = captured(name, "host") + captured(name, "reader")

    assert frames
    for frame in frames:
        assert crc(frame[1:-2]) == int.from_bytes(frame[-2:], "big"), frame.hex()


@pytest.mark.parametrize("name", CAPTURE_FILES)
def test_every_reader_frame_of_a_capture_decodes_to_exactly_one_event(name: str) -> None:
    frames = captured(name, "reader")
    host = ThingMagicHost()

    events = feed(host, one_byte_at_a_time(b"".join(frames)))

    assert len(events) == len(frames)
    assert (host.frames, host.crc_errors, host.malformed, host.resyncs) == (len(frames), 0, 0, 0)
    assert (host.tag_crc_errors, host.malformed_records, host.buffered) == (0, 0, 0)
    for frame, event in zip(frames, events, strict=True):
        assert isinstance(event, TagRecord) or event.opcode == frame[2]


@pytest.mark.parametrize("name", CAPTURE_FILES)
def test_every_host_frame_of_a_capture_decodes_as_a_request(name: str) -> None:
    frames = captured(name, "host")
    device = ThingMagicDevice()

    requests = device.receive_data(b"".join(frames))

    assert requests == [Request(f[2], f[3:-2]) for f in frames]
    assert (device.crc_errors, device.malformed, device.resyncs) == (0, 0, 0)


@pytest.mark.parametrize("name", CAPTURE_FILES)
def test_every_captured_tag_record_re_encodes_to_its_exact_bytes(name: str) -> None:
    for frame in captured(name, "reader"):
        for record in tag_records(ThingMagicHost().receive_data(frame)):
            assert encode_tag_record(record) == frame


def test_tag_596f596f_capture_is_seven_reads_of_a_32_bit_epc_near_minus_63_dbm() -> None:
    reads = tag_records(
        ThingMagicHost().receive_data(b"".join(captured("tag-596F596F-7-reads.log", "reader")))
    )

    assert len(reads) == 7
    assert reads[0] == READ_596F
    assert {(r.epc_hex, r.pc, len(r.epc) * 8) for r in reads} == {("596F596F", 0x1000, 32)}
    assert all(-63 <= r.rssi_dbm <= -61 for r in reads if r.rssi_dbm is not None)
    assert round(sum(r.rssi_dbm or 0 for r in reads) / len(reads)) == -62
    assert {(r.tx_port, r.rx_port, r.protocol) for r in reads} == {(1, 1, 0x05)}


def test_tag_1545_capture_is_four_reads_of_a_96_bit_epc_near_minus_59_dbm() -> None:
    reads = tag_records(
        ThingMagicHost().receive_data(b"".join(captured("tag-1545-4-reads.log", "reader")))
    )

    assert len(reads) == 4
    assert reads[0] == READ_1545
    assert {(r.epc_hex, r.pc) for r in reads} == {("000000000000000000001545", 0x3000)}
    assert [r.rssi_dbm for r in reads] == [-60, -61, -59, -59]
    assert [r.frequency_khz for r in reads] == [920_200, 920_200, 919_400, 921_200]


def test_captured_continuous_reading_session_is_acks_keepalives_and_records_in_order() -> None:
    frames = captured("single-tag-read-7.log", "reader")
    start = frames.index(START_ACK)

    events = ThingMagicHost().receive_data(b"".join(frames[start:]))

    kinds = [
        "tag" if isinstance(e, TagRecord) else f"{e.opcode:02X}/{e.status:04X}" for e in events
    ]
    assert kinds[0] == "2F/0000"
    assert kinds.count("tag") == 7
    assert kinds.count("22/0400") == 7  # one per search cycle that found nothing
    assert kinds[-4:] == ["22/0400", "2F/0000", "9A/0000", "9A/0000"]
    assert events[-3] == STOP_ACK_EVENT
    assert {r.epc_hex for r in tag_records(events)} == {"000000000000000000001545"}


def test_captured_tag_buffer_record_carries_a_valid_gen2_crc() -> None:
    # read-single-tag.log ends with a 29 (get tag buffer) reply: not streamed, so it stays
    # a Response, but its tag CRC checks the same CRC-16 independently of the 22 records.
    (reply,) = ThingMagicHost().receive_data(captured("read-single-tag.log", "reader")[-1])

    assert isinstance(reply, Response)
    assert reply.opcode == Opcode.GET_TAG_ID_BUFFER
    pc_epc, tag_crc = reply.data[-16:-2], reply.data[-2:]
    assert pc_epc.hex().upper() == "3000E2004BA5F906C1B0018DCB05"
    assert gen2.crc16(pc_epc) == int.from_bytes(tag_crc, "big")


def test_captured_version_reply_decodes_to_the_m6e_nano_firmware() -> None:
    (reply,) = ThingMagicHost().receive_data(captured("connect.log", "reader")[0])

    assert isinstance(reply, Response)
    info = decode_version(reply.data)
    assert info.firmware_version == "01.03.01.47"
    assert info.firmware_date == bytes.fromhex("20150310")
    assert info.protocols & 1 << 4  # protocol 05, Gen2


# --------------------------------------------------------------------- golden requests


def test_host_builds_the_documented_continuous_reading_requests() -> None:
    host = ThingMagicHost()

    assert host.disable_read_filter() == DISABLE_FILTER
    assert host.start_reading() == START
    assert host.start_reading(ReadingPlan(MetadataFlag.ALL, 1000)) == START
    assert host.stop_reading() == STOP


def test_host_builds_the_captured_set_up_requests() -> None:
    host = ThingMagicHost()
    sent = {f for name in CAPTURE_FILES for f in captured(name, "host")}

    for request in (
        host.version(),
        host.set_baud_rate(115_200),
        host.set_protocol_gen2(),
        host.set_region(0x0D),
        host.set_antennas([1]),
        host.set_read_power(2700),
    ):
        assert request in sent, request.hex()


def test_start_with_an_embedded_tid_read_asks_for_the_tid_bank_in_every_record() -> None:
    request = ThingMagicHost().start_reading(ReadingPlan(embedded_read=EmbeddedRead()))

    # §2's start with search flags 001F (+ embedded command) and, after the metadata flags,
    # one embedded command of 9 bytes: 28 (read tag data), timeout 0, option 0, bank 02
    # (TID), word address 0, 6 words.
    assert request[1:-2] == bytes.fromhex(
        "1C 2F 0000 01 22 0000 05 13 22 10 001F 03E8 01FF 01 09 28 0000 00 02 00000000 06"
    )
    (decoded,) = ThingMagicDevice().receive_data(request)
    assert decode_reading_command(decoded.data) == ReadingPlan(embedded_read=EmbeddedRead())


def test_device_decodes_the_captured_start_and_stop() -> None:
    start, stop = ThingMagicDevice().receive_data(START + STOP)

    assert decode_reading_command(start.data) == ReadingPlan()
    assert decode_reading_command(stop.data) == StopReading()


def test_device_encoders_reproduce_the_documented_replies() -> None:
    assert encode_keepalive() == KEEPALIVE
    assert encode_start_ack() == START_ACK
    assert encode_stop_ack() == STOP_ACK
    assert encode_tag_record(READ_596F) == RECORD_596F
    assert encode_tag_record(READ_1545) == RECORD_1545


@pytest.mark.parametrize(
    ("encode", "complaint"),
    [
        pytest.param(lambda: encode_request(0x05), "opcode", id="unknown-opcode"),
        pytest.param(lambda: encode_request(0x03, bytes(252)), "too long", id="request-252"),
        pytest.param(lambda: encode_response(0x22, 0, bytes(250)), "too long", id="reply-250"),
        pytest.param(lambda: encode_response(0x22, 0x10000), "status", id="status-17-bit"),
        pytest.param(lambda: ThingMagicHost().set_antennas([]), "ports", id="no-antenna"),
        pytest.param(lambda: ThingMagicHost().set_antennas([16]), "ports", id="antenna-16"),
        pytest.param(lambda: ThingMagicHost().set_region(256), "region", id="region-256"),
        pytest.param(lambda: ThingMagicHost().set_read_power(-1), "power", id="power-neg"),
        pytest.param(lambda: ThingMagicHost().set_baud_rate(0), "baud", id="baud-0"),
        pytest.param(
            lambda: ThingMagicHost().start_reading(ReadingPlan(metadata=0x0200)),
            "metadata",
            id="metadata-0200",
        ),
        pytest.param(
            lambda: ThingMagicHost().start_reading(ReadingPlan(on_time_ms=65_536)),
            "on-time",
            id="on-time-65536",
        ),
        pytest.param(
            lambda: ThingMagicHost().start_reading(
                ReadingPlan(embedded_read=EmbeddedRead(2, 0, 0))
            ),
            "word count",
            id="read-0-words",
        ),
        pytest.param(
            lambda: encode_tag_record(TagRecord(pc=0x3000, epc=EPC_596F)),
            "announces",
            id="pc-disagrees",
        ),
        pytest.param(
            lambda: encode_tag_record(TagRecord(pc=0x1200, epc=EPC_596F)),
            "XPC",
            id="xi-without-xpc",
        ),
        pytest.param(
            lambda: encode_tag_record(TagRecord(pc=0x1000, epc=EPC_596F, rssi_dbm=-129)),
            "RSSI",
            id="rssi-129",
        ),
        pytest.param(
            lambda: encode_tag_record(TagRecord(pc=0x1000, epc=EPC_596F, frequency_khz=1 << 24)),
            "FREQUENCY",
            id="frequency-25-bit",
        ),
        pytest.param(
            lambda: encode_tag_record(TagRecord(pc=0x1000, epc=EPC_596F, option=0)),
            "metadata bit",
            id="option-without-metadata",
        ),
        pytest.param(lambda: gen2.pc_for_epc(bytes(3)), "whole words", id="odd-epc"),
    ],
)
def test_encoders_refuse_values_that_do_not_fit_the_frame(
    encode: Callable[[], object], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        encode()


# ----------------------------------------------------------------- chunk boundaries


@pytest.mark.parametrize(("frame", "event"), GOLDEN_REPLIES)
def test_golden_frame_fed_whole_decodes_once(frame: bytes, event: HostEvent) -> None:
    host = ThingMagicHost()

    assert host.receive_data(frame) == [event]
    assert (host.frames, host.crc_errors, host.resyncs, host.buffered) == (1, 0, 0, 0)


@pytest.mark.parametrize(("frame", "event"), GOLDEN_REPLIES)
def test_golden_frame_fed_one_byte_at_a_time_decodes_once(frame: bytes, event: HostEvent) -> None:
    assert feed(ThingMagicHost(), one_byte_at_a_time(frame)) == [event]


@pytest.mark.parametrize(("frame", "event"), GOLDEN_REPLIES)
def test_frame_split_at_every_byte_boundary_decodes_once(frame: bytes, event: HostEvent) -> None:
    for cut in range(len(frame) + 1):
        assert feed(ThingMagicHost(), [frame[:cut], frame[cut:]]) == [event], f"cut at {cut}"


def test_stream_split_at_every_byte_boundary_decodes_in_order() -> None:
    stream = START_ACK + KEEPALIVE + RECORD_596F + RECORD_1545 + KEEPALIVE + STOP_ACK
    expected = [START_ACK_EVENT, KEEPALIVE_EVENT, READ_596F, READ_1545]
    expected += [KEEPALIVE_EVENT, STOP_ACK_EVENT]

    for cut in range(len(stream) + 1):
        assert feed(ThingMagicHost(), [stream[:cut], stream[cut:]]) == expected, f"cut at {cut}"


@pytest.mark.parametrize(("frame", "event"), GOLDEN_REPLIES)
@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"\x00\x13\x55", b""),
        (b"\xff", b"\xff"),
        (b"\xff\xff\xff", b"\x00\xff"),
        # A torn header waits for as many bytes as its LEN claims (a live module always
        # sends them, a keep-alive per search cycle at least), then fails its CRC.
        (RECORD_596F[:11], RECORD_596F[:20] + bytes(RECORD_596F[1])),
        (b"\xff\x04\x2f\x00\x00", b"\xff\x28\x22"),
        (bytes(range(256)), bytes(range(255, -1, -1))),
    ],
    ids=["plain-junk", "stray-ff", "ff-run", "torn-records", "torn-headers", "all-byte-values"],
)
def test_junk_around_a_frame_is_skipped_and_only_the_frame_decodes(
    frame: bytes, event: HostEvent, before: bytes, after: bytes
) -> None:
    data = before + frame + after
    for chunks in ([data], one_byte_at_a_time(data)):
        host = ThingMagicHost()

        assert feed(host, chunks) == [event]
        assert host.frames == 1
        assert host.buffered < MAX_FRAME_BYTES


def test_real_frame_behind_a_false_header_is_still_found() -> None:
    host = ThingMagicHost()
    # `FF 02 03 00 00` is a well-formed header claiming 9 bytes, which swallow the real FF.
    events = host.receive_data(b"\xff\x02\x03\x00\x00" + KEEPALIVE)

    assert events == [KEEPALIVE_EVENT]
    assert (host.crc_errors, host.resyncs, host.bytes_discarded) == (1, 1, 5)


def test_stray_ff_before_the_last_frame_does_not_hold_it_back() -> None:
    host = ThingMagicHost()
    # The stray FF makes the real FF a LEN of 255: a 262-byte frame no module sends.
    events = host.receive_data(b"\xff" + STOP_ACK)

    assert events == [STOP_ACK_EVENT]
    assert (host.malformed, host.bytes_discarded, host.buffered) == (1, 1, 0)


def test_header_with_an_unknown_opcode_is_malformed() -> None:
    host = ThingMagicHost()

    assert host.receive_data(b"\xff\x00\x05\x00\x00\x00\x00" + KEEPALIVE) == [KEEPALIVE_EVENT]
    assert host.malformed == 1


def test_incomplete_frame_waits_for_the_rest_without_counting_an_error() -> None:
    host = ThingMagicHost()

    assert host.receive_data(RECORD_596F[:-1]) == []
    assert (host.buffered, host.crc_errors, host.resyncs) == (len(RECORD_596F) - 1, 0, 0)
    assert host.receive_data(RECORD_596F[-1:]) == [READ_596F]
    assert host.buffered == 0


def test_bad_message_crc_is_counted_and_never_decoded() -> None:
    host = ThingMagicHost()
    corrupted = RECORD_596F[:-1] + bytes(((RECORD_596F[-1] + 1) & 0xFF,))

    assert host.receive_data(corrupted) == []
    assert host.frames == 0
    assert host.crc_errors >= 1  # the record, and any false header inside it


def test_record_with_a_bad_tag_crc_is_counted_and_dropped() -> None:
    # The EPC is changed and the message CRC recomputed, as a reader would if the air
    # interface garbled the tag's reply: only the tag's own CRC can tell.
    payload = bytearray(RECORD_596F[5:-2])
    payload[-3] ^= 0x01
    host = ThingMagicHost()

    assert host.receive_data(encode_response(0x22, 0, bytes(payload)) + KEEPALIVE) == [
        KEEPALIVE_EVENT
    ]
    assert (host.frames, host.tag_crc_errors, host.malformed_records) == (2, 1, 0)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda p: p[:-1], id="tag-cut-short"),
        pytest.param(lambda p: p + b"\x00\x00", id="trailing-bytes"),
        pytest.param(lambda p: p[:3] + b"\x03\xff" + p[5:], id="unknown-metadata-bit"),
        pytest.param(lambda p: p[:3] + b"\x00\x01" + p[5:], id="fewer-flags-than-fields"),
        pytest.param(lambda p: p[:22] + b"\x00\x30" + p[24:], id="epc-bits-disagree"),
        pytest.param(lambda p: p[:24] + b"\x30\x00" + p[26:], id="pc-announces-96-bits"),
        pytest.param(lambda p: p[:19] + b"\x00\x04" + p[21:], id="data-bits-not-bytes"),
        pytest.param(lambda p: p[:6], id="flags-without-fields"),
    ],
)
def test_record_whose_layout_disagrees_with_its_flags_is_malformed(
    mutate: Callable[[bytes], bytes],
) -> None:
    payload = mutate(RECORD_596F[5:-2])
    host = ThingMagicHost()

    assert host.receive_data(encode_response(0x22, 0, payload)) == []
    assert (host.frames, host.malformed_records, host.tag_crc_errors) == (1, 1, 0)


@pytest.mark.parametrize(
    ("option", "count", "status"),
    [(0x00, 0x01, 0x0000), (0x10, 0x00, 0x0000), (0x10, 0x02, 0x0000), (0x10, 0x01, 0x0400)],
    ids=["no-metadata-option", "end-of-stream", "status-report", "not-ok"],
)
def test_22_frame_that_is_not_one_streamed_tag_stays_a_response(
    option: int, count: int, status: int
) -> None:
    payload = bytes((option,)) + RECORD_596F[6:10] + bytes((count,)) + RECORD_596F[11:-2]

    assert ThingMagicHost().receive_data(encode_response(0x22, status, payload)) == [
        Response(0x22, status, payload)
    ]


def test_sync_read_reply_in_the_capture_is_a_plain_response() -> None:
    frame = bytes.fromhex("FF07220000000013000000018B58")  # read-single-tag.log

    assert ThingMagicHost().receive_data(frame) == [Response(0x22, 0, frame[5:-2])]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00",
        b"\x00\x00\x03",
        b"\x00\x00\x02\x00",
        START[3:-3],
        START[3:-2] + b"\x00",
        START[3:9] + b"\x06" + START[10:-2],
        START[3:11] + b"\x21" + START[12:-2],
        START[3:12] + b"\x00" + START[13:-2],
        START[3:14] + b"\x13" + START[15:-2],
        START[3:17] + b"\x03\xff",
        ThingMagicHost().start_reading(ReadingPlan(embedded_read=EmbeddedRead()))[3:-3],
    ],
    ids=[
        "empty",
        "no-option",
        "option-03",
        "stop-with-extra",
        "start-cut-short",
        "start-with-extra",
        "protocol-06",
        "inner-opcode-21",
        "no-metadata-option",
        "no-streaming-flag",
        "unknown-metadata",
        "embedded-cut-short",
    ],
)
def test_reading_command_the_codec_cannot_serve_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_reading_command(data)


def test_version_reply_of_the_wrong_length_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="20 bytes"):
        decode_version(bytes(19))


# ------------------------------------------------------------------------ properties

epcs = st.integers(min_value=0, max_value=20).flatmap(
    lambda words: st.binary(min_size=2 * words, max_size=2 * words)
)
xpcs = st.one_of(
    st.just(b""),
    st.binary(min_size=2, max_size=2).map(lambda w: bytes((w[0] & 0x7F, w[1]))),
    st.binary(min_size=4, max_size=4).map(lambda w: bytes((w[0] | 0x80,)) + w[1:]),
)


def optional(strategy: st.SearchStrategy[int]) -> st.SearchStrategy[int | None]:
    return st.one_of(st.none(), strategy)


@st.composite
def records(draw: st.DrawFn) -> TagRecord:
    epc = draw(epcs)
    xpc = draw(xpcs)
    # Only the length bits and XI of the PC are derived; UMI and the rest stay arbitrary.
    pc = gen2.pc_for_epc(epc) | draw(st.integers(0, 0x07FF)) & ~gen2.PC_XI
    if xpc:
        pc |= gen2.PC_XI
    return TagRecord(
        pc=pc,
        epc=epc,
        xpc=xpc,
        read_count=draw(optional(st.integers(0, 0xFF))),
        rssi_dbm=draw(optional(st.integers(-128, 127))),
        antenna=draw(optional(st.integers(0, 0xFF))),
        frequency_khz=draw(optional(st.integers(0, 0xFFFFFF))),
        timestamp_ms=draw(optional(st.integers(0, 0xFFFFFFFF))),
        phase=draw(optional(st.integers(0, 0xFFFF))),
        protocol=draw(optional(st.integers(0, 0xFF))),
        data=draw(st.one_of(st.none(), st.binary(max_size=40))),
        gpio=draw(optional(st.integers(0, 0xFF))),
        option=draw(st.integers(0, 0xFF)) | 0x10,
        search_flags=draw(st.integers(0, 0xFFFF)),
    )


@relaxed
@given(records())
def test_device_encoded_record_round_trips_through_the_host(record: TagRecord) -> None:
    assert ThingMagicHost().receive_data(encode_tag_record(record)) == [record]


@relaxed
@given(
    st.sampled_from(list(Opcode)),
    st.integers(0, 0xFFFF),
    st.binary(max_size=249),
)
def test_device_encoded_response_round_trips_through_the_host(
    opcode: Opcode, status: int, data: bytes
) -> None:
    frame = encode_response(opcode, status, data)
    events = ThingMagicHost().receive_data(frame)

    # A well-formed 22 record is the only response that does not come back as itself.
    if not (events and isinstance(events[0], TagRecord)):
        assert events in ([Response(opcode, status, data)], [])


@relaxed
@given(
    st.integers(0, 0x01FF),
    st.integers(0, 0xFFFF),
    st.one_of(
        st.none(),
        st.builds(
            EmbeddedRead,
            st.sampled_from(MemoryBank),
            st.integers(0, 0xFFFFFFFF),
            st.integers(1, 0xFF),
        ),
    ),
)
def test_host_start_round_trips_through_the_device(
    metadata: int, on_time_ms: int, embedded: EmbeddedRead | None
) -> None:
    plan = ReadingPlan(metadata, on_time_ms, embedded)
    (request,) = ThingMagicDevice().receive_data(ThingMagicHost().start_reading(plan))

    assert request.opcode == Opcode.MULTI_PROTOCOL_TAG_OP
    assert decode_reading_command(request.data) == plan


@relaxed
@given(
    st.lists(st.integers(1, 15), min_size=1, max_size=8),
    st.integers(0, 0xFF),
    st.integers(0, 0xFFFF),
    st.integers(1, 0xFFFFFFFF),
)
def test_host_requests_round_trip_through_the_device(
    ports: list[int], region: int, power: int, baud: int
) -> None:
    host = ThingMagicHost()
    stream = (
        host.set_antennas(ports)
        + host.set_region(region)
        + host.set_read_power(power)
        + host.set_baud_rate(baud)
    )

    assert ThingMagicDevice().receive_data(stream) == [
        Request(Opcode.SET_ANTENNA_PORT, b"\x02" + bytes(p for p in ports for _ in (0, 1))),
        Request(Opcode.SET_REGION, bytes((region,))),
        Request(Opcode.SET_READ_TX_POWER, power.to_bytes(2, "big")),
        Request(Opcode.SET_BAUD_RATE, baud.to_bytes(4, "big")),
    ]


@relaxed
@given(st.binary(max_size=300))
def test_any_reading_command_decodes_or_raises_only_a_protocol_error(data: bytes) -> None:
    try:
        command = decode_reading_command(data)
    except ProtocolError:
        return
    assert isinstance(command, ReadingPlan | StopReading)


# Noise that is mostly junk, with stray headers and valid frames mixed in.
noisy_pieces = st.one_of(
    st.binary(max_size=40),
    st.just(b"\xff"),
    st.sampled_from([RECORD_596F, RECORD_1545, KEEPALIVE, START_ACK, STOP_ACK]),
    records().map(encode_tag_record),
)
noisy_streams = st.lists(noisy_pieces, max_size=30).map(b"".join)


def counters(receiver: ThingMagicHost | ThingMagicDevice) -> tuple[int, ...]:
    return (
        receiver.frames,
        receiver.crc_errors,
        receiver.malformed,
        receiver.resyncs,
        receiver.bytes_discarded,
        receiver.buffered,
    )


def chunked(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    pos = 0
    for size in itertools.cycle(sizes):
        if pos >= len(data):
            return
        yield data[pos : pos + size]
        pos += size


@relaxed
@given(noisy_streams, st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_chunking_never_changes_the_events_or_the_counters(data: bytes, sizes: list[int]) -> None:
    whole, pieces = ThingMagicHost(), ThingMagicHost()
    whole_device, pieces_device = ThingMagicDevice(), ThingMagicDevice()

    assert feed(pieces, chunked(data, sizes)) == whole.receive_data(data)
    assert counters(pieces) == counters(whole)
    assert (pieces.tag_crc_errors, pieces.malformed_records) == (
        whole.tag_crc_errors,
        whole.malformed_records,
    )
    assert [r for c in chunked(data, sizes) for r in pieces_device.receive_data(c)] == (
        whole_device.receive_data(data)
    )
    assert counters(pieces_device) == counters(whole_device)


@relaxed
@given(st.binary(max_size=2000), st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_random_bytes_never_raise_never_yield_a_tag_and_keep_the_buffer_bounded(
    data: bytes, sizes: list[int]
) -> None:
    host, device = ThingMagicHost(), ThingMagicDevice()
    for chunk in chunked(data, sizes):
        assert tag_records(host.receive_data(chunk)) == []
        device.receive_data(chunk)
        assert host.buffered < MAX_FRAME_BYTES
        assert device.buffered < MAX_FRAME_BYTES


@relaxed
@given(noisy_streams, st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_every_tag_record_from_noisy_bytes_is_a_valid_frame_present_in_them(
    data: bytes, sizes: list[int]
) -> None:
    for record in tag_records(feed(ThingMagicHost(), chunked(data, sizes))):
        # encode_tag_record gives the one frame that decodes to this record.
        assert encode_tag_record(record) in data


def test_no_single_byte_change_to_a_record_yields_that_record() -> None:
    for position in range(len(RECORD_596F)):
        for value in range(256):
            if value == RECORD_596F[position]:
                continue
            damaged = RECORD_596F[:position] + bytes((value,)) + RECORD_596F[position + 1 :]

            assert READ_596F not in ThingMagicHost().receive_data(damaged + KEEPALIVE)


def corrupt(stream: bytearray, rate: float, rng: random.Random) -> int:
    """Replace each byte by a different value with probability ``rate``; count them."""
    damaged = 0
    position = -1
    log_keep = math.log(1.0 - rate)
    while True:
        # Geometric gaps between damaged bytes: the same as a coin per byte, but fast.
        position += 1 + int(math.log(1.0 - rng.random()) / log_keep)
        if position >= len(stream):
            return damaged
        stream[position] ^= rng.randrange(1, 256)
        damaged += 1


def test_one_percent_corrupted_bytes_over_100000_frames_yield_no_phantom_epc() -> None:
    """Every EPC decoded from a damaged stream is one that was sent, at its sent values.

    Unlike the R2000's 8-bit sum, two CRC-16s guard a ThingMagic read: the message CRC and
    the tag's own. Bytes are damaged independently (i.i.d.), so frames with several damaged
    bytes are common; a phantom would need both CRCs fooled at once.
    """
    rng = random.Random(20261125)
    pool: list[bytes] = []
    sent: set[TagRecord] = set()
    for n in range(400):
        epc = rng.randbytes(rng.choice((4, 8, 12, 12, 12, 16)))
        record = TagRecord(
            pc=gen2.pc_for_epc(epc),
            epc=epc,
            read_count=1,
            rssi_dbm=rng.randrange(-90, -30),
            antenna=rng.choice((0x11, 0x22, 0x33, 0x44)),
            frequency_khz=rng.randrange(902_000, 928_000),
            timestamp_ms=rng.randrange(1000),
            phase=0,
            protocol=5,
            data=rng.randbytes(12) if n % 2 else b"",
            gpio=0x0F,
        )
        sent.add(record)
        pool.append(encode_tag_record(record))
    pool += [KEEPALIVE] * 40
    frames = rng.choices(pool, k=100_000)
    stream = bytearray(b"".join(frames))
    damaged = corrupt(stream, 0.01, rng)
    assert 0.009 < damaged / len(stream) < 0.011

    host = ThingMagicHost()
    events: list[HostEvent] = []
    pos = 0
    while pos < len(stream):
        size = rng.randrange(1, 100)
        events += host.receive_data(bytes(stream[pos : pos + size]))
        pos += size

    reads = tag_records(events)
    assert {read.epc for read in reads} <= {record.epc for record in sent}
    assert set(reads) <= sent  # not only the EPC: every field is as it was sent
    assert len(reads) > 40_000  # damage costs the damaged frames, not the stream
    assert host.crc_errors > 10_000
