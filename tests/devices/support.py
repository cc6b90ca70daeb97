"""Helpers for tests that run device sessions and simulators as real asyncio tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from edgegate.devices.link import Backoff
from edgegate.gate.model import Observation, ReaderDown, ReaderUp, TagSeen


class Background:
    """Coroutines running for one test: cancelled, awaited and checked for crashes at its end."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._tasks.append(task)
        return task

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for outcome in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                raise outcome


class CountingBackoff(Backoff):
    """No waiting between attempts, and a count of them, so tests wait on attempts, not time."""

    def __init__(self) -> None:
        super().__init__(0.2, 5.0, random_fraction=lambda: 0.0)
        self.attempts = 0

    def next_delay(self) -> float:
        self.attempts += 1
        return super().next_delay()


class Observations(list[Observation]):
    def tags(self) -> list[TagSeen]:
        return [o for o in self if isinstance(o, TagSeen)]

    def links(self) -> list[ReaderUp | ReaderDown]:
        return [o for o in self if isinstance(o, ReaderUp | ReaderDown)]

    def downs(self) -> list[ReaderDown]:
        return [o for o in self if isinstance(o, ReaderDown)]

    def epcs_by_antenna(self) -> set[tuple[str, int]]:
        return {(t.epc, t.antenna) for t in self.tags()}


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``condition`` (plain state that signals nothing) until it holds, or fail."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)
