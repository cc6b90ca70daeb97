"""The scanner simulator sends codes and suffixes as a CDC scanner does, on a pty, over TCP
and as a CLI."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest

from edgegate.devices.link import open_link
from simulators.scanner import ScannerSimulator
from tests.devices.support import Background

T = TypeVar("T")
PASS_NO = "HP4601202611250001"


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    background = Background()
    yield background
    await background.stop()


async def bounded(awaitable: Awaitable[T], timeout_s: float = 5.0) -> T:
    async with asyncio.timeout(timeout_s):
        return await awaitable


@pytest.mark.parametrize("suffix", [b"\r", b"\r\n", b"\n"], ids=["cr", "crlf", "lf"])
async def test_a_scan_is_the_code_then_the_suffix_on_the_pty(
    background: Background, suffix: bytes
) -> None:
    scanner = ScannerSimulator(suffix)
    pty = scanner.open_pty()
    background.start(pty.run())
    reader, writer = await open_link(pty.path, 9600)
    try:
        scanner.scan(PASS_NO)
        scanner.scan("01\x1d10AB")

        expected = PASS_NO.encode() + suffix + b"01\x1d10AB" + suffix
        assert await bounded(reader.readexactly(len(expected))) == expected
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_split_scan_goes_out_in_the_writes_asked_for(background: Background) -> None:
    scanner = ScannerSimulator(b"\r\n")
    endpoint = await scanner.open_tcp()
    background.start(endpoint.run())
    reader, writer = await open_link(endpoint.url, 9600)
    try:
        scanner.scan(b"ABC", split_at=[1, 4])

        assert await bounded(reader.readexactly(5)) == b"ABC\r\n"
        assert (scanner.scans, scanner.writes) == (1, 3)
    finally:
        writer.close()
        await writer.wait_closed()


def test_only_cr_crlf_and_lf_are_suffixes() -> None:
    with pytest.raises(ValueError, match="suffix"):
        ScannerSimulator(b"\t")


async def test_cli_scans_what_stdin_says_with_gs_spelled_out() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from simulators.cli import main; sys.exit(main())",
        "scanner",
        "--suffix",
        "crlf",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin
    assert process.stdout
    assert process.stderr
    try:
        path = (await bounded(process.stdout.readline())).decode().strip()
        reader, writer = await open_link(path, 9600)
        try:
            process.stdin.write(b"scan 0106141411234567<GS>10ABC\nbogus\n")
            await process.stdin.drain()

            expected = b"0106141411234567\x1d10ABC\r\n"
            assert await bounded(reader.readexactly(len(expected))) == expected
            assert b"unknown command 'bogus'" in await bounded(process.stderr.readline())
        finally:
            writer.close()
            await writer.wait_closed()

        process.send_signal(signal.SIGTERM)
        assert await bounded(process.wait()) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
