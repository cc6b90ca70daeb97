"""The gate I/O simulator answers PROTOCOLS.md §4's frames byte-exactly, on a pty, over TCP and
as a CLI; its beams can be set and its coils observed."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest

from edgegate.devices.link import open_link
from simulators.gateio import GateIoSimulator
from tests.devices.support import Background, wait_until

T = TypeVar("T")

# Verbatim from PROTOCOLS.md §4 (unit 1).
READ_8_INPUTS = bytes.fromhex("01 02 00 00 00 08 79 CC")
COIL_0_ON = bytes.fromhex("01 05 00 00 FF 00 8C 3A")
COIL_0_OFF = bytes.fromhex("01 05 00 00 00 00 CD CA")


def crc16_modbus(data: bytes) -> bytes:
    """CRC-16/MODBUS as PROTOCOLS.md §4 states it (init FFFF, poly A001 reflected), low first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def inputs_reply(bits: int) -> bytes:
    """The FC 02 reply carrying one byte of input bits (bit 0 = input 0)."""
    body = bytes((0x01, 0x02, 0x01, bits))
    return body + crc16_modbus(body)


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    background = Background()
    yield background
    await background.stop()


@pytest.fixture
async def module() -> AsyncIterator[GateIoSimulator]:
    async with GateIoSimulator() as simulator:
        yield simulator


async def bounded(awaitable: Awaitable[T], timeout_s: float = 5.0) -> T:
    async with asyncio.timeout(timeout_s):
        return await awaitable


async def ask(url: str, request: bytes, reply_size: int, *, bytewise: bool = False) -> bytes:
    reader, writer = await open_link(url, 9600)
    try:
        for chunk in [request[i : i + 1] for i in range(len(request))] if bytewise else [request]:
            writer.write(chunk)
            await writer.drain()
        return await bounded(reader.readexactly(reply_size))
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
async def test_the_documented_input_poll_is_answered_with_the_beam_bits(
    background: Background, module: GateIoSimulator, bytewise: bool
) -> None:
    pty = module.open_pty()
    background.start(pty.run())
    await module.set_beam("A", True)
    await module.set_beam("loop", True)

    reply = await ask(pty.url, READ_8_INPUTS, 6, bytewise=bytewise)

    assert reply == inputs_reply(0b101)  # inputs 0 (A) and 2 (loop)
    assert module.received == READ_8_INPUTS


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
async def test_the_documented_coil_writes_are_echoed_and_switch_the_barrier(
    background: Background, module: GateIoSimulator, bytewise: bool
) -> None:
    endpoint = await module.open_tcp()
    background.start(endpoint.run())

    assert await ask(endpoint.url, COIL_0_ON, 8, bytewise=bytewise) == COIL_0_ON
    assert module.coils() == {"barrier": True, "green": False, "red": False, "buzzer": False}
    assert await ask(endpoint.url, COIL_0_OFF, 8, bytewise=bytewise) == COIL_0_OFF
    assert module.coils()["barrier"] is False
    assert module.coil_writes == 2


async def test_a_corrupted_reply_fails_its_crc(
    background: Background, module: GateIoSimulator
) -> None:
    pty = module.open_pty()
    background.start(pty.run())
    module.corrupt_next_reply()

    reply = await ask(pty.url, READ_8_INPUTS, 6)

    assert reply[:4] == inputs_reply(0)[:4]
    assert crc16_modbus(reply[:-2]) != reply[-2:]


async def test_coils_keep_their_state_while_the_cable_is_unplugged(
    background: Background, module: GateIoSimulator
) -> None:
    pty = module.open_pty()
    cable = background.start(pty.run())
    assert await ask(pty.url, COIL_0_ON, 8) == COIL_0_ON

    cable.cancel()
    await wait_until(cable.done)
    second = module.open_pty()
    background.start(second.run())

    assert module.coils()["barrier"] is True
    assert await ask(second.url, READ_8_INPUTS, 6) == inputs_reply(0)


async def test_until_coils_wakes_on_the_write_that_makes_it_true(
    background: Background, module: GateIoSimulator
) -> None:
    endpoint = await module.open_tcp()
    background.start(endpoint.run())
    waiting = background.start(module.until_coils(barrier=True))
    await ask(endpoint.url, COIL_0_OFF, 8)
    assert not waiting.done()

    await ask(endpoint.url, COIL_0_ON, 8)

    await bounded(waiting)


async def test_unknown_names_are_refused(module: GateIoSimulator) -> None:
    with pytest.raises(ValueError, match="no input named 'C'"):
        await module.set_beam("C", True)
    with pytest.raises(ValueError, match="no coil named amber"):
        await module.until_coils(amber=True)


async def test_cli_serves_a_module_takes_beam_commands_and_reports_coils() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from simulators.cli import main; sys.exit(main())",
        "gate-io",
        "--pty",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin
    assert process.stdout
    assert process.stderr
    try:
        url = (await bounded(process.stdout.readline())).decode().strip()
        process.stdin.write(b"beam B on\n")
        await process.stdin.drain()
        # The command lands asynchronously: poll until the beam shows.
        async with asyncio.timeout(5):
            while await ask(url, READ_8_INPUTS, 6) != inputs_reply(0b10):
                pass
        assert await ask(url, COIL_0_ON, 8) == COIL_0_ON
        line = await bounded(process.stderr.readline())
        asked_at = time.monotonic()
        states, _, at = line.decode().strip().rpartition(" at_mono_s=")
        assert states == "edgegate-sim: coils barrier=on green=off red=off buzzer=off"
        assert asked_at - 5 < float(at) <= asked_at  # the module's instant, this clock

        process.send_signal(signal.SIGINT)
        assert await bounded(process.wait()) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
