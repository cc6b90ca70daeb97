"""Scenarios: a TOML timeline that drives every simulated device of a gate together.

Owns the scenario format, the *rig* (one simulator per device, each on a pseudo-terminal
published at a stable link, so a daemon's config names fixed paths) and the player that
replays a timeline against the rig, so that whole passages replay exactly.

A scenario file::

    name = "normal inbound truck"
    mode = "barrier"                       # the gate mode it is written for
    [[devices]]                            # the simulated devices, by reader name
    name = "rfid-1"
    kind = "r2000"                         # r2000 | thingmagic | scanner | gate-io
    [[steps]]
    at = 0.0
    beam = "A"                             # beam A / B / loop breaks (broken = false clears)
    broken = true
    [[steps]]
    at = 0.2
    enter = ["3074257BF7194E4000001A85"]   # tags enter the field of a reader...
    reader = "rfid-1"
    antenna = 1
    rssi = -55
    [[steps]]
    at = 1.0
    scan = "HP4601202611250001"            # a code is scanned
    reader = "scan-1"
    [[steps]]
    at = 3.0
    leave = ["3074257BF7194E4000001A85"]   # ...and leave it
    [[steps]]
    at = 1.5
    unplug = "rfid-1"                      # a reader's cable is pulled (replug = "rfid-1")
    [expect]                               # what the gate must decide (checked by tests)
    decision = "pass"
    reasons = []
    barrier_opened = true

Invariants: steps run in time order (ties in file order); a scenario names only devices it
declares; the rig's device paths stay the same across an unplug and replug, like
``/dev/serial/by-id`` links; leaving the rig stops every simulator and removes its links.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simulators.endpoints import PtyEndpoint
from simulators.gateio import GateIoSimulator
from simulators.r2000 import R2000Simulator
from simulators.scanner import ScannerSimulator
from simulators.thingmagic import ThingMagicSimulator

SCENARIO_DIR = Path(__file__).parent / "scenarios"

Simulator = R2000Simulator | ThingMagicSimulator | ScannerSimulator | GateIoSimulator


class ScenarioError(Exception):
    """A scenario file that cannot be played, in one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Device(_Strict):
    name: str
    kind: Literal["r2000", "thingmagic", "scanner", "gate-io"]


class Step(_Strict):
    at: float = Field(ge=0)
    beam: Literal["A", "B", "loop"] | None = None
    broken: bool = True
    enter: tuple[str, ...] = ()
    leave: tuple[str, ...] = ()
    reader: str | None = None
    antenna: int = Field(default=1, ge=1, le=8)
    rssi: int = Field(default=-55, ge=-128, le=0)
    tid: str | None = None
    scan: str | None = None
    unplug: str | None = None
    replug: str | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Self:
        actions = [
            self.beam,
            self.enter or None,
            self.leave or None,
            self.scan,
            self.unplug,
            self.replug,
        ]
        if sum(a is not None for a in actions) != 1:
            raise ValueError(
                "each step does exactly one of beam, enter, leave, scan, unplug, replug"
            )
        if (self.enter or self.leave or self.scan) and self.reader is None:
            raise ValueError("enter, leave and scan need the reader they happen at")
        return self


class Expect(_Strict):
    decision: Literal["pass", "hold"]
    reasons: tuple[str, ...] = ()
    barrier_opened: bool | None = None


class Scenario(_Strict):
    name: str
    description: str = ""
    mode: Literal["barrier", "portal"] = "barrier"
    direction: Literal["auto", "in", "out"] = "auto"
    devices: tuple[Device, ...]
    steps: tuple[Step, ...]
    expect: Expect | None = None

    @model_validator(mode="after")
    def _devices_exist(self) -> Self:
        names = {device.name for device in self.devices}
        for step in self.steps:
            for name in (step.reader, step.unplug, step.replug):
                if name is not None and name not in names:
                    raise ValueError(f"step at {step.at} s names undeclared device {name!r}")
        return self

    @property
    def duration_s(self) -> float:
        return max((step.at for step in self.steps), default=0.0)


def load_scenario(path: Path) -> Scenario:
    try:
        return Scenario.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ScenarioError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: TOML syntax error: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ScenarioError(f"{path}: {where}: {first['msg']}") from None


