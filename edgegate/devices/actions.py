"""Runs the gate's output plans on the actuator, one plan at a time.

Owns the timing of gate outputs: :meth:`GateDriver.follow` replaces the current plan (the
rest of a superseded plan is never executed), and :meth:`GateDriver.run` applies each step
at its time. Without an actuator (a portal with no I/O module) plans are only logged.

Invariants: steps apply in order with their delays measured from the plan's start; an
actuator fault is logged and counted and never stops the driver — the next plan retries.
"""

from __future__ import annotations

import asyncio

import structlog

from edgegate.devices.base import Actuator
from edgegate.gate.actions import Plan
from edgegate.gate.model import GateOutputs

log = structlog.get_logger(__name__)


class GateDriver:
    def __init__(self, actuator: Actuator | None) -> None:
        self._actuator = actuator
        self._plans: asyncio.Queue[Plan] = asyncio.Queue()
        self.applied = 0
        self.failures = 0

    def follow(self, plan: Plan) -> None:
        self._plans.put_nowait(plan)

    def use(self, actuator: Actuator | None) -> None:
        """Drive ``actuator`` from the next step on (its reader was reloaded)."""
        self._actuator = actuator

    async def run(self) -> None:
        plan: Plan | None = None
        while True:
            plan = plan if plan is not None else await self._plans.get()
            plan = await self._execute(plan)

    async def _execute(self, plan: Plan) -> Plan | None:
        """Run ``plan``; return a newer plan that interrupted it, if any."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        for step in plan:
            wait_s = started + step.delay_s - loop.time()
            if wait_s > 0:
                try:
                    async with asyncio.timeout(wait_s):
                        return await self._plans.get()
                except TimeoutError:
                    pass
            elif not self._plans.empty():
                return self._plans.get_nowait()
            await self._apply(step.outputs)
        return None

    async def _apply(self, outputs: GateOutputs) -> None:
        if self._actuator is None:
            log.debug("gate.outputs", outputs=outputs)
            return
        try:
            await self._actuator.apply(outputs)
        except Exception as exc:
            self.failures += 1
            log.error("gate.actuator_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self.applied += 1
