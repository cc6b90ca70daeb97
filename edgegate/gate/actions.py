"""What the gate shows after a decision: a plan of output states over time.

Owns the mapping from decisions and passage ends to the barrier, the lights and the buzzer
(DESIGN.md §8). Pure: it returns plans — ``(delay_s, GateOutputs)`` steps — and the caller
runs them; a new plan replaces whatever is left of the previous one.

Invariants:
- the barrier opens only for a ``pass`` in barrier mode, and closes when the passage ends;
- a hold never opens the barrier; it shows red and sounds the buzzer for ``buzzer_s``;
- in portal mode there is no barrier: green for a pass, red plus buzzer for a hold, each
  shown for ``show_s``;
- every plan ends in a defined state (nothing is left to chance if the next event is late).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgegate.gate.model import GateOutputs, Verdict

DARK = GateOutputs()


@dataclass(frozen=True, slots=True)
class Step:
    delay_s: float
    outputs: GateOutputs


Plan = tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class ActionSettings:
    barrier_mode: bool
    buzzer_s: float = 1.5
    show_s: float = 5.0


def plan_for_decision(verdict: Verdict, settings: ActionSettings) -> Plan:
    if verdict is Verdict.PASS:
        if settings.barrier_mode:
            return (Step(0.0, GateOutputs(barrier_open=True, green=True)),)
        return (Step(0.0, GateOutputs(green=True)), Step(settings.show_s, DARK))
    alarm = (
        Step(0.0, GateOutputs(red=True, buzzer=True)),
        Step(settings.buzzer_s, GateOutputs(red=True)),
    )
    if settings.barrier_mode:
        return alarm  # red until the vehicle leaves (plan_for_passage_end) or is released
    return (*alarm, Step(settings.show_s, DARK))


def plan_for_release(settings: ActionSettings) -> Plan:
    """An officer released a held passage: it proceeds as a pass would."""
    return plan_for_decision(Verdict.PASS, settings)


def plan_for_passage_end() -> Plan:
    """The vehicle cleared both beams: close the barrier and go dark."""
    return (Step(0.0, DARK),)
