"""The scanner, gate I/O and relay board keys: defaults, wiring checks, one-line errors."""

from __future__ import annotations

import re
from typing import Any

import pytest

from edgegate.config import (
    ConfigError,
    GateIoReaderConfig,
    LcusReaderConfig,
    ReaderConfig,
    ScannerReaderConfig,
    parse_config,
)


def reader(**keys: Any) -> ReaderConfig:
    data: dict[str, object] = {
        "gate": {"site": "HAK-CBZ", "gate_id": "G01"},
        "readers": [{"name": "dev-1", "url": "/dev/ttyUSB0", **keys}],
    }
    (parsed,) = parse_config(data, environ={}).readers
    return parsed


def test_gate_io_defaults_poll_beams_0_and_1_without_a_loop() -> None:
    io = reader(kind="gate-io")

    assert isinstance(io, GateIoReaderConfig)
    assert (io.unit, io.poll_ms, io.reply_timeout_s) == (1, 50, 0.5)
    assert (io.beam_a, io.beam_b, io.loop) == (0, 1, None)
    assert (io.barrier, io.green, io.red, io.buzzer) == (0, 1, 2, 3)


def test_gate_io_takes_a_loop_detector_input() -> None:
    io = reader(kind="gate-io", loop=7)

    assert isinstance(io, GateIoReaderConfig)
    assert io.loop == 7


@pytest.mark.parametrize(
    ("keys", "complaint"),
    [
        ({"loop": 1}, "beam_b and loop are both input 1"),
        ({"buzzer": 0}, "barrier and buzzer are both coil 0"),
        ({"unit": 0}, "readers.0.gate-io.unit"),
        ({"beam_a": 70000}, "readers.0.gate-io.beam_a"),
    ],
)
def test_gate_io_wiring_mistakes_are_one_line_errors(keys: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(complaint)):
        reader(kind="gate-io", **keys)


def test_an_lcus_board_drives_only_the_outputs_given_channels() -> None:
    relays = reader(kind="lcus", barrier=1, red=2)

    assert isinstance(relays, LcusReaderConfig)
    assert (relays.baudrate, relays.barrier, relays.green, relays.red, relays.buzzer) == (
        9600,
        1,
        None,
        2,
        None,
    )


@pytest.mark.parametrize(
    ("keys", "complaint"),
    [
        ({}, "drives at least one of barrier, green, red, buzzer"),
        ({"barrier": 1, "green": 1}, "barrier and green are both channel 1"),
        ({"barrier": 0}, "readers.0.lcus.barrier"),
        ({"barrier": 1, "antennas": [1]}, "unknown key readers.0.lcus.antennas"),
    ],
)
def test_lcus_mistakes_are_one_line_errors(keys: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(complaint)):
        reader(kind="lcus", **keys)


@pytest.mark.parametrize("suffix", ["\r", "\r\n", "\n"])
def test_a_scanner_takes_each_suffix(suffix: str) -> None:
    scanner = reader(kind="scanner", suffix=suffix)

    assert isinstance(scanner, ScannerReaderConfig)
    assert scanner.suffix == suffix


def test_a_scanner_refuses_another_suffix() -> None:
    with pytest.raises(ConfigError, match=re.escape("readers.0.scanner.suffix")):
        reader(kind="scanner", suffix="\t")
