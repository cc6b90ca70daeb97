"""The LCUS relay session against a relay board simulator, through a real pty and over TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from edgegate.config import LcusReaderConfig
from edgegate.devices.lcus import LcusSession
from edgegate.devices.link import Backoff
from edgegate.gate.model import GateOutputs, ReaderDown, ReaderUp
from simulators.endpoints import PtyEndpoint
from simulators.faults import Receive, Send
from simulators.lcus import LcusSimulator
from tests.devices.support import Background, CountingBackoff, Observations, wait_until

# Verbatim from PROTOCOLS.md §4.
CH1_ON = bytes.fromhex("A0 01 01 A2")
CH1_OFF = bytes.fromhex("A0 01 00 A1")
NOW = 1234.5


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    background = Background()
    yield background
    await background.stop()


class Wire:
    """The board's end of the cable: every byte the host sent."""

    def __init__(self) -> None:
        self.received = bytearray()

    async def converse(self, receive: Receive, send: Send) -> None:
        while data := await receive():
            self.received += data


def relay_config(url: str, **channels: Any) -> LcusReaderConfig:
    wired: dict[str, Any] = channels or {"barrier": 1, "green": 2, "red": 3, "buzzer": 4}
    return LcusReaderConfig(name="relay-1", kind="lcus", url=url, **wired)


def session(
    config: LcusReaderConfig, seen: Observations, backoff: Backoff | None = None
) -> LcusSession:
    return LcusSession(config, seen.append, clock=lambda: NOW, backoff=backoff)


async def bounded(awaitable: Awaitable[None], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        await awaitable


async def test_the_barrier_relay_is_switched_with_the_documented_frames(
    background: Background,
) -> None:
    wire = Wire()
    pty = PtyEndpoint(wire.converse)
    background.start(pty.run())
    seen = Observations()
    relays = session(relay_config(pty.url, barrier=1), seen)
    background.start(relays.run())
    await wait_until(lambda: len(seen) >= 1)

    await relays.apply(GateOutputs(barrier_open=True, green=True))  # green is not wired
    await wait_until(lambda: len(wire.received) >= 4)
    await relays.apply(GateOutputs(green=True))
    await wait_until(lambda: len(wire.received) >= 8)

    assert seen == [ReaderUp(reader="relay-1", at_mono_s=NOW)]
    assert bytes(wire.received) == CH1_ON + CH1_OFF


async def test_applied_outputs_reach_the_relays_and_repeating_them_sends_nothing(
    background: Background,
) -> None:
    board = LcusSimulator(channels=4)
    endpoint = await board.open_tcp()
    background.start(endpoint.run())
    relays = session(relay_config(endpoint.url), Observations())
    background.start(relays.run())
    await wait_until(lambda: relays.stats.connected)

    await relays.apply(GateOutputs(barrier_open=True, red=True))
    await bounded(board.until(lambda r: r == {1: True, 2: False, 3: True, 4: False}))
    await bounded(board.until(lambda _: board.frames == 4))
    await relays.apply(GateOutputs(barrier_open=True, red=True))
    await relays.apply(GateOutputs(buzzer=True))
    await bounded(board.until(lambda r: r == {1: False, 2: False, 3: False, 4: True}))

    assert board.frames == 4 + 3  # barrier, red and buzzer changed; green did not
    assert relays.stats.frames == board.frames


async def test_unplug_and_replug_resends_every_relay(
    background: Background, tmp_path: Path
) -> None:
    by_path = tmp_path / "pci-0000:00:14.0-usb-0:2:1.0-port0"
    board = LcusSimulator(channels=4)
    cable = background.start(board.open_pty(link=by_path).run())
    seen = Observations()
    backoff = CountingBackoff()
    relays = session(relay_config(str(by_path)), seen, backoff)
    background.start(relays.run())
    await relays.apply(GateOutputs(barrier_open=True, green=True))
    await bounded(board.until(lambda _: board.frames == 4))

    cable.cancel()
    await wait_until(lambda: len(seen.links()) >= 2)
    failed = backoff.attempts
    await wait_until(lambda: backoff.attempts >= failed + 3)
    background.start(board.open_pty(link=by_path).run())
    await bounded(board.until(lambda _: board.frames == 8))

    assert [type(o) for o in seen.links()] == [ReaderUp, ReaderDown, ReaderUp]
    assert board.relays() == {1: True, 2: True, 3: False, 4: False}


async def test_nothing_is_sent_before_the_first_apply(background: Background) -> None:
    wire = Wire()
    pty = PtyEndpoint(wire.converse)
    background.start(pty.run())
    relays = session(relay_config(pty.url), Observations())
    background.start(relays.run())
    await wait_until(lambda: relays.stats.connected)

    await relays.apply(GateOutputs(red=True))
    await wait_until(lambda: len(wire.received) >= 16)

    # Had anything gone out on connecting, these would not be the first 16 bytes.
    assert bytes(wire.received) == b"".join(
        bytes((0xA0, channel, on, 0xA0 + channel + on))
        for channel, on in ((1, 0), (2, 0), (3, 1), (4, 0))
    )


async def test_a_port_that_cannot_be_opened_is_reported_down_once(background: Background) -> None:
    seen = Observations()
    backoff = CountingBackoff()

    background.start(session(relay_config("/dev/does-not-exist"), seen, backoff).run())
    await wait_until(lambda: backoff.attempts >= 3)

    assert len(seen) == 1
    assert isinstance(seen[0], ReaderDown)
    assert seen[0].reason.startswith("cannot open /dev/does-not-exist")
