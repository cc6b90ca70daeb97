"""A ThingMagic session against the simulator, over a real pty and over TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edgegate.config import ThingMagicReaderConfig
from edgegate.devices.factory import build_sessions
from edgegate.devices.link import Backoff, open_link
from edgegate.devices.thingmagic import ThingMagicSession
from edgegate.gate.model import ReaderDown, ReaderUp, TagSeen
from edgegate.wire.thingmagic import (
    EmbeddedRead,
    MemoryBank,
    ReadingPlan,
    StatusWord,
    ThingMagicHost,
)
from simulators.thingmagic import ThingMagicSimulator
from tests.devices.support import Background, CountingBackoff, Observations, wait_until

EPC = "3074257BF7194E4000001A85"
TID = "E2801160200074CF085B0A9B"
OTHER_EPC = "E20000000000000000001234"
THIRD_EPC = "E2000000000000000000ABCD"
NOW = 1234.5


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    background = Background()
    yield background
    await background.stop()


def simulator(**options: Any) -> ThingMagicSimulator:
    return ThingMagicSimulator(**({"read_interval_s": 0.005} | options))


def reader_config(url: str, **overrides: Any) -> ThingMagicReaderConfig:
    options: dict[str, Any] = {
        "reply_timeout_s": 1.0,
        "on_time_ms": 50,
        "keepalive_timeout_s": 1.0,
    } | overrides
    return ThingMagicReaderConfig(name="rfid-2", kind="thingmagic", url=url, **options)


def session(
    config: ThingMagicReaderConfig, seen: Observations, backoff: Backoff | None = None
) -> ThingMagicSession:
    return ThingMagicSession(config, seen.append, clock=lambda: NOW, backoff=backoff)


async def test_tags_arrive_with_their_tid_through_a_real_pty(background: Background) -> None:
    module = simulator()
    module.add_tag(EPC, antenna_port=1, rssi_dbm=-54, tid=TID)
    module.add_tag(OTHER_EPC, antenna_port=1, rssi_dbm=-71)  # its TID cannot be read
    pty = module.open_pty()
    background.start(pty.run())
    seen = Observations()

    background.start(session(reader_config(pty.path, read_tid=True), seen).run())
    await wait_until(lambda: {EPC, OTHER_EPC} <= {t.epc for t in seen.tags()})

    assert seen[0] == ReaderUp(reader="rfid-2", at_mono_s=NOW)
    assert TagSeen("rfid-2", EPC, antenna=1, rssi_dbm=-54.0, at_mono_s=NOW, tid=TID) in seen
    assert TagSeen("rfid-2", OTHER_EPC, antenna=1, rssi_dbm=-71.0, at_mono_s=NOW) in seen
    assert module.reading is not None
    assert module.reading.embedded_read == EmbeddedRead(MemoryBank.TID, 0, 6)


async def test_without_read_tid_the_session_sends_the_captured_start(
    background: Background,
) -> None:
    module = simulator()
    module.add_tag(EPC, tid=TID)
    pty = module.open_pty()
    background.start(pty.run())
    seen = Observations()

    background.start(
        session(reader_config(pty.path, on_time_ms=1000, keepalive_timeout_s=3.0), seen).run()
    )
    await wait_until(lambda: len(seen.tags()) >= 2)

    # ReadingPlan() is what §2's captured start decodes to (tests/wire): all metadata,
    # 1000 ms on-time, no embedded read.
    assert module.reading == ReadingPlan()
    assert {t.tid for t in seen.tags()} == {None}


async def test_set_up_applies_region_power_antennas_and_turns_the_read_filter_off(
    background: Background,
) -> None:
    module = simulator()
    module.add_tag(EPC, antenna_port=1)
    module.add_tag(OTHER_EPC, antenna_port=3)
    module.add_tag(THIRD_EPC, antenna_port=2)  # a port the gate does not use
    pty = module.open_pty()
    background.start(pty.run())
    seen = Observations()

    config = reader_config(pty.path, region=6, read_power_cdbm=2500, antennas=(1, 3))
    background.start(session(config, seen).run())
    await wait_until(lambda: len(seen.tags()) >= 10)

    assert (module.region, module.read_power_cdbm, module.antennas) == (6, 2500, (1, 3))
    assert (module.protocol, module.read_filter) == (0x05, False)
    assert seen.epcs_by_antenna() == {(EPC, 1), (OTHER_EPC, 3)}


async def test_unplug_and_replug_through_a_real_pty_recovers(
    background: Background, tmp_path: Path
) -> None:
    module = simulator()
    module.add_tag(EPC)
    # The daemon names a stable path, as /dev/serial/by-id/ links are: the endpoint removes
    # it at the unplug and makes it again, to a new tty, at the replug, as udev does.
    port = tmp_path / "usb-ThingMagic-if00-port0"
    first = module.open_pty(link=port)
    serving = background.start(first.run())
    seen = Observations()
    backoff = CountingBackoff()
    reader = session(reader_config(first.url), seen, backoff)
    background.start(reader.run())
    await wait_until(lambda: len(seen.tags()) >= 1)

    serving.cancel()
    await wait_until(lambda: bool(seen.downs()))
    failed_attempts = backoff.attempts
    await wait_until(lambda: backoff.attempts >= failed_attempts + 3)  # nothing to open
    assert not reader.stats.connected
    module.clear()
    module.add_tag(OTHER_EPC)
    second = module.open_pty(link=port)
    background.start(second.run())
    await wait_until(lambda: OTHER_EPC in {t.epc for t in seen.tags()})

    assert [type(o) for o in seen.links()] == [ReaderUp, ReaderDown, ReaderUp]
    assert reader.stats.connected


async def test_silent_module_goes_down_after_the_keepalive_timeout_and_up_when_it_recovers(
    background: Background,
) -> None:
    module = simulator()
    module.add_tag(EPC)
    pty = module.open_pty()
    background.start(pty.run())
    seen = Observations()
    backoff = CountingBackoff()
    config = reader_config(pty.path, on_time_ms=20, keepalive_timeout_s=0.3, reply_timeout_s=0.3)
    background.start(session(config, seen, backoff).run())
    await wait_until(lambda: len(seen.tags()) >= 1)

    module.hang()
    await wait_until(lambda: bool(seen.downs()))
    failed_attempts = backoff.attempts
    await wait_until(lambda: backoff.attempts >= failed_attempts + 2)  # stop goes unanswered
    module.recover()
    await wait_until(lambda: len(seen.links()) == 3)

    assert [type(o) for o in seen.links()] == [ReaderUp, ReaderDown, ReaderUp]
    assert seen.downs()[0].reason == "no frame while reading within 0.3 s"


async def test_keepalives_keep_a_session_with_an_empty_field_up(
    background: Background,
) -> None:
    module = simulator()
    pty = module.open_pty()
    background.start(pty.run())
    seen = Observations()
    reader = session(reader_config(pty.path, on_time_ms=20, keepalive_timeout_s=1.0), seen)

    background.start(reader.run())
    await wait_until(lambda: module.keepalives_sent >= 30)

    assert seen == [ReaderUp(reader="rfid-2", at_mono_s=NOW)]
    assert reader.stats.connected


async def test_refused_antenna_brings_the_reader_down_without_tags(
    background: Background,
) -> None:
    module = simulator(antenna_ports=1)
    module.add_tag(EPC, antenna_port=1)
    endpoint = await module.open_tcp()
    background.start(endpoint.run())
    seen = Observations()

    background.start(session(reader_config(endpoint.url, antennas=(1, 2)), seen).run())
    await wait_until(lambda: bool(seen.downs()))

    assert seen == [
        ReaderDown(
            reader="rfid-2",
            reason="reader refused antennas [1, 2]: status 0507 (invalid antenna config)",
            at_mono_s=NOW,
        )
    ]
    assert module.reading is None


async def test_fault_status_while_streaming_brings_the_reader_down_then_back(
    background: Background,
) -> None:
    module = simulator()
    module.add_tag(EPC)
    pty = module.open_pty()
    background.start(pty.run())
    seen = Observations()
    background.start(session(reader_config(pty.path), seen, CountingBackoff()).run())
    await wait_until(lambda: len(seen.tags()) >= 1)

    module.report_status(StatusWord.ANTENNA_NOT_CONNECTED)
    await wait_until(lambda: len(seen.links()) == 3)

    assert [type(o) for o in seen.links()] == [ReaderUp, ReaderDown, ReaderUp]
    assert seen.downs()[0].reason == "reader stopped reading: status 0503 (antenna not connected)"


async def test_temperature_throttle_keeps_the_reader_up(background: Background) -> None:
    module = simulator()
    module.add_tag(EPC)
    pty = module.open_pty()
    background.start(pty.run())
    seen = Observations()
    background.start(session(reader_config(pty.path), seen).run())
    await wait_until(lambda: len(seen.tags()) >= 1)

    module.report_status(StatusWord.TEMPERATURE_THROTTLE)
    await wait_until(lambda: not module.pending_statuses)
    tags_after_throttle = len(seen.tags()) + 5
    await wait_until(lambda: len(seen.tags()) >= tags_after_throttle)

    assert seen.links() == [ReaderUp(reader="rfid-2", at_mono_s=NOW)]


async def test_module_left_streaming_by_a_previous_host_is_stopped_and_set_up_again(
    background: Background,
) -> None:
    module = simulator()
    module.add_tag(EPC)
    pty = module.open_pty()
    background.start(pty.run())
    # A previous daemon started reading and died without stopping it.
    stream, writer = await open_link(pty.path, 115200)
    writer.write(ThingMagicHost().start_reading(ReadingPlan(on_time_ms=20)))
    async with asyncio.timeout(5):
        await stream.readexactly(200)
    writer.close()
    await writer.wait_closed()
    assert module.reading == ReadingPlan(on_time_ms=20)
    seen = Observations()

    background.start(session(reader_config(pty.path, read_tid=True), seen).run())
    await wait_until(lambda: len(seen.tags()) >= 1)

    assert seen[0] == ReaderUp(reader="rfid-2", at_mono_s=NOW)
    assert module.reading is not None
    assert module.reading.embedded_read is not None  # the new start, not the old one


async def test_cancelled_session_stops_the_module_and_releases_the_port(
    background: Background,
) -> None:
    module = simulator()
    module.add_tag(EPC)
    pty = module.open_pty()
    background.start(pty.run())
    seen = Observations()
    running = background.start(session(reader_config(pty.path), seen).run())
    await wait_until(lambda: len(seen.tags()) >= 1)

    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    assert module.reading is None
    # The port is opened exclusively: this succeeds only if the session let go of it.
    _, writer = await open_link(pty.path, 115200)
    writer.close()
    await writer.wait_closed()


async def test_port_that_cannot_be_opened_is_reported_down_once(background: Background) -> None:
    seen = Observations()
    backoff = CountingBackoff()

    background.start(session(reader_config("/dev/does-not-exist"), seen, backoff).run())
    await wait_until(lambda: backoff.attempts >= 3)

    assert len(seen) == 1
    assert isinstance(seen[0], ReaderDown)
    assert seen[0].reason.startswith("cannot open /dev/does-not-exist")


async def test_module_that_never_answers_is_reported_down_after_the_reply_timeout(
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
        ReaderDown(reader="rfid-2", reason="no reply to command 2F within 0.1 s", at_mono_s=NOW)
    ]


async def test_stats_count_frames_report_firmware_and_follow_the_link(
    background: Background,
) -> None:
    module = simulator()
    module.add_tag(EPC)
    endpoint = await module.open_tcp()
    serving = background.start(endpoint.run())
    reader = session(reader_config(endpoint.url), Observations(), CountingBackoff())
    assert reader.stats.connected is False
    assert reader.stats.last_seen_mono_s is None

    background.start(reader.run())
    # Six frames answer the set-up (stop, version, protocol, antennas, filter, start).
    await wait_until(lambda: reader.stats.frames >= 10)
    assert reader.stats.connected
    assert reader.stats.last_seen_mono_s == NOW
    assert reader.stats.firmware == "01.03.01.47"
    serving.cancel()
    await wait_until(lambda: not reader.stats.connected)

    stats = reader.stats
    assert stats.frames >= 10
    assert (stats.checksum_errors, stats.malformed, stats.resyncs) == (0, 0, 0)


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"on_time_ms": 1000, "keepalive_timeout_s": 1.0}, "must exceed one search cycle"),
        ({"antennas": (16,)}, "between 1 and 15"),
        ({"antennas": ()}, "between 1 and 15"),
        ({"region": 0}, "region"),
        ({"tid_words": 0}, "tid_words"),
    ],
)
def test_config_that_the_module_could_not_run_is_refused(
    overrides: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        reader_config("/dev/ttyUSB0", **overrides)


def test_factory_builds_a_thingmagic_session_for_a_thingmagic_reader() -> None:
    (built,) = build_sessions([reader_config("/dev/ttyUSB0")], Observations().append)

    assert isinstance(built, ThingMagicSession)
    assert built.name == "rfid-2"
