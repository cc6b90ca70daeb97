"""The gate's I/O module over Modbus RTU: beams and loop in, barrier, lights and buzzer out.

Owns the conversation with one configured Modbus RTU I/O module (PROTOCOLS.md §4) through
pymodbus's async client: it polls the discrete inputs wired to beam A, beam B and the loop
detector, emits :class:`BeamChanged` on every change, and — as the gate's
:class:`~edgegate.devices.base.Actuator` — writes the coils of barrier, green, red and buzzer.
``socket://HOST:PORT`` reaches the module through a serial-to-Ethernet converter (RTU
framing over TCP); any other url is a serial port, opened exclusively.

Invariants:
- one request is on the bus at a time: coil writes and polls share this session's single
  loop, which owns the link (Modbus RTU has one master, and one request in flight);
- every configured input is read with one request (FC 02) spanning them, every
  ``poll_ms``; the state of every input is emitted once after each (re)connect — it may
  have changed while the link was down — and afterwards only changes;
- :meth:`GateIoSession.apply` never waits on the bus and never raises: it records the
  desired outputs and wakes the loop, which writes (FC 05) each coil whose state differs
  from the one last written on this link, before its next poll. After a reconnect nothing
  counts as written, so every coil is written again (the module may have lost power).
  No coil is ever written before the first ``apply()``: a module that is not the gate's
  actuator (see :func:`edgegate.devices.factory.build_actuator`) is only read;
- ReaderUp when a fresh link's first poll is answered; ReaderDown once per outage: a failed
  open, the link lost (serial error such as EIO on unplug, or EOF) — noticed at once, not
  at the next timeout — a request unanswered after one retry, or an exception reply;
- the client is closed before the session reconnects or ends, cancellation included.

Health counters (:attr:`GateIoSession.stats`): ``frames`` are valid replies;
``checksum_errors`` are replies that never arrived intact — pymodbus's RTU framer silently
drops a reply whose CRC fails, so a corrupted reply and a missing one look the same here,
and both are counted, retries included; ``malformed`` are exception replies and replies of
the wrong shape; ``resyncs`` stays 0 (the framer's hunting is not observable).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import structlog
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from edgegate.config import GateIoReaderConfig
from edgegate.devices.base import DeviceStats
from edgegate.devices.link import SOCKET_SCHEME, Backoff
from edgegate.devices.recorder import FlightRecorder
from edgegate.devices.upkeep import Liveness
from edgegate.gate.model import BeamChanged, GateOutputs, Observation

BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0
_T = TypeVar("_T")
# One lost reply on a noisy RS-485 line is retried before the module is declared down.
_RETRIES = 1

log = structlog.get_logger(__name__)


class _IoError(Exception):
    """The module's inputs cannot be trusted, or its outputs not driven; the message says why."""


