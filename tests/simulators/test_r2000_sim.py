"""The R2000 simulator answers byte-exactly per PROTOCOLS.md §1, on a pty, over TCP and as a CLI."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Coroutine
from typing import Any

import pytest

from edgegate.devices.link import open_link
from edgegate.wire.r2000 import (
    AntennaFault,
    Cmd,
    FastSwitchEnd,
    R2000Host,
    Request,
    RoundEnd,
    Status,
    TagRead,
    encode_error,
    encode_frame,
)
from simulators.r2000 import R2000Simulator

# PROTOCOLS.md §1: EPC 3074257BF7194E4000001A85, frequency index 7, antenna 0, RSSI -54.
GOLDEN_TAG = bytes.fromhex("A0 13 01 89 1C 30 00 30 74 25 7B F7 19 4E 40 00 00 1A 85 4B AB")
GOLDEN_EPC = "3074257BF7194E4000001A85"
OTHER_EPC = "E20000000000000000001234"
INVENTORY = R2000Host(0x01).inventory(repeat=0xFF)


def inventory(data: bytes = b"\xff", address: int = 0x01) -> Request:
    return Request(address, Cmd.REAL_TIME_INVENTORY, data)


def decode(frames: list[bytes]) -> list[object]:
    host = R2000Host()
    return [event for frame in frames for event in host.receive_data(frame)]


@pytest.fixture
def simulator() -> R2000Simulator:
    simulator = R2000Simulator(round_delay_s=0)
    simulator.add_tag(GOLDEN_EPC, antenna_port=1, rssi_dbm=-54)
    return simulator


async def bounded(awaitable: Awaitable[bytes], timeout_s: float = 5.0) -> bytes:
    async with asyncio.timeout(timeout_s):
        return await awaitable


# ---------------------------------------------------------------------- behaviour


def test_known_tag_is_answered_with_the_golden_frame_then_one_round_end(
    simulator: R2000Simulator,
) -> None:
    frames = simulator.answer(inventory())

    assert frames[0] == GOLDEN_TAG
    assert decode(frames[1:]) == [RoundEnd(0x01, Cmd.REAL_TIME_INVENTORY, 0, 0, 1)]


def test_empty_field_is_answered_with_only_a_round_end() -> None:
    frames = R2000Simulator().answer(inventory())

    assert decode(frames) == [RoundEnd(0x01, Cmd.REAL_TIME_INVENTORY, 0, 0, 0)]


async def test_a_hung_reader_ignores_requests_until_it_recovers(
    simulator: R2000Simulator,
) -> None:
    requests: asyncio.Queue[bytes] = asyncio.Queue()
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    simulator.hang()
    for data in (INVENTORY, b""):
        requests.put_nowait(data)
    async with asyncio.timeout(5):
        await simulator.converse(requests.get, send)
    assert (sent, simulator.frames_sent) == ([], 0)

    simulator.recover()
    for data in (INVENTORY, b""):
        requests.put_nowait(data)
    async with asyncio.timeout(5):
        await simulator.converse(requests.get, send)
    assert sent[0] == GOLDEN_TAG
    assert simulator.frames_sent == len(sent) == 2


async def test_a_reply_can_go_out_as_one_write() -> None:
    simulator = R2000Simulator(round_delay_s=0, reply_as_one_write=True)
    simulator.add_tag(GOLDEN_EPC, antenna_port=1, rssi_dbm=-54)
    requests: asyncio.Queue[bytes] = asyncio.Queue()
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    for data in (INVENTORY, b""):
        requests.put_nowait(data)
    async with asyncio.timeout(5):
        await simulator.converse(requests.get, send)

    assert len(sent) == 1
    assert sent[0].startswith(GOLDEN_TAG)
    assert decode([sent[0][len(GOLDEN_TAG) :]]) == [
        RoundEnd(0x01, Cmd.REAL_TIME_INVENTORY, 0, 0, 1)
    ]
    assert simulator.frames_sent == 2


def test_round_end_reports_reads_per_second_over_the_round_delay() -> None:
    simulator = R2000Simulator(round_delay_s=0.02)
    simulator.add_tag(GOLDEN_EPC)

    (_, end) = decode(simulator.answer(inventory()))

    assert end == RoundEnd(0x01, Cmd.REAL_TIME_INVENTORY, 0, read_rate=50, total_reads=1)


def test_round_reads_only_the_tags_in_front_of_the_work_antenna(
    simulator: R2000Simulator,
) -> None:
    simulator.add_tag(OTHER_EPC, antenna_port=2, rssi_dbm=-70)

    set_antenna = simulator.answer(Request(0x01, Cmd.SET_WORK_ANTENNA, b"\x01"))
    events = decode(simulator.answer(inventory()))

    assert set_antenna == [encode_frame(0x01, Cmd.SET_WORK_ANTENNA, bytes((Status.SUCCESS,)))]
    assert [(e.epc_hex, e.antenna, e.rssi_dbm) for e in events if isinstance(e, TagRead)] == [
        (OTHER_EPC, 1, -70)
    ]
    assert events[-1] == RoundEnd(0x01, Cmd.REAL_TIME_INVENTORY, 1, 0, 1)


def test_session_inventory_is_answered_with_frames_carrying_its_command(
    simulator: R2000Simulator,
) -> None:
    events = decode(simulator.answer(Request(0xFF, Cmd.SESSION_INVENTORY, b"\x01\x00\x01")))

    assert [type(e) for e in events] == [TagRead, RoundEnd]
    assert all(getattr(e, "cmd", None) == Cmd.SESSION_INVENTORY for e in events)


def test_antenna_beyond_the_reader_ports_is_answered_antenna_missing() -> None:
    simulator = R2000Simulator(antenna_ports=2)

    frames = simulator.answer(Request(0x01, Cmd.SET_WORK_ANTENNA, b"\x02"))

    assert frames == [encode_error(0x01, Cmd.SET_WORK_ANTENNA, Status.ANTENNA_MISSING)]
    assert simulator.work_antenna == 0


def test_work_antenna_and_firmware_version_can_be_read_back(simulator: R2000Simulator) -> None:
    simulator.answer(Request(0x01, Cmd.SET_WORK_ANTENNA, b"\x03"))

    assert simulator.answer(Request(0x01, Cmd.GET_WORK_ANTENNA, b"")) == [
        encode_frame(0x01, Cmd.GET_WORK_ANTENNA, b"\x03")
    ]
    assert simulator.answer(Request(0x01, Cmd.GET_FIRMWARE_VERSION, b"")) == [
        encode_frame(0x01, Cmd.GET_FIRMWARE_VERSION, b"\x01\x08")
    ]


def test_rf_power_is_set_and_read_back() -> None:
    simulator = R2000Simulator()

    assert simulator.answer(Request(0x01, Cmd.SET_RF_POWER, b"\x14")) == [
        encode_frame(0x01, Cmd.SET_RF_POWER, bytes((Status.SUCCESS,)))
    ]
    assert simulator.answer(Request(0x01, Cmd.GET_RF_POWER, b"")) == [
        encode_frame(0x01, Cmd.GET_RF_POWER, b"\x14")
    ]
    assert simulator.rf_power_dbm == 20


@pytest.mark.parametrize("data", [b"", b"\x22", b"\x14\x14"], ids=["empty", "34-dbm", "two"])
def test_rf_power_that_cannot_be_set_is_answered_invalid_parameter(data: bytes) -> None:
    simulator = R2000Simulator()

    assert simulator.answer(Request(0x01, Cmd.SET_RF_POWER, data)) == [
        encode_error(0x01, Cmd.SET_RF_POWER, Status.INVALID_PARAMETER)
    ]
    assert simulator.rf_power_dbm == 30


def fast_switch(*slots: tuple[int, int], interval_ms: int = 0, repeat: int = 1) -> Request:
    frame = R2000Host().fast_switch_inventory(list(slots), interval_ms, repeat)
    return Request(0xFF, Cmd.FAST_SWITCH_INVENTORY, frame[4:-1])  # Data: after Cmd, before Check


def test_fast_switch_round_visits_each_slot_stay_times_then_closes_once(
    simulator: R2000Simulator,
) -> None:
    simulator.add_tag(OTHER_EPC, antenna_port=3, rssi_dbm=-70)

    events = decode(simulator.answer(fast_switch((0, 2), (2, 1), repeat=2)))

    reads = [(e.epc_hex, e.antenna) for e in events if isinstance(e, TagRead)]
    assert reads == [(GOLDEN_EPC, 0), (GOLDEN_EPC, 0), (OTHER_EPC, 2)] * 2
    assert all(getattr(e, "cmd", None) == Cmd.FAST_SWITCH_INVENTORY for e in events)
    assert events[-1] == FastSwitchEnd(0x01, Cmd.FAST_SWITCH_INVENTORY, 6, duration_ms=0)
    assert simulator.rounds == 1


def test_fast_switch_reports_a_faulty_or_missing_antenna_and_goes_on(
    simulator: R2000Simulator,
) -> None:
    small = R2000Simulator(antenna_ports=2, round_delay_s=0)
    small.add_tag(GOLDEN_EPC, antenna_port=1)
    small.set_antenna_fault(2)

    events = decode(small.answer(fast_switch((1, 1), (0, 1), (3, 1))))

    assert events[0] == AntennaFault(0x01, Cmd.FAST_SWITCH_INVENTORY, 1, Status.ANTENNA_MISSING)
    assert isinstance(events[1], TagRead)
    assert events[2] == AntennaFault(0x01, Cmd.FAST_SWITCH_INVENTORY, 3, Status.ANTENNA_MISSING)
    assert events[3] == FastSwitchEnd(0x01, Cmd.FAST_SWITCH_INVENTORY, 1, duration_ms=0)


@pytest.mark.parametrize(
    "data", [bytes(9), bytes((4, 1, 5, 1, 0xFF, 1, 9, 1, 0, 1))], ids=["short", "all-disabled"]
)
def test_fast_switch_without_a_usable_slot_is_answered_invalid_parameter(data: bytes) -> None:
    assert R2000Simulator().answer(Request(0x01, Cmd.FAST_SWITCH_INVENTORY, data)) == [
        encode_error(0x01, Cmd.FAST_SWITCH_INVENTORY, Status.INVALID_PARAMETER)
    ]


def test_a_faulty_port_accepts_74_and_fails_its_rounds_with_antenna_missing(
    simulator: R2000Simulator,
) -> None:
    simulator.set_antenna_fault(1)

    assert simulator.answer(Request(0x01, Cmd.SET_WORK_ANTENNA, b"\x00")) == [
        encode_frame(0x01, Cmd.SET_WORK_ANTENNA, bytes((Status.SUCCESS,)))
    ]
    assert simulator.answer(inventory()) == [
        encode_error(0x01, Cmd.REAL_TIME_INVENTORY, Status.ANTENNA_MISSING)
    ]
    simulator.set_antenna_fault(1, faulty=False)
    assert simulator.answer(inventory())[0] == GOLDEN_TAG
    assert simulator.faulty_ports == frozenset()


def test_ports_five_to_eight_set_rssi_bit_7() -> None:
    simulator = R2000Simulator(antenna_ports=8)
    simulator.add_tag(GOLDEN_EPC, antenna_port=6, rssi_dbm=-54)
    simulator.answer(Request(0x01, Cmd.SET_WORK_ANTENNA, b"\x05"))

    frames = simulator.answer(inventory())

    assert frames[0][-2] & 0x80  # RSSI byte, just before Check (§1)
    (tag, _) = decode(frames)
    assert isinstance(tag, TagRead)
    assert (tag.antenna, tag.rssi_dbm) == (5, -54)


@pytest.mark.parametrize(
    "request_",
    [
        Request(0x01, Cmd.RESET, b""),
        Request(0x01, Cmd.GET_INVENTORY_BUFFER, b""),
    ],
)
def test_unsupported_commands_are_answered_fail(request_: Request) -> None:
    assert R2000Simulator().answer(request_) == [encode_error(0x01, request_.cmd, Status.FAIL)]


def test_inventory_with_the_wrong_data_length_is_answered_invalid_parameter() -> None:
    assert R2000Simulator().answer(inventory(b"")) == [
        encode_error(0x01, Cmd.REAL_TIME_INVENTORY, Status.INVALID_PARAMETER)
    ]


def test_request_for_another_address_gets_no_answer(simulator: R2000Simulator) -> None:
    assert simulator.answer(inventory(address=0x02)) == []
    assert simulator.frames_sent == 0


def test_counters_count_frames_tags_and_rounds(simulator: R2000Simulator) -> None:
    simulator.add_tag(OTHER_EPC, antenna_port=1)

    simulator.answer(inventory())
    simulator.answer(inventory())

    assert (simulator.frames_sent, simulator.tags_sent, simulator.rounds) == (6, 4, 2)


def test_tags_can_be_placed_on_several_ports_removed_and_cleared(
    simulator: R2000Simulator,
) -> None:
    simulator.add_tag(GOLDEN_EPC, antenna_port=2)
    simulator.add_tag(OTHER_EPC, antenna_port=3)
    assert [(t.epc_hex, t.antenna_port) for t in simulator.tags] == [
        (GOLDEN_EPC, 1),
        (GOLDEN_EPC, 2),
        (OTHER_EPC, 3),
    ]

    simulator.remove_tag(GOLDEN_EPC.lower())
    assert [t.epc_hex for t in simulator.tags] == [OTHER_EPC]

    simulator.clear()
    assert simulator.tags == ()


@pytest.mark.parametrize(
    ("epc", "port", "rssi", "complaint"),
    [
        ("30XX", 1, -55, "hex"),
        ("307425", 1, -55, "whole words"),
        (GOLDEN_EPC, 5, -55, "antenna port"),
        (GOLDEN_EPC, 1, 0, "RSSI"),
    ],
)
def test_tags_that_cannot_exist_are_refused(epc: str, port: int, rssi: int, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        R2000Simulator().add_tag(epc, port, rssi)


# ---------------------------------------------------------------------- transports


class Background:
    """Coroutines running for one test: cancelled, awaited and checked for crashes at its end."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._tasks.append(task)
        return task

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for outcome in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                raise outcome


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    background = Background()
    yield background
    await background.stop()


