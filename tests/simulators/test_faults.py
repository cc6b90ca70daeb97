"""Fault injection: each fault is measurably applied, and the daemon's R2000 session copes."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Callable

import pytest

from edgegate.gate.model import ReaderDown, ReaderUp, TagSeen
from edgegate.wire.r2000 import Cmd, HostEvent, R2000Host, TagRead, encode_round_end, encode_tag
from simulators.endpoints import PtyEndpoint, serve_pty, serve_tcp
from simulators.faults import (
    NO_FAULTS,
    FaultLayer,
    FaultPlan,
    Receive,
    Replugging,
    Send,
    with_faults,
)
from simulators.r2000 import R2000Simulator
from tests.devices.test_r2000_session import (
    GOLDEN_EPC,
    NOW,
    OTHER_EPC,
    Background,
    CountingBackoff,
    Observations,
    background,
    reader_config,
    session,
    wait_until,
)

__all__ = ["background"]  # the fixture, imported for the tests below

FRAMES = 10_000


class Wire:
    """The host's end of a send: every write, as it arrived."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send(self, data: bytes) -> None:
        self.writes.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


def tag_frames(count: int, seed: int = 7) -> tuple[list[bytes], set[bytes]]:
    """``count`` tag frames (a round end after every tenth) and the EPCs they carry."""
    rng = random.Random(seed)
    epcs = sorted({rng.randbytes(12) for _ in range(200)})
    frames = []
    for n in range(count):
        epc = rng.choice(epcs)
        frames.append(encode_tag(1, Cmd.REAL_TIME_INVENTORY, 7, 0, 0x3000, epc, -60))
        if n % 10 == 9:
            frames.append(encode_round_end(1, Cmd.REAL_TIME_INVENTORY, 0, 100, 10))
    return frames, set(epcs)


def epcs_after_link(seen: Observations, count: int) -> set[str]:
    """EPCs seen after the ``count``-th ReaderUp / ReaderDown."""
    links = 0
    epcs: set[str] = set()
    for observation in seen:
        if isinstance(observation, ReaderUp | ReaderDown):
            links += 1
        elif isinstance(observation, TagSeen) and links >= count:
            epcs.add(observation.epc)
    return epcs


async def through(layer: FaultLayer, frames: list[bytes]) -> Wire:
    wire = Wire()
    send = layer.wrap(wire.send)
    for frame in frames:
        await send(frame)
    return wire


def decode(data: bytes) -> tuple[R2000Host, list[HostEvent]]:
    host = R2000Host()
    events = [
        event for i in range(0, len(data), 97) for event in host.receive_data(data[i : i + 97])
    ]
    return host, events


# ---------------------------------------------------------------------- byte faults


async def test_no_faults_pass_every_write_through_unchanged() -> None:
    frames, _ = tag_frames(100)
    layer = FaultLayer(NO_FAULTS)

    wire = await through(layer, frames)

    assert wire.writes == frames
    assert (layer.writes, layer.bytes_corrupted, layer.bytes_dropped) == (len(frames), 0, 0)
    assert layer.bytes_sent == sum(map(len, frames))


async def test_one_percent_corruption_is_caught_by_the_checksum_and_makes_no_phantom_epc() -> None:
    frames, sent = tag_frames(FRAMES)
    layer = FaultLayer(FaultPlan(corrupt_rate=0.01, corrupt_once_per_write=True, seed=1))

    wire = await through(layer, frames)
    host, events = decode(wire.data)

    total = sum(len(frame) for frame in frames)
    assert 0.008 < layer.bytes_corrupted / total < 0.012
    assert all(len(w) == len(f) for w, f in zip(wire.writes, frames, strict=True))
    assert sum(w != f for w, f in zip(wire.writes, frames, strict=True)) == layer.bytes_corrupted
    assert host.checksum_errors > 0
    epcs = [event.epc for event in events if isinstance(event, TagRead)]
    assert set(epcs) <= sent
    assert len(epcs) >= FRAMES - layer.bytes_corrupted  # a damaged frame costs only itself


