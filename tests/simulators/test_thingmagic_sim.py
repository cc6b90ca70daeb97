"""The ThingMagic simulator answers byte-exactly per PROTOCOLS.md §2 and the real captures,
streams like a module, and runs on a pty, over TCP and as a CLI."""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest

from edgegate.devices.link import open_link
from edgegate.wire.thingmagic import (
    EmbeddedRead,
    HostEvent,
    MemoryBank,
    MetadataFlag,
    Opcode,
    ReadingPlan,
    Request,
    Response,
    StatusWord,
    TagRecord,
    ThingMagicDevice,
    ThingMagicHost,
    encode_request,
)
from simulators.thingmagic import ThingMagicSimulator
from tests.devices.support import Background, wait_until

CAPTURES = Path(__file__).parents[1] / "wire" / "captures" / "thingmagic"
START = bytes.fromhex("FF 10 2F 00 00 01 22 00 00 05 07 22 10 00 1B 03 E8 01 FF DD 2B")
START_ACK = bytes.fromhex("FF 04 2F 00 00 01 22 00 00 6D C3")
STOP = bytes.fromhex("FF 03 2F 00 00 02 5E 86")
# The first record of tag-596F596F-7-reads.log: read at 923.2 MHz, 46 ms into the cycle.
RECORD_596F = bytes.fromhex(
    "FF2022000010001B01FF0101C1110E16400000002E00000500000F00401000596F596FF3130EB0"
)
KEEPALIVE_EVENT = Response(Opcode.READ_TAG_ID_MULTIPLE, StatusWord.NO_TAGS_FOUND, b"")
STOP_ACK_EVENT = Response(Opcode.MULTI_PROTOCOL_TAG_OP, StatusWord.OK, b"\x02")
EPC = "3074257BF7194E4000001A85"
TID = "E2801160200074CF085B0A9B"
OTHER_EPC = "E20000000000000000001234"
SET_UP_OPCODES = {0x03, 0x06, 0x2A, 0x91, 0x92, 0x93, 0x97, 0x9A, 0x9B}
HOST = ThingMagicHost()


def request(frame: bytes) -> Request:
    (decoded,) = ThingMagicDevice().receive_data(frame)
    return decoded


def captured_exchanges() -> list[tuple[bytes, bytes]]:
    """Every captured set-up request with the reply that followed it."""
    exchanges = []
    for path in sorted(CAPTURES.glob("*.log")):
        lines = [line.split() for line in path.read_text().splitlines()]
        for (_, who, sent), (_, next_who, reply) in itertools.pairwise(lines):
            frame = bytes.fromhex(sent)
            if who == "host" and next_who == "reader" and frame[2] in SET_UP_OPCODES:
                exchanges.append((frame, bytes.fromhex(reply)))
    return exchanges


