"""Which session runs which configured device: one place that maps a reader kind to code.

Owns the mapping from ``[[readers]]`` entries to device sessions. Invariant: every configured
reader gets exactly one session, or the daemon refuses to start with a one-line reason —
a gate must never run with a device silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from edgegate.config import (
    GateIoReaderConfig,
    LcusReaderConfig,
    R2000ReaderConfig,
    ReaderConfig,
    ScannerReaderConfig,
    ThingMagicReaderConfig,
)
from edgegate.devices.base import Actuator, DeviceSession
from edgegate.devices.gateio import GateIoSession
from edgegate.devices.hid import HID_URL_PREFIX, HidScannerSession
from edgegate.devices.lcus import LcusSession
from edgegate.devices.r2000 import R2000Session
from edgegate.devices.scanner import ScannerSession
from edgegate.devices.thingmagic import ThingMagicSession
from edgegate.gate.model import Observation

log = structlog.get_logger(__name__)


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
            case ThingMagicReaderConfig():
                sessions.append(ThingMagicSession(reader, emit))
            case ScannerReaderConfig() if reader.url.startswith(HID_URL_PREFIX):
                sessions.append(HidScannerSession(reader, emit))
            case ScannerReaderConfig():
                sessions.append(ScannerSession(reader, emit))
            case GateIoReaderConfig():
                sessions.append(GateIoSession(reader, emit))
            case LcusReaderConfig():
                sessions.append(LcusSession(reader, emit))
            case _:
                raise UnsupportedDeviceError(
                    f"reader {reader.name!r}: kind {reader.kind!r} is not supported yet"
                )
    return sessions


def build_actuator(sessions: Sequence[DeviceSession]) -> Actuator | None:
    """The session that drives the gate's outputs (barrier, lights, buzzer), if any.

    An LCUS relay board, when one is configured, drives them: a relay board is there for
    nothing else, so a gate-io module beside it is wired for its inputs (beams, loop) only —
    and stays read-only, since a gate-io session writes no coil before its first
    ``apply()``. Otherwise the first configured session that can actuate (a gate-io
    module) drives them. Any other actuator is left undriven, and said so in the log.
    """
    actuators = [s for s in sessions if isinstance(s, Actuator)]
    if not actuators:
        return None
    chosen = next((s for s in actuators if isinstance(s, LcusSession)), actuators[0])
    inputs_only = isinstance(chosen, LcusSession)
    idle = [
        s.name
        for s in actuators
        if s is not chosen and not (inputs_only and isinstance(s, GateIoSession))
    ]
    if idle:
        log.warning("gate.actuators_idle", actuator=chosen.name, idle=idle)
    return chosen