async def test_iid_corruption_damages_bytes_at_the_configured_rate() -> None:
    frames, _ = tag_frames(2_000)
    layer = FaultLayer(FaultPlan(corrupt_rate=0.05, seed=2))

    wire = await through(layer, frames)

    sent = b"".join(frames)
    changed = sum(a != b for a, b in zip(wire.data, sent, strict=True))
    assert changed == layer.bytes_corrupted
    assert 0.04 < changed / len(sent) < 0.06


async def test_dropped_bytes_are_missing_and_cost_frames_not_phantoms() -> None:
    frames, sent = tag_frames(2_000)
    layer = FaultLayer(FaultPlan(drop_rate=0.01, seed=3))

    wire = await through(layer, frames)
    host, events = decode(wire.data)

    assert layer.bytes_dropped > 0
    assert len(wire.data) == sum(map(len, frames)) - layer.bytes_dropped
    epcs = {event.epc for event in events if isinstance(event, TagRead)}
    assert epcs <= sent
    assert host.frames < len(frames)


async def test_split_writes_send_every_byte_on_its_own_and_still_decode() -> None:
    frames, sent = tag_frames(50)
    layer = FaultLayer(FaultPlan(split_writes=True))

    wire = await through(layer, frames)

    assert all(len(write) == 1 for write in wire.writes)
    assert wire.data == b"".join(frames)
    host, events = decode(wire.data)
    assert {e.epc for e in events if isinstance(e, TagRead)} <= sent
    assert host.frames == len(frames)


async def test_the_same_seed_damages_the_same_bytes() -> None:
    frames, _ = tag_frames(500)
    plan = FaultPlan(corrupt_rate=0.02, drop_rate=0.01, seed=42)

    first = await through(FaultLayer(plan), frames)
    second = await through(FaultLayer(plan), frames)

    assert first.writes == second.writes
    assert first.data != b"".join(frames)


async def test_pacing_never_outruns_the_line_rate() -> None:
    # 2,304 bytes at 115200 8N1 need 0.2 s on a real wire. Only a lower bound is asserted:
    # a busy machine makes the simulator slower, never faster.
    data = bytes(2_304)
    layer = FaultLayer(FaultPlan(baudrate=115_200))
    wire = Wire()
    send = layer.wrap(wire.send)
    loop = asyncio.get_running_loop()

    started = loop.time()
    for offset in range(0, len(data), 256):
        await send(data[offset : offset + 256])
    elapsed_s = loop.time() - started

    assert elapsed_s >= 0.2 - 0.005  # the loop may wake a timer up to its resolution early
    assert wire.data == data
    assert layer.bytes_sent == len(data)
    assert max(map(len, wire.writes)) <= 64  # delivered in USB-sized pieces


async def test_latency_delays_every_write() -> None:
    layer = FaultLayer(FaultPlan(latency_s=0.05))
    send = layer.wrap(Wire().send)
    loop = asyncio.get_running_loop()

    started = loop.time()
    for _ in range(4):
        await send(b"\xa0")

    assert loop.time() - started >= 0.2 - 0.005