class GateIoSession:
    """Runs one I/O module until cancelled; emits observations, drives outputs on ``apply``."""

    def __init__(
        self,
        config: GateIoReaderConfig,
        emit: Callable[[Observation], None],
        clock: Callable[[], float] = time.monotonic,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self._config = config
        self._emit = emit
        self._clock = clock
        self._backoff = backoff or Backoff(BACKOFF_BASE_S, BACKOFF_CAP_S)
        self._liveness = Liveness(config.name, config.url, emit, clock)
        self._inputs = {"A": config.beam_a, "B": config.beam_b}
        if config.loop is not None:
            self._inputs["loop"] = config.loop
        self._first_input = min(self._inputs.values())
        self._input_count = max(self._inputs.values()) - self._first_input + 1
        self._desired: GateOutputs | None = None
        self._outputs_changed = asyncio.Event()
        self._frames = self._lost_replies = self._bad_replies = 0
        self._last_seen_mono_s: float | None = None

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def stats(self) -> DeviceStats:
        return DeviceStats(
            connected=self._liveness.up,
            frames=self._frames,
            checksum_errors=self._lost_replies,
            malformed=self._bad_replies,
            resyncs=0,
            last_seen_mono_s=self._last_seen_mono_s,
        )

    async def apply(self, outputs: GateOutputs) -> None:
        """Make ``outputs`` the gate's desired state; the session writes it (idempotent)."""
        if outputs != self._desired:
            self._desired = outputs
            self._outputs_changed.set()

    async def run(self) -> None:
        """Connect, poll and drive, and reconnect with backoff, forever (until cancelled)."""
        while True:
            try:
                await self._connect_and_poll()
            except _IoError as fault:
                self._liveness.report_down(str(fault))
            await asyncio.sleep(self._backoff.next_delay())

    async def _connect_and_poll(self) -> None:
        lost = asyncio.Event()

        def on_connection(up: bool) -> None:
            if not up:  # pymodbus saw its transport go: EIO on unplug, EOF, a reset
                lost.set()

        # pymodbus owns this transport, so the flight recorder taps its packet trace rather
        # than the stream: every frame the host writes (tx) and every chunk it reads (rx).
        recorder = (
            FlightRecorder(
                self._config.record, url=self._config.url, baudrate=self._config.baudrate
            )
            if self._config.record
            else None
        )

        def trace_packet(sending: bool, data: bytes) -> bytes:
            if recorder is not None:
                recorder.record("tx" if sending else "rx", data)
            return data

        client = _client(self._config, on_connection, trace_packet)
        try:
            try:
                connected = await _cancellable(client.connect())
            except (OSError, ValueError) as exc:  # e.g. a baud rate pyserial refuses
                raise _IoError(f"cannot open {self._config.url}: {exc}") from exc
            if not connected:
                # pymodbus logs the cause of a failed open; it does not return it.
                raise _IoError(f"cannot open {self._config.url}")
            if recorder is not None:
                recorder.start()
            try:
                async with asyncio.TaskGroup() as link:
                    link.create_task(self._poll(client), name=f"gate-io-{self.name}-poll")
                    link.create_task(_until_lost(lost), name=f"gate-io-{self.name}-link")
            except* _IoError as faults:
                raise faults.exceptions[0] from None
        finally:
            client.close()
            if recorder is not None:
                recorder.close()

    async def _poll(self, client: ModbusBaseClient) -> None:
        loop = asyncio.get_running_loop()
        poll_s = self._config.poll_ms / 1000
        written: dict[int, bool] = {}  # coil address -> state written on this link
        state = await self._read_inputs(client)
        self._liveness.report_up()
        self._backoff.reset()
        now = self._clock()
        for beam, broken in state.items():
            self._emit(BeamChanged(self.name, beam, broken, at_mono_s=now))
        next_poll = loop.time() + poll_s
        while True:
            self._outputs_changed.clear()
            await self._write_outputs(client, written)
            if loop.time() >= next_poll:
                current = await self._read_inputs(client)
                now = self._clock()
                for beam, broken in current.items():
                    if broken != state[beam]:
                        self._emit(BeamChanged(self.name, beam, broken, at_mono_s=now))
                state = current
                next_poll = loop.time() + poll_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(next_poll):
                    await self._outputs_changed.wait()

    async def _read_inputs(self, client: ModbusBaseClient) -> dict[str, bool]:
        first, count = self._first_input, self._input_count
        what = f"reading inputs {first}-{first + count - 1}"
        request = functools.partial(
            client.read_discrete_inputs, first, count=count, device_id=self._config.unit
        )
        reply = await self._transact(client, request, what)
        if len(reply.bits) < count:
            self._bad_replies += 1
            raise _IoError(f"{what}: {len(reply.bits)} bits in the reply")
        return {beam: bool(reply.bits[address - first]) for beam, address in self._inputs.items()}

    async def _write_outputs(self, client: ModbusBaseClient, written: dict[int, bool]) -> None:
        desired = self._desired
        if desired is None:
            return
        config = self._config
        coils = {
            config.barrier: desired.barrier_open,
            config.green: desired.green,
            config.red: desired.red,
            config.buzzer: desired.buzzer,
        }
        for address, on in coils.items():
            if written.get(address) == on:
                continue
            what = f"writing coil {address} {'on' if on else 'off'}"
            request = functools.partial(client.write_coil, address, on, device_id=config.unit)
            reply = await self._transact(client, request, what)
            # FC 05 is answered with an echo of the request (PROTOCOLS.md §4).
            if list(reply.bits[:1]) != [on]:
                self._bad_replies += 1
                raise _IoError(f"{what}: the module echoed {list(reply.bits)}")
            written[address] = on
            log.debug("gate_io.coil", reader=self.name, coil=address, on=on)

    async def _transact(
        self, client: ModbusBaseClient, request: Callable[[], Awaitable[ModbusPDU]], what: str
    ) -> ModbusPDU:
        if not client.connected:
            raise _IoError("link lost")
        try:
            reply = await _cancellable(request())
        except ModbusIOException as exc:
            self._lost_replies += _RETRIES + 1
            timeout_s = self._config.reply_timeout_s
            raise _IoError(f"no reply {what} within {timeout_s} s") from exc
        except ModbusException as exc:
            raise _IoError(f"{what}: {exc}") from exc
        self._lost_replies += reply.retries
        if reply.isError():
            self._bad_replies += 1
            raise _IoError(f"{what}: {_describe_exception(reply.exception_code)}")
        self._frames += 1
        self._last_seen_mono_s = self._clock()
        return reply


def _client(
    config: GateIoReaderConfig,
    on_connection: Callable[[bool], None],
    trace_packet: Callable[[bool, bytes], bytes],
) -> ModbusBaseClient:
    # reconnect_delay=0 turns pymodbus's own reconnecting off: the session reconnects, with
    # jittered backoff and ReaderDown / ReaderUp, like every other device.
    parts = urllib.parse.urlsplit(config.url)
    if parts.scheme != SOCKET_SCHEME:
        return AsyncModbusSerialClient(
            config.url,
            framer=FramerType.RTU,
            baudrate=config.baudrate,
            timeout=config.reply_timeout_s,
            retries=_RETRIES,
            reconnect_delay=0,
            trace_connect=on_connection,
            trace_packet=trace_packet,
        )
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path or parts.query or parts.fragment:
        raise _IoError(f"cannot open {config.url}: expected socket://HOST:PORT")
    return AsyncModbusTcpClient(
        parts.hostname,
        port=port,
        framer=FramerType.RTU,  # RTU frames (with CRC) over TCP, as converters pass them on
        timeout=config.reply_timeout_s,
        retries=_RETRIES,
        reconnect_delay=0,
        trace_connect=on_connection,
        trace_packet=trace_packet,
    )


async def _cancellable(awaitable: Awaitable[_T]) -> _T:
    """Await a pymodbus call, re-raising a cancellation that pymodbus lost.

    pymodbus awaits its transport and every reply with ``asyncio.wait_for``, which on Python
    3.11 returns the result instead of raising when the task is cancelled in the same loop
    iteration as the awaited future completes (CPython issues 86296, 107547; fixed by the 3.12
    rewrite). A connect that fails at once makes that a common case, and a session that
    survived its cancellation would hang the daemon's shutdown. A cancellation nobody
    handled leaves ``Task.cancelling()`` higher than before the call. (Compared with its
    value before, not with zero: on 3.11 a TaskGroup whose child fails while it is exiting
    leaves its parent's count raised for good.)
    """
    task = asyncio.current_task()
    cancels_before = task.cancelling() if task is not None else 0
    result = await awaitable
    if task is not None and task.cancelling() > cancels_before:
        raise asyncio.CancelledError
    return result


async def _until_lost(lost: asyncio.Event) -> NoReturn:
    await lost.wait()
    raise _IoError("link lost")


def _describe_exception(code: int) -> str:
    try:
        name = ExcCodes(code).name.lower().replace("_", " ")
    except ValueError:
        return f"exception reply {code:02X}"
    return f"exception reply {code:02X} ({name})"
