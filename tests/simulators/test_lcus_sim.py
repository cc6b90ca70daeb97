"""The relay board simulator obeys PROTOCOLS.md §4's frames, on a pty, over TCP and as a CLI."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest

from edgegate.devices.link import open_link
from simulators.lcus import LcusSimulator
from tests.devices.support import Background

T = TypeVar("T")
# Verbatim from PROTOCOLS.md §4.
CH1_ON = bytes.fromhex("A0 01 01 A2")
CH1_OFF = bytes.fromhex("A0 01 00 A1")


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    background = Background()
    yield background
    await background.stop()


async def bounded(awaitable: Awaitable[T], timeout_s: float = 5.0) -> T:
    async with asyncio.timeout(timeout_s):
        return await awaitable


@contextlib.asynccontextmanager
async def host(url: str) -> AsyncIterator[asyncio.StreamWriter]:
    """The port, open for as long as the block runs (closing it may drop unsent bytes)."""
    _, writer = await open_link(url, 9600)
    try:
        yield writer
    finally:
        writer.close()
        await writer.wait_closed()


async def write(writer: asyncio.StreamWriter, data: bytes, *, bytewise: bool = False) -> None:
    for chunk in [data[i : i + 1] for i in range(len(data))] if bytewise else [data]:
        writer.write(chunk)
        await writer.drain()


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
async def test_documented_frames_switch_channel_1_on_and_off(
    background: Background, bytewise: bool
) -> None:
    board = LcusSimulator(channels=2)
    pty = board.open_pty()
    background.start(pty.run())

    async with host(pty.url) as writer:
        await write(writer, CH1_ON, bytewise=bytewise)
        await bounded(board.until(lambda relays: relays[1]))
        await write(writer, b"\x00\xff" + CH1_OFF + b"\x13", bytewise=bytewise)  # with junk
        await bounded(board.until(lambda relays: not relays[1]))

    assert board.relays() == {1: False, 2: False}
    assert (board.frames, board.checksum_errors) == (2, 0)


async def test_a_bad_sum_or_a_missing_channel_changes_nothing(background: Background) -> None:
    board = LcusSimulator(channels=2)
    endpoint = await board.open_tcp()
    background.start(endpoint.run())

    async with host(endpoint.url) as writer:
        await write(writer, bytes.fromhex("A0 01 01 A3 A0 03 01 A4") + CH1_ON)
        await bounded(board.until(lambda relays: relays[1]))

    assert board.relays() == {1: True, 2: False}
    assert (board.checksum_errors, board.ignored) == (1, 1)


@pytest.mark.parametrize("channels", [0, 256])
def test_a_board_has_1_to_255_channels(channels: int) -> None:
    with pytest.raises(ValueError, match="channels"):
        LcusSimulator(channels=channels)


async def test_cli_serves_a_board_and_reports_its_relays() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from simulators.cli import main; sys.exit(main())",
        "lcus",
        "--channels",
        "2",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout
    assert process.stderr
    try:
        url = (await bounded(process.stdout.readline())).decode().strip()
        async with host(url) as writer:
            await write(writer, CH1_ON)
            line = await bounded(process.stderr.readline())

        assert line.decode().strip() == "edgegate-sim: relays 1=on 2=off"
        process.send_signal(signal.SIGINT)
        assert await bounded(process.wait()) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
