"""A simulated Modbus RTU I/O module for the gate (PROTOCOLS.md §4): beams in, coils out.

Owns a pymodbus RTU server — the same library the daemon's client uses, DESIGN.md §4 — on a
serial line of its own: a pseudo-terminal whose port side pymodbus opens as it would a real
RS-485 adapter. Hosts reach that line through endpoints (a pty of their own, or TCP), each a
"cable" that carries their bytes to the module and its replies back, so a test can unplug
the cable while the module, and its coils, stay powered — as on a real gate. Beams are set
with :meth:`GateIoSimulator.set_beam`; coil writes are observed through
:meth:`GateIoSimulator.coils` and :meth:`GateIoSimulator.until_coils`.

Invariants:
- the discrete inputs and coils live in pymodbus's datastore; the simulator only sets
  inputs through the server's API and learns of coil writes from its access hook, so every
  reply on the wire is pymodbus's own;
- one host is on the line at a time (Modbus RTU has one master): a second cable waits
  until the first is unplugged;
- :attr:`GateIoSimulator.received` holds every byte hosts sent, in order — what the module
  saw on its line, for byte-exact checks against PROTOCOLS.md §4;
- ``async with`` starts the server and, on leaving, stops it and closes its line.
"""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.endpoints import (
    Changes,
    PtyEndpoint,
    TcpEndpoint,
    read_fd,
    write_fd,
)
from simulators.faults import Receive, Send

DEFAULT_INPUTS: Mapping[str, int] = {"A": 0, "B": 1, "loop": 2}
DEFAULT_COILS: Mapping[str, int] = {"barrier": 0, "green": 1, "red": 2, "buzzer": 3}
ADDRESSES = 16
"""Discrete inputs and coils the module has (addresses 0-15), like a common 16-channel module."""

_DISCRETE_INPUTS = 2  # Modbus function codes whose data the datastore keeps
_WRITE_COIL = 5
_WRITE_COILS = 15


