"""The HID (keyboard-mode) scanner session: what can be checked without a keyboard.

CI has no ``/dev/uinput`` to create a keyboard with, so decoding is tested on injected key
events in tests/wire/test_hid.py; here only the session's handling of a device it cannot
have, and its selection by url.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgegate.config import ScannerReaderConfig
from edgegate.devices.factory import build_sessions
from edgegate.devices.hid import HidScannerSession
from edgegate.devices.scanner import ScannerSession
from edgegate.gate.model import ReaderDown
from tests.devices.support import Background, CountingBackoff, Observations, wait_until

NOW = 1234.5


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    background = Background()
    yield background
    await background.stop()


def scanner_config(url: str) -> ScannerReaderConfig:
    return ScannerReaderConfig(name="scan-1", kind="scanner", url=url)


async def test_a_missing_input_device_is_reported_down_once(background: Background) -> None:
    seen = Observations()
    backoff = CountingBackoff()
    url = "/dev/input/by-id/usb-Newland_Scanner-event-kbd"
    reader = HidScannerSession(scanner_config(url), seen.append, lambda: NOW, backoff=backoff)

    background.start(reader.run())
    await wait_until(lambda: backoff.attempts >= 3)

    assert len(seen) == 1
    assert isinstance(seen[0], ReaderDown)
    assert seen[0].reason.startswith(f"cannot open {url}")
    assert not reader.stats.connected


async def test_a_file_that_is_not_an_input_device_is_reported_down(
    background: Background, tmp_path: Path
) -> None:
    not_a_keyboard = tmp_path / "event0"
    not_a_keyboard.write_bytes(b"")
    seen = Observations()
    reader = HidScannerSession(scanner_config(str(not_a_keyboard)), seen.append, lambda: NOW)

    background.start(reader.run())
    await wait_until(lambda: len(seen) >= 1)

    assert [type(o) for o in seen] == [ReaderDown]


def test_a_scanner_under_dev_input_is_read_as_a_keyboard_any_other_as_a_serial_port() -> None:
    hid, cdc = build_sessions(
        [
            ScannerReaderConfig(name="kbd", kind="scanner", url="/dev/input/by-id/usb-X-event-kbd"),
            ScannerReaderConfig(name="cdc", kind="scanner", url="/dev/serial/by-id/usb-X-if00"),
        ],
        lambda observation: None,
    )

    assert isinstance(hid, HidScannerSession)
    assert isinstance(cdc, ScannerSession)
