"""The gate I/O session against a pymodbus RTU server, through a real pty and over TCP.

The bytes the session puts on the line are checked against PROTOCOLS.md §4's vectors as the
module received them (``GateIoSimulator.received``): pymodbus encodes them, so this is
where a change of its framing would show.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from edgegate.config import GateIoReaderConfig
from edgegate.devices.gateio import GateIoSession
from edgegate.devices.link import Backoff, open_link
from edgegate.gate.model import BeamChanged, GateOutputs, ReaderDown, ReaderUp
from simulators.gateio import GateIoSimulator
from tests.devices.support import Background, CountingBackoff, Observations, wait_until

# Verbatim from PROTOCOLS.md §4 (unit 1).
READ_8_INPUTS = bytes.fromhex("01 02 00 00 00 08 79 CC")
COIL_0_ON = bytes.fromhex("01 05 00 00 FF 00 8C 3A")
COIL_0_OFF = bytes.fromhex("01 05 00 00 00 00 CD CA")
NOW = 1234.5


def crc16_modbus(data: bytes) -> bytes:
    """CRC-16/MODBUS as PROTOCOLS.md §4 states it (init FFFF, poly A001 reflected), low first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


# The request for inputs 0-1 (beam A and B at their default addresses, no loop).
READ_2_INPUTS = bytes.fromhex("01 02 00 00 00 02") + crc16_modbus(
    bytes.fromhex("01 02 00 00 00 02")
)


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    background = Background()
    yield background
    await background.stop()


@pytest.fixture
async def module() -> AsyncIterator[GateIoSimulator]:
    async with GateIoSimulator(inputs={"A": 0, "B": 1, "loop": 7}) as simulator:
        yield simulator


def io_config(url: str, **overrides: Any) -> GateIoReaderConfig:
    options: dict[str, Any] = {"poll_ms": 10, "reply_timeout_s": 0.5} | overrides
    return GateIoReaderConfig(name="io-1", kind="gate-io", url=url, **options)


def session(
    config: GateIoReaderConfig, seen: Observations, backoff: Backoff | None = None
) -> GateIoSession:
    return GateIoSession(config, seen.append, clock=lambda: NOW, backoff=backoff)


