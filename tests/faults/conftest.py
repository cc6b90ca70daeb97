"""Fixtures for the fault tests: a simulated reader on a pty and the gate's files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulators.endpoints import PtyEndpoint
from simulators.r2000 import R2000Simulator

# A fault test that hangs fails within this, instead of stalling the suite.
TEST_BUDGET_S = 120.0


@pytest.fixture
async def reader() -> AsyncIterator[tuple[R2000Simulator, PtyEndpoint]]:
    simulator = R2000Simulator()
    endpoint = simulator.open_pty()
    task = asyncio.create_task(endpoint.run(), name="r2000-simulator")
    yield simulator, endpoint
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@dataclass(frozen=True)
class GateFiles:
    config: Path
    state_dir: Path
    log: Path


@pytest.fixture
def files(tmp_path: Path) -> GateFiles:
    return GateFiles(tmp_path / "edgegate.toml", tmp_path / "state", tmp_path / "daemon.log")