class GateIoSimulator:
    """The module's state and its server; use as ``async with GateIoSimulator() as sim``."""

    def __init__(
        self,
        *,
        unit: int = 1,
        inputs: Mapping[str, int] = DEFAULT_INPUTS,
        coils: Mapping[str, int] = DEFAULT_COILS,
        baudrate: int = 9600,
    ) -> None:
        if not 1 <= unit <= 247:
            raise ValueError(f"a Modbus unit is 1-247, got {unit}")
        for kind, addresses in (("input", inputs), ("coil", coils)):
            if any(not 0 <= address < ADDRESSES for address in addresses.values()):
                raise ValueError(f"{kind} addresses must be 0-{ADDRESSES - 1}, got {addresses}")
        self._unit = unit
        self._inputs = dict(inputs)
        self._coil_names = dict(coils)
        self._baudrate = baudrate
        self._coil_states = [False] * ADDRESSES
        self._received = bytearray()
        self._corrupt_next = False
        self._changes = Changes()
        self._one_host = asyncio.Lock()
        self._server: ModbusSerialServer | None = None
        self._line = self._line_port = -1  # master and slave of the module's serial line
        self.coil_writes = 0
        """Write requests (FC 05 / 15) the module has carried out."""

    async def __aenter__(self) -> GateIoSimulator:
        # The module's side (slave) is opened by pymodbus by name. Holding a descriptor of it
        # too keeps the line up whenever pymodbus reopens it, as PtyEndpoint does for hosts.
        self._line, self._line_port = os.openpty()
        try:
            tty.setraw(self._line_port)
            os.set_blocking(self._line, False)
            port = os.ttyname(self._line_port)
        except BaseException:
            self._close_line()
            raise
        device = SimDevice(
            id=self._unit,
            simdata=(
                [SimData(0, count=ADDRESSES, values=False, datatype=DataType.BITS)],  # coils
                [SimData(0, count=ADDRESSES, values=False, datatype=DataType.BITS)],  # inputs
                [SimData(0, values=0, datatype=DataType.REGISTERS)],  # holding registers
                [SimData(0, values=0, datatype=DataType.REGISTERS)],  # input registers
            ),
            action=self._on_access,
        )
        server = ModbusSerialServer(
            device, framer=FramerType.RTU, port=port, baudrate=self._baudrate
        )
        try:
            await server.serve_forever(background=True)
        except BaseException:
            self._close_line()
            raise
        self._server = server
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]  # unannotated in 3.16
            self._server = None
        self._close_line()

    @property
    def received(self) -> bytes:
        """Every byte hosts have sent to the module, in order."""
        return bytes(self._received)

    def coils(self) -> dict[str, bool]:
        """The named coils' states, e.g. ``{"barrier": True, "green": True, ...}``."""
        return {name: self._coil_states[address] for name, address in self._coil_names.items()}

    async def until_coils(self, **expected: bool) -> None:
        """Return once every named coil is as given, e.g. ``until_coils(barrier=True)``."""
        unknown = set(expected) - set(self._coil_names)
        if unknown:
            raise ValueError(f"no coil named {', '.join(sorted(unknown))}")
        await self.until(lambda: all(self.coils()[name] == on for name, on in expected.items()))

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds; it is checked after every coil write."""
        await self._changes.until(condition)

    async def set_beam(self, name: str, broken: bool) -> None:
        """Set the discrete input wired to beam ``name`` (``A``, ``B``, ``loop``)."""
        if name not in self._inputs:
            raise ValueError(f"no input named {name!r} (inputs: {', '.join(self._inputs)})")
        await self._require_server().async_setValues(
            self._unit, _DISCRETE_INPUTS, self._inputs[name], [broken]
        )

    def corrupt_next_reply(self) -> None:
        """Flip a bit of the module's next reply on its way to the host, as RS-485 noise
        would: its CRC fails, so the host must discard it and ask again."""
        self._corrupt_next = True

    async def converse(self, receive: Receive, send: Send) -> None:
        """Carry one host's bytes to the module and its replies back, until the host goes."""
        async with self._one_host, asyncio.TaskGroup() as cable:
            replies = cable.create_task(self._carry_replies(send), name="gate-io-sim-replies")
            try:
                while data := await receive():
                    self._received += data
                    await write_fd(self._line, data)
            except OSError:
                pass  # the module was switched off (its line closed): the cable goes dead
            replies.cancel()

    def open_pty(self, link: Path | None = None) -> PtyEndpoint:
        """A cable ending in a new pseudo-terminal (published at ``link`` if given).

        For faults, serve :meth:`converse` through :class:`simulators.faults.FaultLayer`.
        """
        self._require_server()
        return PtyEndpoint(self.converse, link)

    async def open_tcp(self, host: str = "127.0.0.1", port: int = 0) -> TcpEndpoint:
        """A cable ending in a TCP listener on ``host:port`` (0 = any free port)."""
        self._require_server()
        return await TcpEndpoint.listen(self.converse, host, port)

    async def _carry_replies(self, send: Send) -> None:
        while True:
            try:
                data = await read_fd(self._line)
            except OSError:
                return  # the module was switched off
            if self._corrupt_next:
                self._corrupt_next = False
                data = data[:-1] + bytes((data[-1] ^ 0x01,))
            await send(data)

    async def _on_access(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus's hook, called before every access it has validated (SimDevice.action)."""
        if values is not None and function_code in (_WRITE_COIL, _WRITE_COILS):
            for offset, value in enumerate(values):
                self._coil_states[address + offset] = bool(value)
            self.coil_writes += 1
            self._changes.notify()
        return None

    def _require_server(self) -> ModbusSerialServer:
        if self._server is None:
            raise RuntimeError("the module is not running: use `async with GateIoSimulator()`")
        return self._server

    def _close_line(self) -> None:
        for fd in (self._line, self._line_port):
            if fd >= 0:
                os.close(fd)
        self._line = self._line_port = -1
