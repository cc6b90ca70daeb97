"""The tracker loop's deadline timer (edgegate.app.DeadlineTicks), on a real event loop."""

from __future__ import annotations

import asyncio
import time

from edgegate.app import DeadlineTicks, Tick

LATER_S = 0.05


async def test_a_tick_comes_when_its_deadline_is_due() -> None:
    queue: asyncio.Queue[Tick] = asyncio.Queue()
    ticks = DeadlineTicks(queue.put_nowait, time.monotonic)

    ticks.arm(time.monotonic() + LATER_S)
    tick = await queue.get()
    ticks.received(tick)

    assert queue.empty()


async def test_a_deadline_that_does_not_move_keeps_its_one_timer() -> None:
    queue: asyncio.Queue[Tick] = asyncio.Queue()
    ticks = DeadlineTicks(queue.put_nowait, time.monotonic)
    deadline = time.monotonic() + LATER_S

    for _ in range(100):
        ticks.arm(deadline)
    ticks.received(await queue.get())
    await asyncio.sleep(2 * LATER_S)

    assert queue.empty()


async def test_a_stale_tick_leaves_exactly_one_timer_running() -> None:
    queue: asyncio.Queue[Tick] = asyncio.Queue()
    ticks = DeadlineTicks(queue.put_nowait, time.monotonic)
    now = time.monotonic()
    ticks.arm(now)
    stale = await queue.get()  # fired and queued ...
    ticks.arm(now + LATER_S)  # ... but the deadline moved before the tick was read
    ticks.received(stale)
    ticks.arm(now + LATER_S)  # the loop arms again with the same deadline

    current = await queue.get()
    ticks.received(current)
    ticks.arm(None)
    await asyncio.sleep(2 * LATER_S)

    assert current is not stale
    assert queue.empty()  # no second timer was left running


async def test_cancel_stops_the_pending_tick() -> None:
    queue: asyncio.Queue[Tick] = asyncio.Queue()
    ticks = DeadlineTicks(queue.put_nowait, time.monotonic)

    ticks.arm(time.monotonic() + LATER_S)
    ticks.cancel()
    await asyncio.sleep(2 * LATER_S)

    assert queue.empty()
