"""The config contract: TOML + env overrides -> frozen models, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgegate.config import ConfigError, R2000ReaderConfig, load_config, render_effective

MINIMAL = """
[gate]
site = "HAK-CBZ"
gate_id = "G01"

[[readers]]
name = "rfid-1"
kind = "r2000"
url = "socket://127.0.0.1:7001"
"""
EXAMPLE = Path(__file__).parents[2] / "config" / "edgegate.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgegate.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_minimal_file_gets_every_documented_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), environ={})
    assert config.mqtt.port == 1883
    assert config.mqtt.topic_prefix == "edgegate/v1"
    assert config.passage.stable_set_ms == 800
    assert config.whitelist.stale_policy == "hold"
    assert config.client_id == "edgegate-HAK-CBZ-G01"
    [reader] = config.readers
    assert isinstance(reader, R2000ReaderConfig)
    assert reader.baudrate == 115200


def test_the_example_config_is_valid_and_names_every_section(tmp_path: Path) -> None:
    config = load_config(EXAMPLE, environ={})
    assert [r.kind for r in config.readers] == ["r2000", "thingmagic", "scanner", "gate-io"]
    text = EXAMPLE.read_text(encoding="utf-8")
    for section in type(config).model_fields:
        if section != "readers":
            assert f"[{section}]" in text


def test_models_are_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), environ={})
    with pytest.raises(ValidationError):
        config.gate.site = "X"  # type: ignore[misc]


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "EDGEGATE_MQTT__PORT": "2883",
        "EDGEGATE_MQTT__HOST": "broker.local",
        "EDGEGATE_GATE__MODE": "portal",
        "EDGEGATE_GATE__OUTSIDE_ANTENNAS": "[1, 3]",
        "EDGEGATE_UNRELATED": "x",
    }
    config = load_config(write(tmp_path, MINIMAL), environ=env)
    assert config.mqtt.port == 2883
    assert config.mqtt.host == "broker.local"
    assert config.gate.mode == "portal"
    assert config.gate.outside_antennas == (1, 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "\n[mqtt]\nport = \n", "TOML syntax error"),
        (MINIMAL + "\n[mqtt]\nprot = 1883\n", "unknown key mqtt.prot"),
        (MINIMAL + '\n[mqtt]\nport = "many"\n', "mqtt.port"),
        (MINIMAL.replace('site = "HAK-CBZ"\n', ""), "missing required key gate.site"),
        ("[gate]\nsite='A'\ngate_id='B'\n", "missing required key readers"),
        (MINIMAL + "\n[passage]\nstable_set_ms = -5\n", "passage.stable_set_ms"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_toml_syntax_error_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 12"):
        load_config(write(tmp_path, MINIMAL + "\n[mqtt]\nport = \n"), environ={})


def test_a_missing_file_is_reported_as_such(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_secrets_are_masked_in_the_effective_config(tmp_path: Path) -> None:
    env = {"EDGEGATE_MQTT__PASSWORD": "hunter2-very-secret"}
    config = load_config(write(tmp_path, MINIMAL), environ=env)
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "hunter2-very-secret"
    assert "hunter2" not in render_effective(config)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgegate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    result = run_cli(
        "check-config",
        str(write(tmp_path, MINIMAL)),
        env={"EDGEGATE_MQTT__PASSWORD": "s3cr3t-value", "PATH": "/usr/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert '"site": "HAK-CBZ"' in result.stdout
    assert "s3cr3t-value" not in result.stdout + result.stderr


def test_check_config_exits_2_with_one_line_on_error(tmp_path: Path) -> None:
    result = run_cli("check-config", str(write(tmp_path, MINIMAL + "\n[mqtt]\nprot = 1\n")))
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert "unknown key mqtt.prot" in line