class Wire:
    """A host's end of an in-memory connection to the simulator."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.host = ThingMagicHost()
        self.events: list[HostEvent] = []

    async def receive(self) -> bytes:
        return await self.inbox.get()

    async def send(self, data: bytes) -> None:
        self.events += self.host.receive_data(data)

    def write(self, frame: bytes) -> None:
        self.inbox.put_nowait(frame)

    def records(self) -> list[TagRecord]:
        return [e for e in self.events if isinstance(e, TagRecord)]

    def responses(self) -> list[Response]:
        return [e for e in self.events if isinstance(e, Response)]


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    background = Background()
    yield background
    await background.stop()


@pytest.fixture
def module() -> ThingMagicSimulator:
    module = ThingMagicSimulator(read_interval_s=0.005)
    module.add_tag(EPC, antenna_port=1, rssi_dbm=-54, tid=TID)
    return module


async def conversing(module: ThingMagicSimulator, background: Background) -> Wire:
    wire = Wire()
    background.start(module.converse(wire.receive, wire.send))
    return wire


async def bounded(awaitable: Awaitable[bytes], timeout_s: float = 5.0) -> bytes:
    async with asyncio.timeout(timeout_s):
        return await awaitable


# ------------------------------------------------------------- answers and records


@pytest.mark.parametrize(
    ("sent", "reply"), captured_exchanges(), ids=lambda frame: frame.hex().upper()
)
def test_captured_set_up_request_gets_the_captured_reply(sent: bytes, reply: bytes) -> None:
    assert ThingMagicSimulator().answer(request(sent)) == reply


def test_known_tag_yields_the_captured_record() -> None:
    module = ThingMagicSimulator()
    module.add_tag("596F596F", antenna_port=1, rssi_dbm=-63)

    assert module.cycle(ReadingPlan(), timestamp_ms=46) == [RECORD_596F]


def test_records_carry_only_the_metadata_the_start_asked_for(module: ThingMagicSimulator) -> None:
    plan = ReadingPlan(metadata=MetadataFlag.RSSI | MetadataFlag.ANTENNA)

    (frame,) = module.cycle(plan, timestamp_ms=0)

    (record,) = HOST.receive_data(frame)
    assert record == TagRecord(
        pc=0x3000, epc=bytes.fromhex(EPC), rssi_dbm=-54, antenna=0x11, search_flags=0x001B
    )


def test_embedded_tid_read_fills_the_data_field_of_tags_that_have_one(
    module: ThingMagicSimulator,
) -> None:
    module.add_tag(OTHER_EPC, antenna_port=1)  # no TID
    module.add_tag("AAAA", antenna_port=1, tid="E280")  # a TID of one word only
    plan = ReadingPlan(embedded_read=EmbeddedRead(MemoryBank.TID, 0, 6))

    records = [r for f in module.cycle(plan, 0) for r in HOST.receive_data(f)]

    assert [(r.epc_hex, r.data) for r in records if isinstance(r, TagRecord)] == [
        (EPC, bytes.fromhex(TID)),
        (OTHER_EPC, b""),
        ("AAAA", b""),
    ]


def test_only_tags_in_front_of_enabled_antennas_are_read(module: ThingMagicSimulator) -> None:
    module.add_tag(OTHER_EPC, antenna_port=2)

    module.answer(request(HOST.set_antennas([2, 3])))
    records = [r for f in module.cycle(ReadingPlan(), 0) for r in HOST.receive_data(f)]

    assert [(r.epc_hex, r.tx_port) for r in records if isinstance(r, TagRecord)] == [(OTHER_EPC, 2)]


@pytest.mark.parametrize(
    ("frame", "status"),
    [
        (HOST.set_antennas([5]), StatusWord.INVALID_ANTENNA_CONFIG),
        (encode_request(Opcode.SET_ANTENNA_PORT, b"\x01\x02"), StatusWord.INVALID_ANTENNA_CONFIG),
        (
            encode_request(Opcode.SET_ANTENNA_PORT, b"\x02\x01\x01\x02"),
            StatusWord.WRONG_NUMBER_OF_DATA,
        ),
        (HOST.set_read_power(3100), StatusWord.POWER_TOO_HIGH),
        (encode_request(Opcode.SET_TAG_PROTOCOL, b"\x00\x03"), StatusWord.INVALID_PROTOCOL),
        (encode_request(Opcode.SET_REGION, b"\x06\x00"), StatusWord.WRONG_NUMBER_OF_DATA),
        (encode_request(Opcode.KILL_TAG, b"\x00"), StatusWord.UNIMPLEMENTED_OPCODE),
    ],
    ids=[
        "antenna-5",
        "bistatic-pair",
        "torn-pair",
        "power-31-dbm",
        "protocol-iso",
        "region-2-bytes",
        "kill",
    ],
)
def test_requests_the_module_cannot_serve_get_its_error_status(frame: bytes, status: int) -> None:
    module = ThingMagicSimulator(antenna_ports=4)

    assert HOST.receive_data(module.answer(request(frame))) == [Response(frame[2], status, b"")]
    assert (module.antennas, module.read_power_cdbm, module.protocol) == ((1,), 2700, None)


def test_set_up_requests_change_the_module_settings() -> None:
    module = ThingMagicSimulator()

    for frame in (
        HOST.set_region(6),
        HOST.set_protocol_gen2(),
        HOST.set_antennas([1, 4]),
        HOST.set_read_power(2500),
        HOST.disable_read_filter(),
    ):
        assert module.answer(request(frame))[3:5] == b"\x00\x00"

    assert (module.region, module.protocol, module.antennas) == (6, 0x05, (1, 4))
    assert (module.read_power_cdbm, module.read_filter) == (2500, False)


def test_tags_can_be_placed_on_several_ports_removed_and_cleared(
    module: ThingMagicSimulator,
) -> None:
    module.add_tag(EPC, antenna_port=2)
    module.add_tag(OTHER_EPC, antenna_port=3)
    assert [(t.epc_hex, t.antenna_port) for t in module.tags] == [
        (EPC, 1),
        (EPC, 2),
        (OTHER_EPC, 3),
    ]

    module.remove_tag(EPC.lower())
    assert [t.epc_hex for t in module.tags] == [OTHER_EPC]

    module.clear()
    assert module.tags == ()


@pytest.mark.parametrize(
    ("epc", "port", "rssi", "tid", "complaint"),
    [
        ("30XX", 1, -55, None, "hex"),
        ("307425", 1, -55, None, "whole words"),
        (EPC, 5, -55, None, "antenna port"),
        (EPC, 1, 3, None, "RSSI"),
        (EPC, 1, -55, "E28011", "whole 16-bit words"),
        (EPC, 1, -55, "", "whole 16-bit words"),
    ],
)
def test_tags_that_cannot_exist_are_refused(
    epc: str, port: int, rssi: int, tid: str | None, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        ThingMagicSimulator().add_tag(epc, port, rssi, tid)


# ---------------------------------------------------------------------- streaming


async def test_start_is_acknowledged_then_records_stream_until_the_stop(
    module: ThingMagicSimulator, background: Background
) -> None:
    wire = await conversing(module, background)

    wire.write(START)
    await wait_until(lambda: len(wire.records()) >= 3)
    wire.write(STOP)
    await wait_until(lambda: STOP_ACK_EVENT in wire.events)
    stopped = len(wire.events)
    wire.write(HOST.version())
    await wait_until(lambda: len(wire.events) > stopped)

    assert wire.events[0] == Response(Opcode.MULTI_PROTOCOL_TAG_OP, 0, b"\x01\x22\x00\x00")
    assert wire.events[stopped - 2 : stopped] == [KEEPALIVE_EVENT, STOP_ACK_EVENT]
    reply = wire.events[stopped]
    assert isinstance(reply, Response)
    assert reply.opcode == Opcode.VERSION  # no record follows the stop ack
    assert module.reading is None
    assert {r.epc_hex for r in wire.records()} == {EPC}


async def test_empty_field_streams_a_keepalive_per_on_time(background: Background) -> None:
    module = ThingMagicSimulator()
    wire = await conversing(module, background)

    wire.write(HOST.start_reading(ReadingPlan(on_time_ms=10)))
    await wait_until(lambda: module.keepalives_sent >= 3)

    assert wire.events[1:4] == [KEEPALIVE_EVENT] * 3


async def test_stop_while_idle_is_acknowledged_alone(background: Background) -> None:
    module = ThingMagicSimulator()
    wire = await conversing(module, background)

    wire.write(STOP)
    await wait_until(lambda: bool(wire.events))

    assert wire.events == [STOP_ACK_EVENT]


async def test_a_new_start_replaces_the_running_one(
    module: ThingMagicSimulator, background: Background
) -> None:
    wire = await conversing(module, background)
    with_tid = ReadingPlan(embedded_read=EmbeddedRead())

    wire.write(START)
    await wait_until(lambda: len(wire.records()) >= 1)
    wire.write(HOST.start_reading(with_tid))
    await wait_until(lambda: any(r.data for r in wire.records()))

    assert module.reading == with_tid
    assert [r.opcode for r in wire.responses()].count(Opcode.MULTI_PROTOCOL_TAG_OP) == 2


async def test_reported_status_is_streamed_once(
    module: ThingMagicSimulator, background: Background
) -> None:
    wire = await conversing(module, background)
    wire.write(START)
    await wait_until(lambda: len(wire.records()) >= 1)

    module.report_status(StatusWord.TEMPERATURE_THROTTLE)
    await wait_until(lambda: not module.pending_statuses)

    statuses = [r.status for r in wire.responses() if r.opcode == Opcode.READ_TAG_ID_MULTIPLE]
    assert statuses == [StatusWord.TEMPERATURE_THROTTLE]


async def test_malformed_reading_command_is_answered_invalid_parameter(
    background: Background,
) -> None:
    wire = await conversing(ThingMagicSimulator(), background)

    wire.write(encode_request(Opcode.MULTI_PROTOCOL_TAG_OP, b"\x00\x00\x07"))
    await wait_until(lambda: bool(wire.events))

    assert wire.events == [
        Response(Opcode.MULTI_PROTOCOL_TAG_OP, StatusWord.INVALID_PARAMETER_VALUE, b"")
    ]


async def test_hung_module_ignores_requests_until_it_recovers(
    module: ThingMagicSimulator, background: Background
) -> None:
    wire = await conversing(module, background)

    module.hang()
    wire.write(HOST.version())
    wire.write(START)
    await wait_until(lambda: wire.inbox.empty())
    module.recover()
    wire.write(HOST.version())
    await wait_until(lambda: bool(wire.events))

    assert [r.opcode for r in wire.responses()] == [Opcode.VERSION]
    assert module.reading is None


# ---------------------------------------------------------------------- transports


async def test_pty_endpoint_streams_the_golden_bytes_through_pyserial(
    module: ThingMagicSimulator, background: Background
) -> None:
    endpoint = module.open_pty()
    background.start(endpoint.run())
    reader, writer = await open_link(endpoint.url, 115200)
    try:
        writer.write(START)
        assert await bounded(reader.readexactly(len(START_ACK))) == START_ACK
        (record,) = HOST.receive_data(await bounded(reader.readexactly(47)))
        assert isinstance(record, TagRecord)
        assert record.epc_hex == EPC
    finally:
        writer.close()
        await writer.wait_closed()


async def test_pty_endpoint_keeps_streaming_while_the_port_is_closed_and_reopened(
    module: ThingMagicSimulator, background: Background
) -> None:
    endpoint = module.open_pty()
    background.start(endpoint.run())
    reader, writer = await open_link(endpoint.url, 115200)
    writer.write(START)
    await bounded(reader.readexactly(len(START_ACK)))
    writer.close()
    await writer.wait_closed()
    sent_when_closed = module.records_sent
    await wait_until(lambda: module.records_sent >= sent_when_closed + 5)  # into the void

    reader, writer = await open_link(endpoint.url, 115200)
    try:
        writer.write(STOP)
        host = ThingMagicHost()
        events: list[HostEvent] = []
        async with asyncio.timeout(5):
            while STOP_ACK_EVENT not in events:
                events += host.receive_data(await reader.read(4096))
    finally:
        writer.close()
        await writer.wait_closed()

    assert module.reading is None


async def test_tcp_endpoint_answers_the_golden_bytes_on_a_picked_port(
    module: ThingMagicSimulator, background: Background
) -> None:
    endpoint = await module.open_tcp("127.0.0.1", 0)
    background.start(endpoint.run())
    assert endpoint.url == f"socket://127.0.0.1:{endpoint.port}"

    reader, writer = await open_link(endpoint.url, 115200)
    try:
        writer.write(START)
        assert await bounded(reader.readexactly(len(START_ACK))) == START_ACK
    finally:
        writer.close()
        await writer.wait_closed()


async def test_host_leaving_a_streaming_tcp_connection_ends_its_stream(
    module: ThingMagicSimulator, background: Background
) -> None:
    endpoint = await module.open_tcp("127.0.0.1", 0)
    background.start(endpoint.run())
    reader, writer = await open_link(endpoint.url, 115200)
    writer.write(START)
    await bounded(reader.readexactly(len(START_ACK) + 47))

    writer.close()
    await writer.wait_closed()
    await wait_until(lambda: module.reading is None)


# ---------------------------------------------------------------------------- CLI


async def test_cli_prints_the_pty_path_takes_commands_and_exits_0_on_sigint() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from simulators.cli import main; sys.exit(main())",
        "thingmagic",
        "--pty",
        "--read-interval",
        "0.005",
        "--tag",
        f"{EPC}:1:-54:{TID}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin
    assert process.stdout
    assert process.stderr
    try:
        path = (await bounded(process.stdout.readline())).decode().strip()
        reader, writer = await open_link(path, 115200)
        host = ThingMagicHost()
        try:
            writer.write(HOST.start_reading(ReadingPlan(embedded_read=EmbeddedRead())))
            first: list[TagRecord] = []
            async with asyncio.timeout(5):
                while not first:
                    first = [
                        e
                        for e in host.receive_data(await reader.read(4096))
                        if isinstance(e, TagRecord)
                    ]
            assert (first[0].epc_hex, first[0].rssi_dbm, first[0].data) == (
                EPC,
                -54,
                bytes.fromhex(TID),
            )

            process.stdin.write(f"remove {EPC}\nadd {OTHER_EPC} 2 -70\n".encode())
            process.stdin.write(b"add E2000000000000000000ABCD 1 -61\n")
            await process.stdin.drain()
            # The commands land asynchronously: read on until the field has changed.
            async with asyncio.timeout(5):
                while True:
                    records = [
                        e
                        for e in host.receive_data(await reader.read(4096))
                        if isinstance(e, TagRecord)
                    ]
                    if records and records[-1].epc_hex != EPC:
                        break
            assert (records[-1].epc_hex, records[-1].rssi_dbm) == (
                "E2000000000000000000ABCD",
                -61,
            )
        finally:
            writer.close()
            await writer.wait_closed()

        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(5):
            assert await process.wait() == 0
        assert await process.stderr.read() == b""
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_cli_refuses_a_bad_tag_with_one_line_and_exit_2() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from simulators.cli import main; sys.exit(main())",
        "thingmagic",
        "--tag",
        "30XX",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(10):
        stdout, stderr = await process.communicate()

    assert process.returncode == 2
    assert stdout == b""
    assert stderr.decode().splitlines() == [
        "edgegate-sim: error: EPC must be hex digits, got '30XX'"
    ]


async def test_cli_prints_a_socket_url_for_tcp_and_exits_0_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from simulators.cli import main; sys.exit(main())",
        "thingmagic",
        "--tcp",
        "127.0.0.1:0",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout
    try:
        url = (await bounded(process.stdout.readline())).decode().strip()
        assert url.startswith("socket://127.0.0.1:")

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
