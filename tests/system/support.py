"""Shared set-up for the system tests: a signed whitelist, a config file, the daemon as a real
process, and reading what it publishes as a back-office subscriber would.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

from edgegate.localbroker import LocalBroker
from edgegate.mqtt.topics import Topics
from edgegate.whitelist.bundle import (
    TrustedKeys,
    generate_keypair,
    load_private_key,
    sign_body,
    verify_bundle,
)
from edgegate.whitelist.store import WhitelistStore
from simulators.r2000 import R2000Simulator

SITE, GATE = "HAK-CBZ", "SYS01"
TOPICS = Topics("edgegate/v1", SITE, GATE)
KNOWN = ["3074257BF7194E4000001A85", "3074257BF7194E4000001A86"]
STRANGER = "E2003412DEADBEEF00000001"
WAIT_S = 30.0


def edgegate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgegate", *args], capture_output=True, text=True, timeout=60
    )


def write_bundle(path: Path) -> str:
    """A signed snapshot knowing the two KNOWN items; returns the trusted public key."""
    private_b64, public_b64 = generate_keypair()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    records = [
        {
            "type": "item",
            "epc": epc,
            "sku": "SKU-LANCOME-50ML",
            "owner": "91460000MA5T000001",
            "status": "bonded",
            "directions": ["in", "out"],
            "destinations": [],
        }
        for epc in KNOWN
    ]
    header = {
        "format": "edgegate.whitelist",
        "version": 1,
        "kind": "snapshot",
        "site": SITE,
        "seq": 3,
        "issued_at": now,
        "issuer": "system test",
        "count": len(records),
    }
    body = "\n".join(json.dumps(line) for line in [header, *records]).encode()
    path.write_bytes(sign_body(body, load_private_key(private_b64)))
    return public_b64


def install_snapshot(
    state_dir: Path, records: Sequence[Mapping[str, object]], *, issued_at: datetime
) -> str:
    """Sign ``records`` as a snapshot (seq 1) and apply it to the store in ``state_dir``, as
    the daemon would have; returns the trusted public key."""
    private_b64, public_b64 = generate_keypair()
    header = {
        "format": "edgegate.whitelist",
        "version": 1,
        "kind": "snapshot",
        "site": SITE,
        "seq": 1,
        "issued_at": issued_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "issuer": "system test",
        "count": len(records),
    }
    body = "\n".join(json.dumps(r, ensure_ascii=False) for r in [header, *records]).encode()
    bundle = sign_body(body, load_private_key(private_b64))
    with WhitelistStore.open(state_dir) as store:
        store.apply(
            verify_bundle(bundle, TrustedKeys.from_base64([public_b64])),
            site=SITE,
            sha256=hashlib.sha256(bundle).hexdigest(),
            now=issued_at,
        )
    return public_b64


def write_config(
    path: Path,
    state_dir: Path,
    broker: LocalBroker,
    port: str,
    key: str,
    *,
    gate: str = GATE,
    stable_set_ms: int = 500,
    trusted_keys: tuple[str, ...] = (),
    more_readers: tuple[str, ...] = (),
) -> None:
    """A portal config with an R2000 reader ``rfid-1`` on ``port`` (and one more named
    ``rfid-<n>`` on each of ``more_readers``), trusting ``key`` and ``trusted_keys``."""
    keys = ", ".join(f'"{k}"' for k in (key, *trusted_keys))
    readers = "".join(
        f'[[readers]]\nname = "rfid-{n}"\nkind = "r2000"\nurl = "{url}"\nantennas = [1]\n'
        for n, url in enumerate((port, *more_readers), start=1)
    )
    path.write_text(
        f"""
[gate]
site = "{SITE}"
gate_id = "{gate}"
mode = "portal"
direction = "in"

[mqtt]
host = "{broker.host}"
port = {broker.port}
keepalive_s = 5

[storage]
state_dir = "{state_dir}"

[whitelist]
trusted_keys = [{keys}]

[passage]
stable_set_ms = {stable_set_ms}
depart_ms = 800

{readers}""",
        encoding="utf-8",
    )


def import_whitelist(bundle: Path, config: Path) -> None:
    imported = edgegate("whitelist", "import", str(bundle), "--config", str(config))
    assert imported.returncode == 0, imported.stderr
    assert "seq 3" in imported.stdout


async def start_daemon(
    config: Path, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """``edgegate run --config CONFIG`` with stdout and stderr together on one pipe."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgegate",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


async def reap(process: asyncio.subprocess.Process) -> None:
    """Kill a daemon a test left running (a failed test must not leak processes)."""
    if process.returncode is None:
        process.kill()
        await process.wait()


async def next_json(messages: AsyncIterator[aiomqtt.Message], topic: str) -> dict[str, object]:
    async with asyncio.timeout(WAIT_S):
        async for message in messages:
            if str(message.topic) == topic:
                assert isinstance(message.payload, bytes)
                payload: dict[str, object] = json.loads(message.payload)
                return payload
    raise AssertionError("subscription ended")


async def status(
    messages: AsyncIterator[aiomqtt.Message], state: str, topics: Topics = TOPICS
) -> dict[str, object]:
    while True:
        payload = await next_json(messages, topics.status)
        if payload["state"] == state:
            return payload


async def pass_pallet(simulator: R2000Simulator, epcs: list[str]) -> None:
    for epc in epcs:
        simulator.add_tag(epc, antenna_port=1, rssi_dbm=-54)
    # Long enough for several inventory rounds; the passage closes after stable_set_ms.
    await asyncio.sleep(0.6)
    simulator.clear()


class NotifySocket:
    """Stands in for systemd's notification socket: a real AF_UNIX datagram socket that
    records every sd_notify message, parsed into its KEY=VALUE assignments."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def close(self) -> None:
        self._sock.close()

    async def expect(self, key: str, value: str = "1") -> dict[str, str]:
        """The next message (after those already returned) that assigns ``key=value``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(WAIT_S):
            while True:
                data = await loop.sock_recv(self._sock, 4096)
                message = dict(line.split("=", 1) for line in data.decode().split("\n"))
                self.messages.append(message)
                if message.get(key) == value:
                    return message


async def log_event(process: asyncio.subprocess.Process, event: str) -> dict[str, object]:
    """Read the daemon's JSON log lines until one with ``event``; returns that record."""
    assert process.stdout is not None
    async with asyncio.timeout(WAIT_S):
        while line := await process.stdout.readline():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                return record
    raise AssertionError(f"the daemon exited without logging {event}")