async def test_pty_endpoint_answers_the_golden_bytes_through_pyserial(
    simulator: R2000Simulator, background: Background
) -> None:
    endpoint = simulator.open_pty()
    background.start(endpoint.run())
    reader, writer = await open_link(endpoint.path, 115200)
    try:
        writer.write(INVENTORY)
        assert await bounded(reader.readexactly(len(GOLDEN_TAG))) == GOLDEN_TAG
    finally:
        writer.close()
        await writer.wait_closed()


async def test_pty_endpoint_survives_the_host_closing_and_reopening_the_port(
    simulator: R2000Simulator, background: Background
) -> None:
    endpoint = simulator.open_pty()
    background.start(endpoint.run())
    for _ in range(2):
        reader, writer = await open_link(endpoint.path, 115200)
        try:
            writer.write(INVENTORY)
            assert await bounded(reader.readexactly(len(GOLDEN_TAG))) == GOLDEN_TAG
            await bounded(reader.readexactly(12))  # the round end
        finally:
            writer.close()
            await writer.wait_closed()


async def test_tcp_endpoint_answers_the_golden_bytes_on_a_picked_port(
    simulator: R2000Simulator, background: Background
) -> None:
    endpoint = await simulator.open_tcp("127.0.0.1", 0)
    background.start(endpoint.run())
    assert endpoint.port > 0
    assert endpoint.url == f"socket://127.0.0.1:{endpoint.port}"

    reader, writer = await open_link(endpoint.url, 115200)
    try:
        writer.write(INVENTORY)
        assert await bounded(reader.readexactly(len(GOLDEN_TAG))) == GOLDEN_TAG
    finally:
        writer.close()
        await writer.wait_closed()


