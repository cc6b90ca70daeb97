"""The [outbox] and [outputs] sections: defaults, bounds, and what epcis needs."""

from __future__ import annotations

import pytest

from edgegate.config import ConfigError, parse_config

MINIMAL: dict[str, object] = {"gate": {"site": "HAK-CBZ", "gate_id": "G01"}, "readers": []}


def test_the_outbox_is_bounded_and_outputs_are_off_by_default() -> None:
    config = parse_config(MINIMAL, environ={})
    assert config.outbox.max_rows == 200_000
    assert config.outbox.max_age_s == 30 * 86400
    assert config.outbox.high_water == 10_000
    assert config.outbox.replay_rate_per_s == 500
    assert config.outbox.window == 64
    assert (config.outputs.reads, config.outputs.epcis) == (False, False)


def test_outbox_keys_come_from_the_environment_too() -> None:
    config = parse_config(
        MINIMAL, environ={"EDGEGATE_OUTBOX__MAX_ROWS": "5000", "EDGEGATE_OUTBOX__WINDOW": "8"}
    )
    assert (config.outbox.max_rows, config.outbox.window) == (5000, 8)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"outbox": {"max_rows": 10}}, "outbox.max_rows"),
        ({"outbox": {"window": 0}}, "outbox.window"),
        ({"outbox": {"replay_rate_per_s": -1}}, "outbox.replay_rate_per_s"),
        ({"outbox": {"max_row": 1000}}, "unknown key outbox.max_row"),
        ({"outputs": {"epcis": True}}, "epcis = true needs read_point"),
    ],
)
def test_a_bad_value_is_a_one_line_error_naming_the_key(
    section: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**MINIMAL, **section}, environ={})


def test_epcis_with_a_read_point_is_accepted() -> None:
    config = parse_config(
        {**MINIMAL, "outputs": {"epcis": True, "read_point": "urn:epc:id:sgln:6901234.00001.1"}},
        environ={},
    )
    assert config.outputs.epcis
    assert config.outputs.biz_location == ""
