"""An R2000 session against the simulator, over a real pty and over TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from edgegate.config import R2000ReaderConfig
from edgegate.devices.link import Backoff, open_link
from edgegate.devices.r2000 import R2000Session
from edgegate.gate.model import Observation, ReaderDown, ReaderUp, TagSeen
from edgegate.wire.r2000 import Cmd, Request, Status, encode_frame
from simulators.r2000 import R2000Simulator

GOLDEN_EPC = "3074257BF7194E4000001A85"
OTHER_EPC = "E20000000000000000001234"
THIRD_EPC = "E2000000000000000000ABCD"
NOW = 1234.5


class Background:
    """Coroutines running for one test: cancelled, awaited and checked for crashes at its end."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._tasks.append(task)
        return task

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for outcome in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                raise outcome


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    background = Background()
    yield background
    await background.stop()


class RecordingSimulator(R2000Simulator):
    """A simulator that remembers every request it answered."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.requests: list[Request] = []

    def answer(self, request: Request) -> list[bytes]:
        self.requests.append(request)
        return super().answer(request)


class CountingBackoff(Backoff):
    """No waiting between attempts, and a count of them, so tests wait on attempts, not time."""

    def __init__(self) -> None:
        super().__init__(0.2, 5.0, random_fraction=lambda: 0.0)
        self.attempts = 0

    def next_delay(self) -> float:
        self.attempts += 1
        return super().next_delay()


class Observations(list[Observation]):
    def tags(self) -> list[TagSeen]:
        return [o for o in self if isinstance(o, TagSeen)]

    def links(self) -> list[ReaderUp | ReaderDown]:
        return [o for o in self if isinstance(o, ReaderUp | ReaderDown)]

    def epcs_by_antenna(self) -> set[tuple[str, int]]:
        return {(t.epc, t.antenna) for t in self.tags()}


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``condition`` (plain state that signals nothing) until it holds, or fail."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


def reader_config(url: str, **overrides: Any) -> R2000ReaderConfig:
    options: dict[str, Any] = {"reply_timeout_s": 1.0} | overrides
    return R2000ReaderConfig(name="rfid-1", kind="r2000", url=url, **options)


def session(
    config: R2000ReaderConfig, observations: Observations, backoff: Backoff | None = None
) -> R2000Session:
    return R2000Session(config, observations.append, clock=lambda: NOW, backoff=backoff)


async def test_tags_in_the_field_arrive_as_tag_seen_through_a_real_pty(
    background: Background,
) -> None:
    simulator = R2000Simulator(round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC, antenna_port=1, rssi_dbm=-54)
    simulator.add_tag(OTHER_EPC, antenna_port=1, rssi_dbm=-71)
    pty = simulator.open_pty()
    background.start(pty.run())
    seen = Observations()

    background.start(session(reader_config(pty.path), seen).run())
    await wait_until(lambda: {OTHER_EPC, GOLDEN_EPC} <= {t.epc for t in seen.tags()})

    assert seen[0] == ReaderUp(reader="rfid-1", at_mono_s=NOW)
    assert TagSeen("rfid-1", GOLDEN_EPC, antenna=1, rssi_dbm=-54.0, at_mono_s=NOW) in seen
    assert TagSeen("rfid-1", OTHER_EPC, antenna=1, rssi_dbm=-71.0, at_mono_s=NOW) in seen


async def test_two_antennas_report_each_tag_on_its_own_port(background: Background) -> None:
    simulator = R2000Simulator(round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC, antenna_port=1)
    simulator.add_tag(OTHER_EPC, antenna_port=2)
    simulator.add_tag(THIRD_EPC, antenna_port=3)  # a port the gate does not use
    pty = simulator.open_pty()
    background.start(pty.run())
    seen = Observations()

    background.start(session(reader_config(pty.path, antennas=(1, 2)), seen).run())
    await wait_until(lambda: len(seen.tags()) >= 10)

    assert seen.epcs_by_antenna() == {(GOLDEN_EPC, 1), (OTHER_EPC, 2)}


async def test_antennas_are_switched_before_each_of_their_rounds(background: Background) -> None:
    simulator = RecordingSimulator(round_delay_s=0.005)
    endpoint = await simulator.open_tcp()
    background.start(endpoint.run())

    background.start(session(reader_config(endpoint.url, antennas=(2, 4)), Observations()).run())
    await wait_until(lambda: simulator.rounds >= 4)

    assert [(r.cmd, r.data) for r in simulator.requests[:9]] == [
        (Cmd.GET_FIRMWARE_VERSION, b""),
        *[
            (Cmd.SET_WORK_ANTENNA, b"\x01"),
            (Cmd.REAL_TIME_INVENTORY, b"\x01"),
            (Cmd.SET_WORK_ANTENNA, b"\x03"),
            (Cmd.REAL_TIME_INVENTORY, b"\x01"),
        ]
        * 2,
    ]


async def test_one_antenna_is_selected_once_per_link(background: Background) -> None:
    simulator = RecordingSimulator(round_delay_s=0.005)
    endpoint = await simulator.open_tcp()
    background.start(endpoint.run())

    background.start(session(reader_config(endpoint.url, antennas=(3,)), Observations()).run())
    await wait_until(lambda: simulator.rounds >= 3)

    assert [r.cmd for r in simulator.requests[:5]] == [
        Cmd.GET_FIRMWARE_VERSION,
        Cmd.SET_WORK_ANTENNA,
        Cmd.REAL_TIME_INVENTORY,
        Cmd.REAL_TIME_INVENTORY,
        Cmd.REAL_TIME_INVENTORY,
    ]
    assert simulator.requests[1].data == b"\x02"


async def test_configured_session_uses_session_inventory(background: Background) -> None:
    simulator = RecordingSimulator(round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC)
    endpoint = await simulator.open_tcp()
    background.start(endpoint.run())
    seen = Observations()

    config = reader_config(endpoint.url, session=2, target="B", repeat=3)
    background.start(session(config, seen).run())
    await wait_until(lambda: len(seen.tags()) >= 2)

    assert Request(0xFF, Cmd.SESSION_INVENTORY, b"\x02\x01\x03") in simulator.requests
    assert Cmd.REAL_TIME_INVENTORY not in {r.cmd for r in simulator.requests}


async def test_unplugged_pty_reports_reader_down_once_and_stays_down(
    background: Background,
) -> None:
    simulator = R2000Simulator(round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC)
    pty = simulator.open_pty()
    serving = background.start(pty.run())
    seen = Observations()
    backoff = CountingBackoff()
    reader = session(reader_config(pty.path), seen, backoff)
    background.start(reader.run())
    await wait_until(lambda: len(seen.tags()) >= 1)

    serving.cancel()  # closes the pty: the port vanishes as if the USB cable were pulled
    await wait_until(lambda: any(isinstance(o, ReaderDown) for o in seen))
    attempts_when_down = backoff.attempts
    await wait_until(lambda: backoff.attempts >= attempts_when_down + 5)

    assert [type(o) for o in seen.links()] == [ReaderUp, ReaderDown]
    assert not reader.stats.connected


async def test_reader_comes_back_when_a_simulator_reappears_at_the_same_tcp_url(
    background: Background,
) -> None:
    first = R2000Simulator(round_delay_s=0.005)
    first.add_tag(GOLDEN_EPC)
    endpoint = await first.open_tcp()
    serving = background.start(endpoint.run())
    seen = Observations()
    backoff = CountingBackoff()
    background.start(session(reader_config(endpoint.url), seen, backoff).run())
    await wait_until(lambda: len(seen.tags()) >= 1)

    serving.cancel()
    await wait_until(lambda: any(isinstance(o, ReaderDown) for o in seen))
    failed_attempts = backoff.attempts
    await wait_until(lambda: backoff.attempts >= failed_attempts + 3)  # nobody listens now
    second = R2000Simulator(round_delay_s=0.005)
    second.add_tag(OTHER_EPC)
    background.start((await second.open_tcp(port=endpoint.port)).run())
    await wait_until(lambda: OTHER_EPC in {t.epc for t in seen.tags()})

    assert [type(o) for o in seen.links()] == [ReaderUp, ReaderDown, ReaderUp]


async def test_reader_that_never_answers_is_reported_down_after_the_reply_timeout(
    background: Background,
) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # listens, never answers
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    seen = Observations()
    try:
        config = reader_config(f"socket://127.0.0.1:{port}", reply_timeout_s=0.1)
        background.start(session(config, seen).run())
        await wait_until(lambda: len(seen) >= 1)
    finally:
        server.close()
        await server.wait_closed()

    assert seen == [
        ReaderDown(reader="rfid-1", reason="no reply to command 72 within 0.1 s", at_mono_s=NOW)
    ]


class DamagingSimulator(R2000Simulator):
    """Every other reply that closes an exchange is damaged on the line: its checksum byte
    flipped (the codec drops it), or its last bytes lost (the frame stalls half-received)."""

    def __init__(self, damage: str, **options: Any) -> None:
        super().__init__(**options)
        self.damage = damage
        self.answered: list[int] = []

    def answer(self, request: Request) -> list[bytes]:
        frames = super().answer(request)
        self.answered.append(request.cmd)
        if frames and len(self.answered) % 2 == 0:
            last = frames[-1]
            if self.damage == "checksum":
                frames[-1] = last[:-1] + bytes((last[-1] ^ 0x5A,))
            else:
                frames[-1] = last[:-3]
        return frames


@pytest.mark.parametrize("damage", ["checksum", "truncated"])
async def test_a_reply_damaged_on_the_line_is_asked_again_at_once_not_called_a_fault(
    background: Background, damage: str
) -> None:
    simulator = DamagingSimulator(damage, round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC, antenna_port=1)
    simulator.add_tag(OTHER_EPC, antenna_port=2)
    pty = simulator.open_pty()
    background.start(pty.run())
    seen = Observations()
    # A reply timeout far longer than the wait below: only asking again gets this far.
    config = reader_config(pty.path, antennas=(1, 2), reply_timeout_s=30.0)
    background.start(session(config, seen).run())

    await wait_until(
        lambda: simulator.answered.count(Cmd.REAL_TIME_INVENTORY) >= 20, timeout_s=10.0
    )

    assert seen.links() == [ReaderUp(reader="rfid-1", at_mono_s=NOW)]
    assert seen.epcs_by_antenna() == {(GOLDEN_EPC, 1), (OTHER_EPC, 2)}


async def test_missing_antenna_brings_the_reader_down_without_misattributed_tags(
    background: Background,
) -> None:
    simulator = R2000Simulator(antenna_ports=1, round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC, antenna_port=1)
    endpoint = await simulator.open_tcp()
    background.start(endpoint.run())
    seen = Observations()

    background.start(session(reader_config(endpoint.url, antennas=(1, 2)), seen).run())
    await wait_until(lambda: any(isinstance(o, ReaderDown) for o in seen))

    down = next(o for o in seen if isinstance(o, ReaderDown))
    assert down.reason == "antenna port 2 faulted: status 22 (antenna missing)"
    assert seen.epcs_by_antenna() == {(GOLDEN_EPC, 1)}


async def test_port_that_cannot_be_opened_is_reported_down_once(background: Background) -> None:
    seen = Observations()
    backoff = CountingBackoff()

    background.start(session(reader_config("/dev/does-not-exist"), seen, backoff).run())
    await wait_until(lambda: backoff.attempts >= 3)

    assert len(seen) == 1
    assert isinstance(seen[0], ReaderDown)
    assert seen[0].reason.startswith("cannot open /dev/does-not-exist")


async def test_stats_count_frames_and_follow_the_link(background: Background) -> None:
    simulator = R2000Simulator(round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC)
    endpoint = await simulator.open_tcp()
    serving = background.start(endpoint.run())
    reader = session(reader_config(endpoint.url), Observations(), CountingBackoff())
    assert reader.stats.connected is False
    assert reader.stats.last_seen_mono_s is None

    background.start(reader.run())
    await wait_until(lambda: reader.stats.frames >= 5)
    assert reader.stats.connected
    assert reader.stats.last_seen_mono_s == NOW
    serving.cancel()
    await wait_until(lambda: not reader.stats.connected)

    assert reader.stats.frames == simulator.frames_sent
    assert (reader.stats.checksum_errors, reader.stats.malformed) == (0, 0)


async def test_cancelled_session_releases_the_serial_port(background: Background) -> None:
    simulator = R2000Simulator(round_delay_s=0.005)
    pty = simulator.open_pty()
    background.start(pty.run())
    seen = Observations()
    running = background.start(session(reader_config(pty.path), seen).run())
    await wait_until(lambda: len(seen) >= 1)

    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    # The port is opened exclusively: this succeeds only if the session let go of it.
    _, writer = await open_link(pty.path, 115200)
    writer.close()
    await writer.wait_closed()


# ------------------------------------------- firmware, RF power, 8A, antenna faults


async def test_firmware_version_is_read_at_connect_and_exposed(background: Background) -> None:
    simulator = R2000Simulator(round_delay_s=0.005, firmware=(2, 14))
    pty = simulator.open_pty()
    background.start(pty.run())
    reader = session(reader_config(pty.path), Observations())
    assert reader.firmware is None

    background.start(reader.run())
    await wait_until(lambda: reader.stats.connected)

    assert reader.firmware == "2.14"
    assert reader.stats.firmware == "2.14"


async def test_configured_rf_power_is_set_and_verified_once_per_link(
    background: Background,
) -> None:
    simulator = RecordingSimulator(round_delay_s=0.005)
    pty = simulator.open_pty()
    background.start(pty.run())
    seen = Observations()

    background.start(session(reader_config(pty.path, rf_power_dbm=22), seen).run())
    await wait_until(lambda: simulator.rounds >= 3)

    assert [(r.cmd, r.data) for r in simulator.requests[:4]] == [
        (Cmd.GET_FIRMWARE_VERSION, b""),
        (Cmd.SET_RF_POWER, b"\x16"),
        (Cmd.GET_RF_POWER, b""),
        (Cmd.SET_WORK_ANTENNA, b"\x00"),
    ]
    assert [r.cmd for r in simulator.requests].count(Cmd.SET_RF_POWER) == 1
    assert simulator.rf_power_dbm == 22
    assert [type(o) for o in seen.links()] == [ReaderUp]


class StubbornSimulator(R2000Simulator):
    """Acknowledges 76 but keeps its power, as a reader in a locked mode might."""

    def answer(self, request: Request) -> list[bytes]:
        if request.cmd == Cmd.SET_RF_POWER:
            return [encode_frame(0x01, Cmd.SET_RF_POWER, bytes((Status.SUCCESS,)))]
        return super().answer(request)


async def test_reader_that_does_not_take_the_configured_power_is_down(
    background: Background,
) -> None:
    simulator = StubbornSimulator(round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC)
    pty = simulator.open_pty()
    background.start(pty.run())
    seen = Observations()

    background.start(session(reader_config(pty.path, rf_power_dbm=20), seen).run())
    await wait_until(lambda: len(seen.links()) >= 1)

    assert seen.links() == [
        ReaderDown(
            "rfid-1", reason="reader reports RF power 30 dBm after setting 20 dBm", at_mono_s=NOW
        )
    ]
    assert not seen.tags()  # no round runs at a power the gate was not set up for


async def test_fast_switch_inventory_reads_every_antenna_in_one_command_through_a_pty(
    background: Background,
) -> None:
    simulator = RecordingSimulator(round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC, antenna_port=1)
    simulator.add_tag(OTHER_EPC, antenna_port=3)
    simulator.add_tag(THIRD_EPC, antenna_port=2)  # a port the gate does not use
    pty = simulator.open_pty()
    background.start(pty.run())
    seen = Observations()

    config = reader_config(pty.path, inventory="8a", antennas=(1, 3), stay=2, repeat=1)
    background.start(session(config, seen).run())
    await wait_until(lambda: simulator.rounds >= 3)

    assert seen.epcs_by_antenna() == {(GOLDEN_EPC, 1), (OTHER_EPC, 3)}
    assert {r.cmd for r in simulator.requests} == {
        Cmd.GET_FIRMWARE_VERSION,
        Cmd.FAST_SWITCH_INVENTORY,
    }
    assert simulator.requests[1].data == bytes((0, 2, 2, 2, 0xFF, 0, 0xFF, 0, 0, 1))
    assert seen[0] == ReaderUp("rfid-1", at_mono_s=NOW)
    assert [type(o) for o in seen.links()] == [ReaderUp]


async def test_eight_port_reader_reports_ports_five_to_eight_end_to_end(
    background: Background,
) -> None:
    simulator = R2000Simulator(antenna_ports=8, round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC, antenna_port=1)
    simulator.add_tag(OTHER_EPC, antenna_port=6)
    simulator.add_tag(THIRD_EPC, antenna_port=8)
    pty = simulator.open_pty()
    background.start(pty.run())
    seen = Observations()

    background.start(session(reader_config(pty.path, antennas=(1, 6, 8)), seen).run())
    await wait_until(lambda: len(seen.epcs_by_antenna()) >= 3)

    assert seen.epcs_by_antenna() == {(GOLDEN_EPC, 1), (OTHER_EPC, 6), (THIRD_EPC, 8)}


@pytest.mark.parametrize("inventory", ["89", "8a"])
async def test_faulty_antenna_takes_the_reader_down_until_it_is_repaired(
    background: Background, inventory: str
) -> None:
    simulator = R2000Simulator(round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC, antenna_port=1)
    simulator.add_tag(OTHER_EPC, antenna_port=2)
    simulator.set_antenna_fault(2)
    pty = simulator.open_pty()
    background.start(pty.run())
    seen = Observations()
    reader = session(reader_config(pty.path, inventory=inventory, antennas=(1, 2)), seen)

    background.start(reader.run())
    await wait_until(lambda: len(seen.links()) >= 2)
    await wait_until(lambda: reader.stats.antenna_faults >= 3)

    assert [type(o) for o in seen.links()] == [ReaderUp, ReaderDown]
    down = seen.links()[1]
    assert isinstance(down, ReaderDown)
    assert down.reason == "antenna port 2 faulted: status 22 (antenna missing)"
    assert reader.stats.faulty_antennas == (2,)
    assert seen.epcs_by_antenna() == {(GOLDEN_EPC, 1)}  # the good port keeps reading

    simulator.set_antenna_fault(2, faulty=False)
    await wait_until(lambda: len(seen.links()) >= 3)

    assert [type(o) for o in seen.links()] == [ReaderUp, ReaderDown, ReaderUp]
    await wait_until(lambda: (OTHER_EPC, 2) in seen.epcs_by_antenna())
    assert reader.stats.faulty_antennas == ()


@pytest.mark.parametrize("inventory", ["89", "8a"])
async def test_degrade_policy_keeps_the_reader_up_until_every_antenna_faults(
    background: Background, inventory: str
) -> None:
    simulator = R2000Simulator(round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC, antenna_port=1)
    simulator.set_antenna_fault(2)
    pty = simulator.open_pty()
    background.start(pty.run())
    seen = Observations()
    config = reader_config(pty.path, inventory=inventory, antennas=(1, 2), antenna_fault="degrade")
    reader = session(config, seen)

    background.start(reader.run())
    await wait_until(lambda: reader.stats.antenna_faults >= 3 and len(seen.tags()) >= 3)
    assert [type(o) for o in seen.links()] == [ReaderUp]
    assert reader.stats.faulty_antennas == (2,)

    simulator.set_antenna_fault(1)
    await wait_until(lambda: len(seen.links()) >= 2)

    down = seen.links()[1]
    assert isinstance(down, ReaderDown)
    assert down.reason == "antenna ports 1, 2 faulted: status 22 (antenna missing)"


async def test_a_known_antenna_fault_survives_a_reconnect_without_flapping(
    background: Background,
) -> None:
    simulator = R2000Simulator(round_delay_s=0.005)
    simulator.set_antenna_fault(1)
    endpoint = await simulator.open_tcp()
    serving = background.start(endpoint.run())
    seen = Observations()
    reader = session(reader_config(endpoint.url), seen, CountingBackoff())
    background.start(reader.run())
    await wait_until(lambda: len(seen.links()) >= 2)

    serving.cancel()  # the link drops while the antenna is still faulty
    await asyncio.gather(serving, return_exceptions=True)
    background.start((await simulator.open_tcp(port=endpoint.port)).run())
    rounds = simulator.rounds
    await wait_until(lambda: simulator.rounds >= rounds + 3)

    assert [type(o) for o in seen.links()] == [ReaderUp, ReaderDown]
