"""The seams between device sessions and the rest of the daemon.

Owns the :class:`DeviceSession` and :class:`Actuator` protocols and the health snapshot every
session reports. Invariants: a session's ``run()`` runs until cancelled, never raises for a
device fault (it reports ReaderDown and reconnects), and is safe to cancel at any await; an
actuator's ``apply()`` is idempotent — applying the same outputs twice changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from edgegate.gate.model import GateOutputs


@dataclass(frozen=True, slots=True)
class DeviceStats:
    """One device's health (DESIGN.md §9 ``health``: connected, frames, errors, last_seen)."""

    connected: bool
    frames: int
    checksum_errors: int
    malformed: int
    resyncs: int
    last_seen_mono_s: float | None
    antenna_faults: int = 0
    """Antenna faults the device reported (e.g. R2000 status 22, antenna missing)."""
    faulty_antennas: tuple[int, ...] = ()
    """1-based ports whose last inventory faulted, in ascending order."""
    firmware: str | None = None
    """The firmware version the device reported on its last connect, if it tells one."""


class DeviceSession(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def stats(self) -> DeviceStats: ...

    async def run(self) -> None: ...


@runtime_checkable
class Actuator(Protocol):
    """Drives the gate's outputs (barrier, lights, buzzer)."""

    async def apply(self, outputs: GateOutputs) -> None: ...
