"""Which session runs which configured device: one place that maps a reader kind to code.

Owns the mapping from ``[[readers]]`` entries to device sessions. Invariant: every configured
reader gets exactly one session, or the daemon refuses to start with a one-line reason —
a gate must never run with a device silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edgegate.config import R2000ReaderConfig, ReaderConfig
from edgegate.devices.base import Actuator, DeviceSession
from edgegate.devices.r2000 import R2000Session
from edgegate.gate.model import Observation


class UnsupportedDeviceError(Exception):
    """A configured reader kind has no session yet."""


def build_sessions(
    readers: Sequence[ReaderConfig], emit: Callable[[Observation], None]
) -> list[DeviceSession]:
    sessions: list[DeviceSession] = []
    for reader in readers:
        match reader:
            case R2000ReaderConfig():
                sessions.append(R2000Session(reader, emit))
            case _:
                raise UnsupportedDeviceError(
                    f"reader {reader.name!r}: kind {reader.kind!r} is not supported yet"
                )
    return sessions


def build_actuator(sessions: Sequence[DeviceSession]) -> Actuator | None:
    """The session that drives the gate's outputs: the first configured actuator, if any."""
    return next((s for s in sessions if isinstance(s, Actuator)), None)
