"""The R2000 reader's keys: inventory mode, its parameters, RF power and the antenna policy."""

from __future__ import annotations

from typing import Any

import pytest

from edgegate.config import ConfigError, R2000ReaderConfig, parse_config


def r2000(**keys: Any) -> R2000ReaderConfig:
    data: dict[str, object] = {
        "gate": {"site": "HAK-CBZ", "gate_id": "G01"},
        "readers": [{"name": "rfid-1", "kind": "r2000", "url": "/dev/ttyUSB0", **keys}],
    }
    (reader,) = parse_config(data, environ={}).readers
    assert isinstance(reader, R2000ReaderConfig)
    return reader


def test_defaults_are_real_time_inventory_at_the_readers_own_power_failing_closed() -> None:
    reader = r2000()

    assert (reader.inventory, reader.session, reader.rf_power_dbm) == ("89", None, None)
    assert (reader.stay, reader.switch_interval_ms, reader.antenna_fault) == (1, 0, "down")


def test_a_session_alone_still_selects_session_inventory() -> None:
    assert r2000(session=1).inventory == "8b"


@pytest.mark.parametrize(("written", "read"), [("8B", "8b"), (89, "89"), ("8a", "8a")])
def test_inventory_is_read_in_either_case_and_as_a_number(written: object, read: str) -> None:
    session = {"session": 2} if read == "8b" else {}

    assert r2000(inventory=written, **session).inventory == read


@pytest.mark.parametrize(
    ("keys", "complaint"),
    [
        ({"inventory": "8b"}, 'inventory = "8b" needs session'),
        ({"inventory": "89", "session": 1}, 'session applies only to inventory = "8b"'),
        ({"inventory": "8a", "antennas": [1, 5]}, "at most 4 antennas, ports 1-4"),
        ({"inventory": "8a", "antennas": [1, 2, 3, 4, 1]}, "at most 4 antennas"),
        ({"inventory": "80"}, "inventory"),
        ({"rf_power_dbm": 34}, "rf_power_dbm"),
        ({"stay": 0}, "stay"),
        ({"switch_interval_ms": 256}, "switch_interval_ms"),
        ({"antenna_fault": "ignore"}, "antenna_fault"),
    ],
)
def test_settings_the_reader_cannot_carry_out_are_one_line_errors(
    keys: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint) as raised:
        r2000(**keys)
    assert "\n" not in str(raised.value)
