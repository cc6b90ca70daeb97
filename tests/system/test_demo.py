"""`edgegate demo` as a new user runs it: the whole script, and Ctrl-C in the middle."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator

import pytest

pytestmark = pytest.mark.system

RUN_S = 120.0


@pytest.fixture
async def demo() -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgegate",
        "demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    yield process
    if process.returncode is None:
        process.kill()
        await process.wait()


async def test_the_demo_runs_every_scenario_and_every_decision_is_as_expected(
    demo: asyncio.subprocess.Process,
) -> None:
    async with asyncio.timeout(RUN_S):
        stdout, stderr = await demo.communicate()
    output = stdout.decode()
    assert demo.returncode == 0, output + stderr.decode()
    assert "every decision as expected" in output
    assert output.count("PASS  seq") == 3
    assert output.count("HOLD  seq") == 5
    for reason in ("UNKNOWN_TAG", "STATUS_NOT_RELEASED", "SEIZED", "BLACKLISTED"):
        assert reason in output
    assert "RANDOM_INSPECTION" in output
    assert "Traceback" not in output + stderr.decode()


async def test_ctrl_c_after_the_first_decision_stops_the_demo_cleanly(
    demo: asyncio.subprocess.Process,
) -> None:
    assert demo.stdout is not None
    seen = []
    async with asyncio.timeout(RUN_S):
        while line := (await demo.stdout.readline()).decode():
            seen.append(line)
            if "PASS  seq 1" in line:
                break
        demo.send_signal(signal.SIGINT)
        rest, stderr = await demo.communicate()
    output = "".join(seen) + rest.decode()
    assert demo.returncode == 0, output + stderr.decode()
    assert "stopped" in output
    assert "every decision as expected" not in output
    assert "Traceback" not in output + stderr.decode()
