"""The files in systemd/ as systemd's own tools judge them (the CI check of the deployment).

``systemd-analyze`` comes with systemd (Debian: package ``systemd``), on the developers'
machines and in CI alike; these tests skip only where it is not installed at all.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD_DIR / "edgegate.service"
EXPOSURE_MAX = 1.5
INSTALLED_EDGEGATE = "/opt/edgegate/bin/edgegate"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
needs_systemd_sysusers = pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed"
)


def service_section() -> dict[str, list[str]]:
    """[Service] as key -> every value given (systemd keys may repeat)."""
    values: dict[str, list[str]] = {}
    section = None
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@needs_systemd_analyze
def test_the_unit_exposure_stays_within_the_threshold() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for edgegate\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= EXPOSURE_MAX, result.stdout
    # Every directive was understood: a typo would be ignored with a warning, not fail.
    assert result.stderr == ""


@needs_systemd_analyze
def test_the_unit_verifies_without_a_single_warning(tmp_path: Path) -> None:
    # verify insists that ExecStart= exists: stand in for the installed entry point, same
    # arguments, and check every directive and the unit's dependencies.
    stub = tmp_path / "edgegate"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "edgegate.service"
    text = UNIT.read_text(encoding="utf-8")
    assert INSTALLED_EDGEGATE in text
    unit.write_text(text.replace(INSTALLED_EDGEGATE, str(stub)), encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_the_unit_is_a_notify_service_with_a_watchdog_that_restarts_always() -> None:
    service = service_section()
    assert service["Type"] == ["notify"]
    assert service["Restart"] == ["always"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["ExecStart"][0].startswith(f"{INSTALLED_EDGEGATE} run --config ")
    watchdog_s = int(service["WatchdogSec"][0].removesuffix("s"))
    stop_s = int(service["TimeoutStopSec"][0].removesuffix("s"))
    # The daemon drains the outbox for at most 3 s on SIGTERM (publisher SHUTDOWN_DRAIN_S)
    # and pings every WatchdogSec / 2 with a probe budget of a quarter of it.
    assert stop_s > 3
    assert watchdog_s >= 4


def test_the_unit_reaches_only_serial_and_input_devices_and_loads_every_secret() -> None:
    service = service_section()
    assert service["DevicePolicy"] == ["closed"]
    assert sorted(service["DeviceAllow"]) == ["char-input r", "char-ttyACM rw", "char-ttyUSB rw"]
    assert set(service["SupplementaryGroups"][0].split()) == {"dialout", "input"}
    credentials = {value.split(":")[0] for value in service["LoadCredential"]}
    # The names app.py and the docs read from $CREDENTIALS_DIRECTORY.
    assert {"mqtt-password", "inspection-seed", "mqtt-key"} <= credentials


@needs_systemd_sysusers
def test_the_sysusers_file_creates_the_service_user(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            "systemd-sysusers",
            f"--root={tmp_path}",
            "--dry-run",
            str(SYSTEMD_DIR / "edgegate.sysusers"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "Creating group 'edgegate'" in output
    assert "Creating user 'edgegate'" in output


def test_the_unit_runs_as_the_user_the_sysusers_file_creates() -> None:
    service = service_section()
    sysusers = (SYSTEMD_DIR / "edgegate.sysusers").read_text(encoding="utf-8")
    declared = [line.split()[1] for line in sysusers.splitlines() if line.startswith("u ")]
    assert service["User"] == declared == ["edgegate"]


def test_the_modules_behind_every_serial_device_group_are_loaded_at_boot() -> None:
    modules = {
        line.strip()
        for line in (SYSTEMD_DIR / "edgegate.modules-load.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    # The kernel registers ttyUSB with usbserial and ttyACM with cdc_acm (/proc/devices).
    provider = {"char-ttyUSB": "usbserial", "char-ttyACM": "cdc_acm"}
    groups = {value.split()[0] for value in service_section()["DeviceAllow"]}
    assert {provider[group] for group in groups if group in provider} == modules