def shipped_scenarios() -> dict[str, Path]:
    """The scenarios that ship with edgegate, by file stem."""
    return {path.stem: path for path in sorted(SCENARIO_DIR.glob("*.toml"))}


class Rig:
    """One simulator per device of a scenario, each reachable at a stable path."""

    def __init__(self, devices: tuple[Device, ...]) -> None:
        self._devices = {device.name: device for device in devices}
        self._dir = Path(tempfile.mkdtemp(prefix="edgegate-rig-"))
        self.simulators: dict[str, Simulator] = {}
        self._plugs: dict[str, asyncio.Task[None]] = {}
        self._group = asyncio.TaskGroup()
        self._stack = contextlib.AsyncExitStack()

    def url(self, name: str) -> str:
        return str(self._dir / name)

    def reader_configs(self) -> list[dict[str, object]]:
        """``[[readers]]`` entries for a daemon config that reaches this rig."""
        return [{"name": n, "kind": d.kind, "url": self.url(n)} for n, d in self._devices.items()]

    async def __aenter__(self) -> Self:
        await self._stack.enter_async_context(self._group)
        for name, device in self._devices.items():
            simulator = await self._make(device)
            self.simulators[name] = simulator
            self.replug(name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for task in self._plugs.values():
            task.cancel()
        try:
            await self._stack.__aexit__(exc_type, exc, traceback)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def _make(self, device: Device) -> Simulator:
        match device.kind:
            case "r2000":
                return R2000Simulator()
            case "thingmagic":
                return ThingMagicSimulator()
            case "scanner":
                return ScannerSimulator()
            case "gate-io":
                return await self._stack.enter_async_context(GateIoSimulator())

    def unplug(self, name: str) -> None:
        """Pull the cable: the host reads EIO and the path disappears."""
        task = self._plugs.pop(name, None)
        if task is not None:
            task.cancel()

    def replug(self, name: str) -> None:
        """Plug the device back in at the same path (a new pty behind the same link)."""
        self.unplug(name)
        simulator = self.simulators[name]
        endpoint = (
            simulator.open_pty(self._dir / name)
            if isinstance(simulator, GateIoSimulator)
            else PtyEndpoint(simulator.converse, self._dir / name)
        )
        self._plugs[name] = self._group.create_task(endpoint.run(), name=f"sim-{name}")


async def play(scenario: Scenario, rig: Rig, speed: float = 1.0) -> None:
    """Run the timeline against the rig; returns after the last step."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for step in sorted(scenario.steps, key=lambda s: s.at):
        delay = start + step.at / speed - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await _apply(step, rig)


async def _apply(step: Step, rig: Rig) -> None:
    if step.unplug is not None:
        rig.unplug(step.unplug)
        return
    if step.replug is not None:
        rig.replug(step.replug)
        return
    if step.beam is not None:
        io = _only(rig.simulators, GateIoSimulator, "a beam step needs a gate-io device")
        await io.set_beam(step.beam, step.broken)
        return
    assert step.reader is not None
    simulator = rig.simulators[step.reader]
    if step.scan is not None:
        if not isinstance(simulator, ScannerSimulator):
            raise ScenarioError(f"{step.reader} is not a scanner")
        simulator.scan(step.scan)
        return
    if not isinstance(simulator, R2000Simulator | ThingMagicSimulator):
        raise ScenarioError(f"{step.reader} is not an RFID reader")
    for epc in step.enter:
        if isinstance(simulator, ThingMagicSimulator):
            simulator.add_tag(epc, antenna_port=step.antenna, rssi_dbm=step.rssi, tid=step.tid)
        else:
            simulator.add_tag(epc, antenna_port=step.antenna, rssi_dbm=step.rssi)
    for epc in step.leave:
        simulator.remove_tag(epc)


def _only(
    simulators: Mapping[str, Simulator], kind: type[GateIoSimulator], why: str
) -> GateIoSimulator:
    found = [s for s in simulators.values() if isinstance(s, kind)]
    if len(found) != 1:
        raise ScenarioError(why)
    return found[0]
