"""Which session drives the gate's outputs when several devices could (build_actuator)."""

from __future__ import annotations

from edgegate.config import GateIoReaderConfig, LcusReaderConfig, R2000ReaderConfig
from edgegate.devices.factory import build_actuator, build_sessions
from edgegate.devices.gateio import GateIoSession
from edgegate.devices.lcus import LcusSession
from edgegate.gate.model import Observation

RFID = R2000ReaderConfig(name="rfid-1", kind="r2000", url="/dev/ttyUSB0")
IO = GateIoReaderConfig(name="io-1", kind="gate-io", url="/dev/ttyUSB1")
IO_2 = GateIoReaderConfig(name="io-2", kind="gate-io", url="/dev/ttyUSB2")
RELAYS = LcusReaderConfig(name="relay-1", kind="lcus", url="/dev/ttyUSB3", barrier=1)


def ignore(observation: Observation) -> None:
    pass


def test_a_gate_without_outputs_has_no_actuator() -> None:
    assert build_actuator(build_sessions([RFID], ignore)) is None


def test_a_gate_io_module_drives_the_outputs_when_it_is_the_only_one() -> None:
    actuator = build_actuator(build_sessions([RFID, IO], ignore))

    assert isinstance(actuator, GateIoSession)
    assert actuator.name == "io-1"


def test_a_relay_board_drives_the_outputs_beside_a_gate_io_module() -> None:
    for readers in ([IO, RELAYS], [RELAYS, IO]):
        actuator = build_actuator(build_sessions(readers, ignore))

        assert isinstance(actuator, LcusSession)


def test_of_two_gate_io_modules_the_first_configured_drives_the_outputs() -> None:
    actuator = build_actuator(build_sessions([IO_2, IO], ignore))

    assert isinstance(actuator, GateIoSession)
    assert actuator.name == "io-2"