async def bounded(awaitable: Awaitable[None], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        await awaitable


def beams(seen: Observations) -> list[tuple[str, bool]]:
    return [(o.beam, o.broken) for o in seen if isinstance(o, BeamChanged)]


def test_the_documented_vectors_carry_crc16_modbus() -> None:
    for frame in (READ_8_INPUTS, COIL_0_ON, COIL_0_OFF):
        assert crc16_modbus(frame[:-2]) == frame[-2:]


async def test_polls_and_coil_writes_on_the_wire_are_the_documented_frames(
    background: Background, module: GateIoSimulator
) -> None:
    pty = module.open_pty()
    background.start(pty.run())
    reader = session(io_config(pty.url, loop=7), Observations())
    background.start(reader.run())
    await wait_until(lambda: module.received.count(READ_8_INPUTS) >= 2)

    await reader.apply(GateOutputs(barrier_open=True))
    await bounded(module.until_coils(barrier=True))
    await reader.apply(GateOutputs())
    await bounded(module.until_coils(barrier=False))

    assert module.received.startswith(READ_8_INPUTS)
    assert module.received.count(COIL_0_ON) == 1
    assert module.received.count(COIL_0_OFF) == 1


async def test_inputs_are_read_in_one_request_spanning_the_configured_addresses(
    background: Background, module: GateIoSimulator
) -> None:
    endpoint = await module.open_tcp()
    background.start(endpoint.run())
    background.start(session(io_config(endpoint.url), Observations()).run())
    await wait_until(lambda: len(module.received) >= 3 * len(READ_2_INPUTS))

    received = module.received  # the last request may still be on its way
    assert received == (READ_2_INPUTS * (len(received) // len(READ_2_INPUTS) + 1))[: len(received)]


async def test_every_input_is_reported_after_connecting_then_only_changes(
    background: Background, module: GateIoSimulator
) -> None:
    await module.set_beam("A", True)
    pty = module.open_pty()
    background.start(pty.run())
    seen = Observations()
    background.start(session(io_config(pty.url, loop=7), seen).run())
    await wait_until(lambda: len(seen) >= 4)
    polls = module.received.count(READ_8_INPUTS)
    await wait_until(lambda: module.received.count(READ_8_INPUTS) >= polls + 3)

    await module.set_beam("B", True)
    await wait_until(lambda: len(beams(seen)) >= 4)
    await module.set_beam("A", False)
    await module.set_beam("loop", True)
    await wait_until(lambda: len(beams(seen)) >= 6)

    assert seen[:4] == [
        ReaderUp(reader="io-1", at_mono_s=NOW),
        BeamChanged(reader="io-1", beam="A", broken=True, at_mono_s=NOW),
        BeamChanged(reader="io-1", beam="B", broken=False, at_mono_s=NOW),
        BeamChanged(reader="io-1", beam="loop", broken=False, at_mono_s=NOW),
    ]
    assert sorted(beams(seen)[3:]) == [("A", False), ("B", True), ("loop", True)]


async def test_applied_outputs_reach_the_coils_and_repeating_them_writes_nothing(
    background: Background, module: GateIoSimulator
) -> None:
    endpoint = await module.open_tcp()
    background.start(endpoint.run())
    reader = session(io_config(endpoint.url), Observations())
    background.start(reader.run())
    await wait_until(lambda: module.received.count(READ_2_INPUTS) >= 3)
    assert module.coil_writes == 0  # nothing is written before the first apply()

    await reader.apply(GateOutputs(barrier_open=True, green=True))
    # Every coil once, red and buzzer included: nothing is known to be written on a new link.
    await bounded(module.until(lambda: module.coil_writes == 4))
    await reader.apply(GateOutputs(barrier_open=True, green=True))
    polls = module.received.count(READ_2_INPUTS)
    await wait_until(lambda: module.received.count(READ_2_INPUTS) >= polls + 3)

    assert module.coils() == {"barrier": True, "green": True, "red": False, "buzzer": False}
    assert module.coil_writes == 4
    await reader.apply(GateOutputs(red=True, buzzer=True))
    await bounded(module.until(lambda: module.coil_writes == 8))
    assert module.coils() == {"barrier": False, "green": False, "red": True, "buzzer": True}


async def test_unplug_and_replug_through_a_real_pty_recovers_inputs_and_outputs(
    background: Background, module: GateIoSimulator, tmp_path: Path
) -> None:
    by_id = tmp_path / "usb-FTDI_RS485-if00-port0"
    cable = background.start(module.open_pty(link=by_id).run())
    seen = Observations()
    backoff = CountingBackoff()
    reader = session(io_config(str(by_id)), seen, backoff)
    background.start(reader.run())
    await reader.apply(GateOutputs(barrier_open=True, green=True))
    await bounded(module.until_coils(barrier=True, green=True))
    writes = module.coil_writes

    cable.cancel()  # the USB-RS485 adapter is pulled; the module stays powered
    await wait_until(lambda: len(seen.links()) >= 2)
    failed = backoff.attempts
    await wait_until(lambda: backoff.attempts >= failed + 3)
    await module.set_beam("B", True)
    background.start(module.open_pty(link=by_id).run())
    await wait_until(lambda: len(seen.links()) >= 3)
    await wait_until(lambda: module.coil_writes >= writes + 4)

    assert [type(o) for o in seen.links()] == [ReaderUp, ReaderDown, ReaderUp]
    assert seen.downs()[0].reason == "link lost"
    assert beams(seen) == [("A", False), ("B", False), ("A", False), ("B", True)]
    assert module.coils() == {"barrier": True, "green": True, "red": False, "buzzer": False}
    assert reader.stats.connected


async def test_a_module_that_never_answers_is_reported_down(background: Background) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # listens, never answers
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    seen = Observations()
    try:
        config = io_config(f"socket://127.0.0.1:{port}", reply_timeout_s=0.1)
        background.start(session(config, seen).run())
        await wait_until(lambda: len(seen) >= 1)
    finally:
        server.close()
        await server.wait_closed()

    assert seen == [
        ReaderDown(reader="io-1", reason="no reply reading inputs 0-1 within 0.1 s", at_mono_s=NOW)
    ]


async def test_an_input_the_module_does_not_have_brings_it_down_with_the_exception(
    background: Background, module: GateIoSimulator
) -> None:
    endpoint = await module.open_tcp()
    background.start(endpoint.run())
    seen = Observations()
    reader = session(io_config(endpoint.url, beam_b=40), seen)
    background.start(reader.run())
    await wait_until(lambda: len(seen) >= 1)

    assert seen.downs()[0].reason == ("reading inputs 0-40: exception reply 02 (illegal address)")
    assert reader.stats.malformed == 1


async def test_a_corrupted_reply_is_asked_again_without_bringing_the_module_down(
    background: Background, module: GateIoSimulator
) -> None:
    pty = module.open_pty()
    background.start(pty.run())
    seen = Observations()
    reader = session(io_config(pty.url, reply_timeout_s=0.2), seen)
    background.start(reader.run())
    await wait_until(lambda: reader.stats.connected)

    module.corrupt_next_reply()
    await wait_until(lambda: reader.stats.checksum_errors == 1)
    frames = reader.stats.frames
    await wait_until(lambda: reader.stats.frames >= frames + 3)

    assert [type(o) for o in seen.links()] == [ReaderUp]


async def test_a_port_that_cannot_be_opened_is_reported_down_once(background: Background) -> None:
    seen = Observations()
    backoff = CountingBackoff()

    background.start(session(io_config("/dev/does-not-exist"), seen, backoff).run())
    await wait_until(lambda: backoff.attempts >= 3)

    assert seen == [
        ReaderDown(reader="io-1", reason="cannot open /dev/does-not-exist", at_mono_s=NOW)
    ]


async def test_a_session_cancelled_at_any_moment_ends() -> None:
    # pymodbus's asyncio.wait_for loses a cancellation that lands as its future completes
    # (Python 3.11); a failing open completes at once, so some of these offsets hit that.
    config = io_config("/dev/does-not-exist")
    for offset in range(12):
        running = asyncio.create_task(session(config, Observations(), CountingBackoff()).run())
        for _ in range(offset):
            await asyncio.sleep(0)
        running.cancel()
        done, _ = await asyncio.wait({running}, timeout=5)

        assert done == {running}, f"still running after a cancel {offset} iterations in"
        assert running.cancelled()


async def test_cancelled_session_releases_the_serial_port(
    background: Background, module: GateIoSimulator
) -> None:
    pty = module.open_pty()
    background.start(pty.run())
    seen = Observations()
    running = background.start(session(io_config(pty.url), seen).run())
    await wait_until(lambda: len(seen) >= 1)

    running.cancel()
    await wait_until(running.done)

    # The port is opened exclusively: this succeeds only if the session let go of it.
    _, writer = await open_link(pty.path, 9600)
    writer.close()
    await writer.wait_closed()


async def test_the_flight_recorder_captures_the_modbus_conversation(
    background: Background, module: GateIoSimulator, tmp_path: Path
) -> None:
    recording = tmp_path / "io-1.rec"
    pty = module.open_pty()
    background.start(pty.run())
    reader = session(io_config(pty.url, record=str(recording)), Observations())
    task = background.start(reader.run())
    await wait_until(lambda: module.received.count(READ_2_INPUTS) >= 3)
    await reader.apply(GateOutputs(barrier_open=True))
    await bounded(module.until_coils(barrier=True))
    task.cancel()
    await wait_until(lambda: recording.exists() and b'"close"' in recording.read_bytes())

    lines = [json.loads(line) for line in recording.read_text().splitlines()]
    assert lines[0]["dir"] == "open"
    sent = [bytes.fromhex(line["hex"]) for line in lines if line["dir"] == "tx"]
    received = b"".join(bytes.fromhex(line["hex"]) for line in lines if line["dir"] == "rx")
    assert sent[0] == READ_2_INPUTS
    assert COIL_0_ON in sent
    assert received.startswith(b"\x01\x02\x01")  # the module's answer to the first poll
    assert lines[-1]["dir"] == "close"
