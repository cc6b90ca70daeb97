"""Fault injection for every simulator: what can go wrong between a device and its host.

Owns :class:`FaultPlan` (what to break, as a value) and :class:`FaultLayer` (breaks one
endpoint's outgoing bytes accordingly), plus the command-line options that build a plan, so
that every simulator offers the same faults under the same names. Faults are protocol-blind:
they act on bytes and writes, never on frames, so they apply unchanged to any device.

How a simulator adopts it (``simulators.r2000.serve_pty`` / ``serve_tcp`` do exactly this
for any conversation; this module imports nothing from any simulator, so every transport
can use it):

- byte faults: one :class:`FaultLayer` per endpoint (its random source and counters), and
  the device's conversation ``converse(receive, send)`` served as
  ``with_faults(converse, layer)`` — or ``layer.wrap(send)`` on a bare ``send``;
- unplugging: serve a pty at a :func:`stable_link` (when ``plan.unplugs``) and hand the
  endpoint to :class:`Replugging` with a function that plugs a new one in at the same url;
- command line: :func:`add_fault_arguments` on the device's parser, then
  :func:`fault_plan_from_args` on the parsed arguments.

The faults, in the order a write meets them:

- ``latency_s``: every write waits this long first — a slow device (with simulators that
  write one frame at a time, a slow one between frames too);
- ``corrupt_rate``: each byte is replaced by a different value with this probability; with
  ``corrupt_once_per_write`` a write instead gets exactly one damaged byte with probability
  ``corrupt_rate * len(write)`` (same mean), so a device that writes frame by frame never
  has two errors in one frame — the case an additive 8-bit checksum cannot catch;
- ``drop_rate``: each byte is lost with this probability (an overrun UART);
- ``split_writes``: every byte goes out in a write of its own (worst-case fragmentation);
- ``baudrate``: the bytes leave at the line rate of ``baudrate`` 8N1 (10 bit times a byte)
  and no faster, in pieces of at most ``PACED_PIECE_BYTES`` as a USB-serial adapter delivers
  them. Writes queued while the line is busy follow back to back, so a device with no think
  time (e.g. an R2000 simulator with ``round_delay_s=0`` and a full field) produces a burst
  at exactly line rate, as on a real wire. Off (``None``) by default: tests run unpaced;
- ``disconnect_at_s`` (from the endpoint's start): the device is unplugged — the host's
  link fails and reopening it fails — and, after ``reconnect_after_s`` (``None``: never),
  plugged back in. A pty cannot come back at the same ``/dev/pts/N`` (the number stays
  taken while the host holds its end), just as a replugged USB-serial adapter comes back as
  another ``/dev/ttyUSBn``; production configs name the stable udev link
  (``/dev/serial/by-id/...``) for that reason, and so the url of a pty whose plan unplugs
  is a symlink in a private directory: unplugging closes the pty (the host's reads fail with
  EIO) and removes the link (reopening fails with ENOENT); replugging opens a new pty behind
  the same link. A TCP endpoint closes its connections (the host reads EOF) and stops
  listening (reconnects are refused), then listens on the same port again;
- ``seed``: the random faults are reproducible with the same seed and the same writes.

Invariants: a plan with no fault set (:data:`NO_FAULTS`) passes every write through
unchanged and unsplit with no delay; a plan is validated when built (``ValueError``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# The device side of a link, shared by every simulator endpoint (simulators.endpoints).
Receive = Callable[[], Awaitable[bytes]]
Send = Callable[[bytes], Awaitable[None]]
Conversation = Callable[[Receive, Send], Awaitable[None]]

BITS_PER_BYTE_8N1 = 10  # start bit, 8 data bits, stop bit
PACED_PIECE_BYTES = 64  # a full-speed USB bulk packet, as USB-serial adapters deliver


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to break between a simulated device and its host (see the module docstring)."""

    corrupt_rate: float = 0.0
    corrupt_once_per_write: bool = False
    drop_rate: float = 0.0
    split_writes: bool = False
    baudrate: int | None = None
    latency_s: float = 0.0
    disconnect_at_s: float | None = None
    reconnect_after_s: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("corrupt_rate", "drop_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {rate}")
        if self.baudrate is not None and self.baudrate <= 0:
            raise ValueError(f"baudrate must be positive, got {self.baudrate}")
        for name in ("latency_s", "disconnect_at_s", "reconnect_after_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.reconnect_after_s is not None and self.disconnect_at_s is None:
            raise ValueError("reconnect_after_s needs disconnect_at_s")

    @property
    def alters_writes(self) -> bool:
        """Whether any fault acts on the bytes, their splitting or their timing."""
        return bool(
            self.corrupt_rate
            or self.drop_rate
            or self.split_writes
            or self.baudrate is not None
            or self.latency_s
        )

    @property
    def unplugs(self) -> bool:
        """Whether the endpoint is to be unplugged at some point."""
        return self.disconnect_at_s is not None


NO_FAULTS = FaultPlan()


class Endpoint(Protocol):
    """What a host connects to: a url for its config, served by ``run()`` until cancelled."""

    @property
    def url(self) -> str: ...

    async def run(self) -> None: ...


class FaultLayer:
    """Applies one plan's byte faults to the writes of an endpoint's connections.

    One layer per endpoint: its random source and counters span every connection; each
    :meth:`wrap` gives a connection its own sender (and its own wire, for pacing).
    """

    def __init__(self, plan: FaultPlan = NO_FAULTS) -> None:
        self.plan = plan
        self._rng = random.Random(plan.seed)
        self.writes = 0
        """Writes the device made (before any splitting)."""
        self.bytes_sent = 0
        """Bytes handed on to the host after the faults (paced ones once they left the line)."""
        self.bytes_corrupted = 0
        self.bytes_dropped = 0

    def wrap(self, send: Send) -> Send:
        """``send`` with this layer's faults in front of it."""
        plan = self.plan
        if not plan.alters_writes:
            return self._counting(send)
        line = _Line(plan.baudrate)

        async def faulty_send(data: bytes) -> None:
            self.writes += 1
            if plan.latency_s:
                await asyncio.sleep(plan.latency_s)
            data = self._drop(self._corrupt(data))
            if plan.split_writes:
                pieces = [data[i : i + 1] for i in range(len(data))]
            elif plan.baudrate is not None:
                pieces = [
                    data[i : i + PACED_PIECE_BYTES] for i in range(0, len(data), PACED_PIECE_BYTES)
                ]
            else:
                pieces = [data] if data else []
            line.start_write()
            for piece in pieces:
                await line.carry(len(piece))
                await send(piece)
                self.bytes_sent += len(piece)

        return faulty_send

    def _counting(self, send: Send) -> Send:
        async def counted_send(data: bytes) -> None:
            self.writes += 1
            await send(data)
            self.bytes_sent += len(data)

        return counted_send

    def _corrupt(self, data: bytes) -> bytes:
        rate = self.plan.corrupt_rate
        if not rate or not data:
            return data
        rng = self._rng
        damaged = bytearray(data)
        if self.plan.corrupt_once_per_write:
            positions = [rng.randrange(len(data))] if rng.random() < rate * len(data) else []
        else:
            positions = [i for i in range(len(data)) if rng.random() < rate]
        for position in positions:
            damaged[position] ^= rng.randrange(1, 256)  # never 0: the byte always changes
        self.bytes_corrupted += len(positions)
        return bytes(damaged)

    def _drop(self, data: bytes) -> bytes:
        rate = self.plan.drop_rate
        if not rate:
            return data
        kept = bytes(b for b in data if self._rng.random() >= rate)
        self.bytes_dropped += len(data) - len(kept)
        return kept


def with_faults(converse: Conversation, layer: FaultLayer) -> Conversation:
    """``converse`` with ``layer``'s byte faults in front of every ``send`` it is given."""

    async def faulty_converse(receive: Receive, send: Send) -> None:
        await converse(receive, layer.wrap(send))

    return faulty_converse


def stable_link() -> Path:
    """A path for a pty's symlink in a new private directory (removed by :class:`Replugging`
    or by the caller): the url of a pty device whose plan unplugs."""
    return Path(tempfile.mkdtemp(prefix="edgegate-sim-")) / "tty"


class Replugging:
    """An endpoint unplugged at ``plan.disconnect_at_s`` and plugged back in after
    ``plan.reconnect_after_s`` (``None``: never).

    ``first`` is the endpoint plugged in now; ``replug`` makes the one that takes its place
    at the same url. Unplugging is cancelling ``first.run()``, whose cleanup must close the
    device's side of the transport (a pty endpoint closes the pty and removes its link; a
    TCP endpoint stops listening and drops its connections). ``link``, if given, is a
    :func:`stable_link` whose directory is removed when this endpoint stops.
    """

    def __init__(
        self,
        plan: FaultPlan,
        first: Endpoint,
        replug: Callable[[], Awaitable[Endpoint]],
        link: Path | None = None,
    ) -> None:
        if plan.disconnect_at_s is None:
            raise ValueError("the plan does not unplug (disconnect_at_s is None)")
        self._disconnect_at_s = plan.disconnect_at_s
        self._reconnect_after_s = plan.reconnect_after_s
        self._first = first
        self._replug = replug
        self._link = link
        self._url = first.url

    @property
    def url(self) -> str:
        """The first endpoint's url, which every replug keeps."""
        return self._url

    @property
    def path(self) -> str:
        return self._url

    async def run(self) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._disconnect_at_s):
                    await self._first.run()
            if self._reconnect_after_s is None:
                await asyncio.get_running_loop().create_future()  # unplugged for good
                return
            await asyncio.sleep(self._reconnect_after_s)
            await (await self._replug()).run()
        finally:
            if self._link is not None:
                shutil.rmtree(self._link.parent, ignore_errors=True)