@pytest.mark.parametrize(
    ("plan", "complaint"),
    [
        (lambda: FaultPlan(corrupt_rate=1.5), "corrupt_rate"),
        (lambda: FaultPlan(drop_rate=-0.1), "drop_rate"),
        (lambda: FaultPlan(baudrate=0), "baudrate"),
        (lambda: FaultPlan(latency_s=float("nan")), "latency_s"),
        (lambda: FaultPlan(reconnect_after_s=1.0), "needs disconnect_at_s"),
    ],
    ids=["corrupt-150%", "drop-negative", "baud-0", "latency-nan", "reconnect-alone"],
)
def test_impossible_plans_are_refused(plan: Callable[[], FaultPlan], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        plan()


def test_replugging_needs_a_plan_that_unplugs() -> None:
    endpoint = R2000Simulator().open_pty()

    async def replug() -> PtyEndpoint:
        return endpoint

    try:
        with pytest.raises(ValueError, match="does not unplug"):
            Replugging(NO_FAULTS, endpoint, replug)
    finally:
        endpoint.close()


# ----------------------------------------------------- the daemon's session under faults


async def test_session_through_a_corrupting_pty_counts_errors_and_reads_only_real_epcs(
    background: Background,
) -> None:
    simulator = R2000Simulator(round_delay_s=0)
    field = {f"E200000000000000000{n:05X}" for n in range(20)}
    for epc in field:
        simulator.add_tag(epc)
    plan = FaultPlan(corrupt_rate=0.01, corrupt_once_per_write=True, seed=5)
    endpoint, layer = serve_pty(simulator.converse, plan)
    background.start(endpoint.run())
    seen = Observations()
    # A damaged round end leaves the round open until the reply timeout: keep it short.
    reader = session(reader_config(endpoint.url, reply_timeout_s=0.05), seen, CountingBackoff())

    background.start(reader.run())
    await wait_until(lambda: reader.stats.checksum_errors >= 5, timeout_s=30)
    await wait_until(lambda: len({tag.epc for tag in seen.tags()}) == len(field), timeout_s=30)

    assert layer.bytes_corrupted >= 5
    assert {tag.epc for tag in seen.tags()} <= field  # no phantom EPC, however long it ran


async def test_session_reads_a_pty_that_delivers_one_byte_per_write(
    background: Background,
) -> None:
    simulator = R2000Simulator(round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC)
    simulator.add_tag(OTHER_EPC, antenna_port=2)
    endpoint, layer = serve_pty(simulator.converse, FaultPlan(split_writes=True))
    background.start(endpoint.run())
    seen = Observations()
    reader = session(reader_config(endpoint.url, antennas=(1, 2)), seen)

    background.start(reader.run())
    await wait_until(lambda: seen.epcs_by_antenna() == {(GOLDEN_EPC, 1), (OTHER_EPC, 2)})

    assert layer.writes > 0
    assert (reader.stats.checksum_errors, reader.stats.malformed) == (0, 0)


async def test_session_keeps_up_with_a_burst_at_line_rate(background: Background) -> None:
    # 60 tags and no think time: every round is a back-to-back burst of 61 frames, paced at
    # exactly 115200 8N1, as a real reader with a full field sends it.
    simulator = R2000Simulator(round_delay_s=0)
    field = {f"3000000000000000000{n:05X}" for n in range(60)}
    for epc in field:
        simulator.add_tag(epc)
    endpoint, _ = serve_pty(simulator.converse, FaultPlan(baudrate=115_200))
    background.start(endpoint.run())
    seen = Observations()
    reader = session(reader_config(endpoint.url), seen)

    background.start(reader.run())
    await wait_until(lambda: simulator.rounds >= 5, timeout_s=20)

    assert {tag.epc for tag in seen.tags()} == field
    assert (reader.stats.checksum_errors, reader.stats.malformed, reader.stats.resyncs) == (
        0,
        0,
        0,
    )
    assert [type(o).__name__ for o in seen.links()] == ["ReaderUp"]


async def test_slow_reader_within_the_reply_timeout_stays_up(background: Background) -> None:
    simulator = R2000Simulator(round_delay_s=0)
    simulator.add_tag(GOLDEN_EPC)
    endpoint, _ = serve_pty(simulator.converse, FaultPlan(latency_s=0.05))
    background.start(endpoint.run())
    seen = Observations()

    background.start(session(reader_config(endpoint.url, reply_timeout_s=1.0), seen).run())
    await wait_until(lambda: len(seen.tags()) >= 5)

    assert [type(o).__name__ for o in seen.links()] == ["ReaderUp"]


async def test_reader_slower_than_the_reply_timeout_is_reported_down(
    background: Background,
) -> None:
    simulator = R2000Simulator(round_delay_s=0)
    endpoint, _ = serve_pty(simulator.converse, FaultPlan(latency_s=0.5))
    background.start(endpoint.run())
    seen = Observations()

    background.start(session(reader_config(endpoint.url, reply_timeout_s=0.1), seen).run())
    await wait_until(lambda: len(seen.links()) >= 1)

    assert seen.links() == [
        ReaderDown("rfid-1", reason="no reply to command 72 within 0.1 s", at_mono_s=NOW)
    ]


async def test_unplug_and_replug_through_a_real_pty_recovers(background: Background) -> None:
    simulator = R2000Simulator(round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC)
    plan = FaultPlan(disconnect_at_s=0.3, reconnect_after_s=0.3)
    endpoint, _ = serve_pty(simulator.converse, plan)
    background.start(endpoint.run())
    seen = Observations()
    backoff = CountingBackoff()

    background.start(session(reader_config(endpoint.url), seen, backoff).run())
    await wait_until(lambda: len(seen.links()) >= 3)
    await wait_until(lambda: GOLDEN_EPC in epcs_after_link(seen, 3))

    assert [type(o).__name__ for o in seen.links()] == ["ReaderUp", "ReaderDown", "ReaderUp"]
    assert backoff.attempts >= 1  # reopening failed while the port was gone


async def test_unplugged_tcp_reader_refuses_connections_then_comes_back(
    background: Background,
) -> None:
    simulator = R2000Simulator(round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC)
    plan = FaultPlan(disconnect_at_s=0.3, reconnect_after_s=0.5)
    endpoint, _ = await serve_tcp(simulator.converse, "127.0.0.1", 0, plan)
    background.start(endpoint.run())
    seen = Observations()
    backoff = CountingBackoff()

    background.start(session(reader_config(endpoint.url), seen, backoff).run())
    await wait_until(lambda: len(seen.links()) >= 3)
    await wait_until(lambda: GOLDEN_EPC in epcs_after_link(seen, 3))

    assert [type(o).__name__ for o in seen.links()] == ["ReaderUp", "ReaderDown", "ReaderUp"]
    assert backoff.attempts >= 1  # connections were refused while it was unplugged


async def test_unplugged_for_good_stays_down(background: Background) -> None:
    simulator = R2000Simulator(round_delay_s=0.005)
    endpoint, _ = serve_pty(simulator.converse, FaultPlan(disconnect_at_s=0.2))
    background.start(endpoint.run())
    seen = Observations()
    backoff = CountingBackoff()

    background.start(session(reader_config(endpoint.url), seen, backoff).run())
    await wait_until(lambda: len(seen.links()) >= 2)
    attempts = backoff.attempts
    await wait_until(lambda: backoff.attempts >= attempts + 3)

    assert [type(o).__name__ for o in seen.links()] == ["ReaderUp", "ReaderDown"]


async def test_with_faults_puts_the_layer_in_front_of_any_conversation() -> None:
    async def echo(receive: Receive, send: Send) -> None:
        await send(b"\x01\x02\x03")

    layer = FaultLayer(FaultPlan(split_writes=True))
    wire = Wire()

    async def nothing() -> bytes:
        return b""

    await with_faults(echo, layer)(nothing, wire.send)

    assert wire.writes == [b"\x01", b"\x02", b"\x03"]


# ---------------------------------------------------------------------------- CLI


async def test_cli_refuses_an_impossible_fault_with_one_line_and_exit_2() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from simulators.cli import main; sys.exit(main())",
        "r2000",
        "--corrupt-rate",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(10):
        stdout, stderr = await process.communicate()

    assert process.returncode == 2
    assert stdout == b""
    assert stderr.decode().splitlines() == [
        "edgegate-sim: error: corrupt_rate must be between 0 and 1, got 2.0"
    ]