async def test_closing_the_tcp_endpoint_disconnects_its_hosts(
    simulator: R2000Simulator, background: Background
) -> None:
    endpoint = await simulator.open_tcp("127.0.0.1", 0)
    serving = background.start(endpoint.run())
    reader, writer = await open_link(endpoint.url, 115200)
    try:
        serving.cancel()

        assert await bounded(reader.read()) == b""
    finally:
        writer.close()


# ---------------------------------------------------------------------------- CLI


async def test_cli_prints_the_pty_path_takes_commands_and_exits_0_on_sigint() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from simulators.cli import main; sys.exit(main())",
        "r2000",
        "--pty",
        "--round-delay",
        "0",
        "--tag",
        f"{GOLDEN_EPC}:1:-54",
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
        try:
            writer.write(INVENTORY)
            assert await bounded(reader.readexactly(len(GOLDEN_TAG))) == GOLDEN_TAG
            await bounded(reader.readexactly(12))

            process.stdin.write(f"remove {GOLDEN_EPC}\nadd {OTHER_EPC} 1 -70\n".encode())
            await process.stdin.drain()
            # The commands land asynchronously: poll rounds until the field has changed.
            async with asyncio.timeout(5):
                while True:
                    writer.write(INVENTORY)
                    reply = await reader.readexactly(len(GOLDEN_TAG))
                    await reader.readexactly(12)
                    if reply != GOLDEN_TAG:
                        break
            (tag,) = R2000Host().receive_data(reply)
            assert isinstance(tag, TagRead)
            assert (tag.epc_hex, tag.rssi_dbm) == (OTHER_EPC, -70)
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


async def test_cli_prints_a_socket_url_for_tcp_and_exits_0_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from simulators.cli import main; sys.exit(main())",
        "r2000",
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