class _Line:
    """The serial wire's timing: when the bytes handed to it have finished going out."""

    def __init__(self, baudrate: int | None) -> None:
        self._byte_s = BITS_PER_BYTE_8N1 / baudrate if baudrate else 0.0
        self._free_at = 0.0

    def start_write(self) -> None:
        if self._byte_s:
            # A write the device makes while the line is still busy queues behind it; one
            # made later finds the line idle. Within a write the pieces chain back to back,
            # so a late wake-up from sleep shortens the next wait instead of adding up.
            self._free_at = max(self._free_at, asyncio.get_running_loop().time())

    async def carry(self, size: int) -> None:
        """Wait until ``size`` more bytes have crossed the wire."""
        if not self._byte_s:
            return
        self._free_at += size * self._byte_s
        delay_s = self._free_at - asyncio.get_running_loop().time()
        if delay_s > 0:
            await asyncio.sleep(delay_s)


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """The fault options, the same for every simulator's subcommand."""
    group = parser.add_argument_group("fault injection (all off by default)")
    add = group.add_argument
    add("--corrupt-rate", type=float, default=0.0, metavar="P",
        help="probability that each byte sent is damaged")  # fmt: skip
    add("--corrupt-once-per-write", action="store_true",
        help="damage at most one byte per write (same mean rate)")  # fmt: skip
    add("--drop-rate", type=float, default=0.0, metavar="P",
        help="probability that each byte sent is lost")  # fmt: skip
    add("--split-writes", action="store_true",
        help="send every byte in a write of its own")  # fmt: skip
    add("--baudrate", type=int, default=None, metavar="BAUD",
        help="pace output at this line rate, 8N1 (default: unpaced)")  # fmt: skip
    add("--latency", type=float, default=0.0, metavar="SECONDS",
        help="delay before every write (a slow device)")  # fmt: skip
    add("--disconnect-at", type=float, default=None, metavar="SECONDS",
        help="unplug the device this long after start")  # fmt: skip
    add("--reconnect-after", type=float, default=None, metavar="SECONDS",
        help="plug it back in this long after unplugging (default: never)")  # fmt: skip
    add("--seed", type=int, default=None, help="seed for reproducible random faults")


def fault_plan_from_args(args: argparse.Namespace) -> FaultPlan:
    """The plan the options of :func:`add_fault_arguments` describe (``ValueError`` if bad)."""
    return FaultPlan(
        corrupt_rate=args.corrupt_rate,
        corrupt_once_per_write=args.corrupt_once_per_write,
        drop_rate=args.drop_rate,
        split_writes=args.split_writes,
        baudrate=args.baudrate,
        latency_s=args.latency,
        disconnect_at_s=args.disconnect_at,
        reconnect_after_s=args.reconnect_after,
        seed=args.seed,
    )
