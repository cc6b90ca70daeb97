"""What the gate shows after a decision (pure plans) and the driver that runs them."""

from __future__ import annotations

import asyncio

from edgegate.devices.actions import GateDriver
from edgegate.gate.actions import (
    DARK,
    ActionSettings,
    plan_for_decision,
    plan_for_passage_end,
    plan_for_release,
)
from edgegate.gate.model import GateOutputs, Verdict

BARRIER = ActionSettings(barrier_mode=True, buzzer_s=1.5, show_s=5.0)
PORTAL = ActionSettings(barrier_mode=False, buzzer_s=1.5, show_s=5.0)


def states(plan: tuple[object, ...]) -> list[tuple[float, GateOutputs]]:
    return [(step.delay_s, step.outputs) for step in plan]  # type: ignore[attr-defined]


def test_a_pass_opens_the_barrier_with_green_until_the_passage_ends() -> None:
    assert states(plan_for_decision(Verdict.PASS, BARRIER)) == [
        (0.0, GateOutputs(barrier_open=True, green=True))
    ]
    assert states(plan_for_passage_end()) == [(0.0, DARK)]


def test_a_hold_never_opens_the_barrier_and_buzzes_briefly() -> None:
    plan = states(plan_for_decision(Verdict.HOLD, BARRIER))
    assert plan == [(0.0, GateOutputs(red=True, buzzer=True)), (1.5, GateOutputs(red=True))]
    assert not any(outputs.barrier_open for _, outputs in plan)


def test_portal_shows_green_or_red_for_a_while_and_never_moves_a_barrier() -> None:
    assert states(plan_for_decision(Verdict.PASS, PORTAL)) == [
        (0.0, GateOutputs(green=True)),
        (5.0, DARK),
    ]
    hold = states(plan_for_decision(Verdict.HOLD, PORTAL))
    assert hold[-1] == (5.0, DARK)
    assert not any(outputs.barrier_open for _, outputs in hold)


def test_a_release_proceeds_as_a_pass() -> None:
    assert plan_for_release(BARRIER) == plan_for_decision(Verdict.PASS, BARRIER)


class Recorder:
    def __init__(self) -> None:
        self.applied: list[GateOutputs] = []
        self.changed = asyncio.Event()

    async def apply(self, outputs: GateOutputs) -> None:
        self.applied.append(outputs)
        self.changed.set()


async def test_the_driver_applies_steps_in_order_and_a_new_plan_supersedes_the_old() -> None:
    actuator = Recorder()
    driver = GateDriver(actuator)
    quick = ActionSettings(barrier_mode=False, buzzer_s=0.05, show_s=30.0)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(driver.run())
        driver.follow(plan_for_decision(Verdict.HOLD, quick))
        async with asyncio.timeout(5):
            while len(actuator.applied) < 2:
                actuator.changed.clear()
                await actuator.changed.wait()
        # The hold's "dark after 30 s" step must never run once a pass replaces the plan.
        driver.follow(plan_for_decision(Verdict.PASS, quick))
        async with asyncio.timeout(5):
            while len(actuator.applied) < 3:
                actuator.changed.clear()
                await actuator.changed.wait()
        task.cancel()
    assert actuator.applied == [
        GateOutputs(red=True, buzzer=True),
        GateOutputs(red=True),
        GateOutputs(green=True),
    ]


async def test_an_actuator_fault_is_counted_and_the_driver_keeps_going() -> None:
    class Broken:
        async def apply(self, outputs: GateOutputs) -> None:
            raise OSError("Modbus timeout")

    driver = GateDriver(Broken())
    async with asyncio.TaskGroup() as group:
        task = group.create_task(driver.run())
        for attempt in (1, 2):
            driver.follow(plan_for_passage_end())
            async with asyncio.timeout(5):
                while driver.failures < attempt:
                    await asyncio.sleep(0.01)
        task.cancel()
    assert driver.applied == 0
