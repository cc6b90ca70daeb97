"""Fixtures for the system tests: a simulated reader on a pty, a gate config with an imported
whitelist, and the daemon running as a process on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgegate.localbroker import LocalBroker
from simulators.endpoints import PtyEndpoint
from simulators.r2000 import R2000Simulator

from .support import import_whitelist, reap, start_daemon, write_bundle, write_config


@pytest.fixture
async def reader() -> AsyncIterator[tuple[R2000Simulator, PtyEndpoint]]:
    simulator = R2000Simulator()
    endpoint = simulator.open_pty()
    task = asyncio.create_task(endpoint.run(), name="r2000-simulator")
    yield simulator, endpoint
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def gate_config(
    tmp_path: Path, broker: LocalBroker, reader: tuple[R2000Simulator, PtyEndpoint]
) -> Path:
    key = write_bundle(tmp_path / "snapshot.bundle")
    config = tmp_path / "edgegate.toml"
    write_config(config, tmp_path / "state", broker, reader[1].path, key)
    import_whitelist(tmp_path / "snapshot.bundle", config)
    return config


@pytest.fixture
async def daemon(gate_config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await start_daemon(gate_config)
    yield process
    await reap(process)
