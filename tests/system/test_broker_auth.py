"""The MQTT password comes from systemd's credentials directory and never shows in the logs.

mosquitto refuses anonymous clients and knows two users (``mosquitto_passwd``); the daemon
runs as a process with ``$CREDENTIALS_DIRECTORY/mqtt-password``, as ``LoadCredential=``
provides it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from edgegate.localbroker import LocalBroker
from edgegate.mqtt.topics import Topics
from simulators.endpoints import PtyEndpoint
from simulators.r2000 import R2000Simulator

from .support import status

pytestmark = pytest.mark.system

TOPICS = Topics("edgegate/v1", "HAK-CBZ", "AUTH01")
GATE_PASSWORD = "Gate-Pw 7f3c9a21 ü"  # spaces and non-ASCII: read exactly, never logged
OFFICE_PASSWORD = "office-pw-0b5e"


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    passwords = tmp_path / "passwd"
    for user, password in (("gate", GATE_PASSWORD), ("office", OFFICE_PASSWORD)):
        subprocess.run(
            [
                "mosquitto_passwd",
                *(["-c"] if user == "gate" else []),
                "-b",
                str(passwords),
                user,
                password,
            ],
            check=True,
            capture_output=True,
        )
    with LocalBroker(options=["allow_anonymous false", f"password_file {passwords}"]) as broker:
        yield broker


def write_config(path: Path, state_dir: Path, broker: LocalBroker, port: str) -> None:
    path.write_text(
        f"""
[gate]
site = "{TOPICS.site}"
gate_id = "{TOPICS.gate_id}"
mode = "portal"
direction = "in"

[mqtt]
host = "{broker.host}"
port = {broker.port}
username = "gate"

[storage]
state_dir = "{state_dir}"

[[readers]]
name = "rfid-1"
kind = "r2000"
url = "{port}"
""",
        encoding="utf-8",
    )


async def test_the_gate_logs_in_with_its_systemd_credential_and_never_logs_it(
    auth_broker: LocalBroker,
    reader: tuple[R2000Simulator, PtyEndpoint],
    tmp_path: Path,
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt-password").write_text(GATE_PASSWORD + "\n", encoding="utf-8")
    config = tmp_path / "edgegate.toml"
    write_config(config, tmp_path / "state", auth_broker, reader[1].path)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgegate",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "CREDENTIALS_DIRECTORY": str(credentials),
            "EDGEGATE_LOG__LEVEL": "debug",
        },
    )
    try:
        async with aiomqtt.Client(
            auth_broker.host, auth_broker.port, username="office", password=OFFICE_PASSWORD
        ) as office:
            await office.subscribe(TOPICS.status, qos=1)
            online = await status(office.messages, "online", TOPICS)
            process.send_signal(signal.SIGTERM)
            await status(office.messages, "stopped", TOPICS)
        assert process.stdout is not None
        async with asyncio.timeout(30):
            output = (await process.stdout.read()).decode("utf-8", errors="replace")
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert online["state"] == "online"
    assert "mqtt.connected" in output
    assert GATE_PASSWORD not in output
    assert GATE_PASSWORD.split()[0] not in output


async def test_a_wrong_password_is_refused_and_not_logged_either(
    auth_broker: LocalBroker,
    reader: tuple[R2000Simulator, PtyEndpoint],
    tmp_path: Path,
) -> None:
    wrong = "not-the-Gate-Pw-51d2"
    (tmp_path / "pw").write_text(wrong, encoding="utf-8")
    config = tmp_path / "edgegate.toml"
    write_config(config, tmp_path / "state", auth_broker, reader[1].path)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgegate",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "EDGEGATE_MQTT__PASSWORD_FILE": str(tmp_path / "pw"),
            "EDGEGATE_LOG__LEVEL": "debug",
        },
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            while not any("mqtt.disconnected" in line for line in lines):
                lines.append((await process.stdout.readline()).decode(errors="replace"))
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            lines.append((await process.stdout.read()).decode(errors="replace"))
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = "".join(lines)
    assert "mqtt.disconnected" in output
    assert wrong not in output
