"""A serial (CDC-ACM) scanner session against the scanner simulator, over a real pty and TCP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgegate.config import ScannerReaderConfig
from edgegate.devices.link import Backoff, open_link
from edgegate.devices.scanner import ScannerSession
from edgegate.gate.model import CodeScanned, ReaderDown, ReaderUp
from simulators.scanner import ScannerSimulator
from tests.devices.support import Background, CountingBackoff, Observations, wait_until

PASS_NO = "HP4601202611250001"
GS1 = "0106141411234567\x1d10ABC123"
NOW = 1234.5


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    background = Background()
    yield background
    await background.stop()


def scanner_config(url: str, **overrides: Any) -> ScannerReaderConfig:
    return ScannerReaderConfig(name="scan-1", kind="scanner", url=url, **overrides)


def session(
    config: ScannerReaderConfig, seen: Observations, backoff: Backoff | None = None
) -> ScannerSession:
    return ScannerSession(config, seen.append, clock=lambda: NOW, backoff=backoff)


def codes(seen: Observations) -> list[str]:
    return [o.value for o in seen if isinstance(o, CodeScanned)]


async def test_scanned_codes_arrive_after_reader_up_through_a_real_pty(
    background: Background,
) -> None:
    scanner = ScannerSimulator(b"\r")
    pty = scanner.open_pty()
    background.start(pty.run())
    seen = Observations()
    background.start(session(scanner_config(pty.url), seen).run())
    await wait_until(lambda: len(seen) >= 1)

    scanner.scan(PASS_NO)
    scanner.scan(GS1, split_at=range(1, 40))  # one byte per write
    await wait_until(lambda: len(codes(seen)) >= 2)

    assert seen == [
        ReaderUp(reader="scan-1", at_mono_s=NOW),
        CodeScanned(reader="scan-1", value=PASS_NO, at_mono_s=NOW),
        CodeScanned(reader="scan-1", value=GS1, at_mono_s=NOW),
    ]


@pytest.mark.parametrize(
    ("sent", "configured"),
    [("\r\n", "\r\n"), ("\n", "\n"), ("\r\n", "\r")],
    ids=["crlf", "lf", "crlf-to-a-cr-reader"],
)
async def test_codes_arrive_with_each_suffix_over_tcp(
    background: Background, sent: str, configured: str
) -> None:
    scanner = ScannerSimulator(sent.encode())
    endpoint = await scanner.open_tcp()
    background.start(endpoint.run())
    seen = Observations()
    background.start(session(scanner_config(endpoint.url, suffix=configured), seen).run())
    await wait_until(lambda: len(seen) >= 1)

    for code in (PASS_NO, GS1, PASS_NO):
        scanner.scan(code, split_at=[len(code)])  # the suffix in a write of its own
    await wait_until(lambda: len(codes(seen)) >= 3)

    assert codes(seen) == [PASS_NO, GS1, PASS_NO]


async def test_unplug_and_replug_at_the_same_path_recovers(
    background: Background, tmp_path: Path
) -> None:
    by_id = tmp_path / "usb-Newland_Scanner-if00"
    scanner = ScannerSimulator()
    first = background.start(scanner.open_pty(link=by_id).run())
    seen = Observations()
    backoff = CountingBackoff()
    background.start(session(scanner_config(str(by_id)), seen, backoff).run())
    await wait_until(lambda: len(seen) >= 1)

    first.cancel()  # the cable is pulled: the port and its by-id link vanish
    await wait_until(lambda: len(seen.links()) >= 2)
    failed = backoff.attempts
    await wait_until(lambda: backoff.attempts >= failed + 3)  # nothing to open meanwhile
    background.start(scanner.open_pty(link=by_id).run())
    await wait_until(lambda: len(seen.links()) >= 3)
    scanner.scan(PASS_NO)
    await wait_until(lambda: len(codes(seen)) >= 1)

    assert [type(o) for o in seen.links()] == [ReaderUp, ReaderDown, ReaderUp]
    assert codes(seen) == [PASS_NO]


async def test_port_that_cannot_be_opened_is_reported_down_once(background: Background) -> None:
    seen = Observations()
    backoff = CountingBackoff()

    background.start(session(scanner_config("/dev/does-not-exist"), seen, backoff).run())
    await wait_until(lambda: backoff.attempts >= 3)

    assert len(seen) == 1
    assert isinstance(seen[0], ReaderDown)
    assert seen[0].reason.startswith("cannot open /dev/does-not-exist")


async def test_stats_count_codes_bad_bytes_and_overlong_lines(background: Background) -> None:
    scanner = ScannerSimulator()
    endpoint = await scanner.open_tcp()
    serving = background.start(endpoint.run())
    seen = Observations()
    reader = session(scanner_config(endpoint.url), seen, CountingBackoff())
    assert reader.stats.connected is False

    background.start(reader.run())
    await wait_until(lambda: reader.stats.connected)
    scanner.scan(PASS_NO)
    scanner.scan(b"\xb9\xfe-7")  # GBK, not UTF-8
    scanner.scan(b"9" * 10_000)  # longer than any QR code
    scanner.scan(PASS_NO)
    await wait_until(lambda: len(codes(seen)) >= 3)
    serving.cancel()
    await wait_until(lambda: not reader.stats.connected)

    assert codes(seen) == [PASS_NO, "\ufffd\ufffd-7", PASS_NO]
    stats = reader.stats
    assert (stats.frames, stats.malformed, stats.resyncs, stats.checksum_errors) == (3, 1, 1, 0)
    assert stats.last_seen_mono_s == NOW


async def test_cancelled_session_releases_the_serial_port(background: Background) -> None:
    scanner = ScannerSimulator()
    pty = scanner.open_pty()
    background.start(pty.run())
    seen = Observations()
    running = background.start(session(scanner_config(pty.url), seen).run())
    await wait_until(lambda: len(seen) >= 1)

    running.cancel()
    await wait_until(running.done)

    # The port is opened exclusively: this succeeds only if the session let go of it.
    _, writer = await open_link(pty.path, 9600)
    writer.close()
    await writer.wait_closed()
