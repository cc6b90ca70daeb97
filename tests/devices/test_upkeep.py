"""push_back: a silence timeout never expires early, and is moved only when it must be."""

from __future__ import annotations

import asyncio

from edgegate.devices.upkeep import PUSH_BACK_SLACK, push_back


async def test_push_back_never_leaves_less_than_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    timeout_s = 10.0
    async with asyncio.timeout(timeout_s) as deadline:
        push_back(deadline, timeout_s)
        first = deadline.when()
        assert first is not None
        assert first >= loop.time() + timeout_s
        assert first <= loop.time() + timeout_s * (1 + PUSH_BACK_SLACK)
        # Still far enough away: left alone.
        await asyncio.sleep(0)
        push_back(deadline, timeout_s)
        assert deadline.when() == first


async def test_push_back_moves_a_timeout_that_has_come_closer() -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(0.01) as deadline:
        await asyncio.sleep(0.005)
        push_back(deadline, 0.05)
        when = deadline.when()
        assert when is not None
        assert when >= loop.time() + 0.05 - 0.001
        await asyncio.sleep(0.03)  # past the original deadline: not cancelled
