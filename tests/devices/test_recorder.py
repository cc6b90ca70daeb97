"""The flight recorder and its replay: a field session recorded, and played back on a desk."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
import structlog

from edgegate.devices.link import open_link
from edgegate.devices.recorder import (
    FORMAT,
    FlightRecorder,
    RecordedChunk,
    RecordedLink,
    RecordingError,
    read_recording,
)
from edgegate.wire.r2000 import R2000Host
from simulators.r2000 import R2000Simulator
from simulators.replay import Replayer
from tests.devices.test_r2000_session import (
    GOLDEN_EPC,
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

# PROTOCOLS.md §1: the golden tag frame, as the simulator sends it for GOLDEN_EPC at -54 dBm.
GOLDEN_TAG = bytes.fromhex("A0 13 01 89 1C 30 00 30 74 25 7B F7 19 4E 40 00 00 1A 85 4B AB")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def record_a_field_session(
    background: Background, path: Path, *, antennas: tuple[int, ...] = (1, 2)
) -> set[str]:
    """Run a session with ``record`` set against a simulator over a pty; the EPCs it saw."""
    simulator = R2000Simulator(round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC, antenna_port=1, rssi_dbm=-54)
    simulator.add_tag(OTHER_EPC, antenna_port=2, rssi_dbm=-70)
    pty = simulator.open_pty()
    serving = background.start(pty.run())
    seen = Observations()
    config = reader_config(pty.path, antennas=antennas, record=str(path))
    running = background.start(session(config, seen).run())
    await wait_until(lambda: simulator.rounds >= 6)
    running.cancel()
    serving.cancel()
    await asyncio.gather(running, serving, return_exceptions=True)
    return {tag.epc for tag in seen.tags()}


# ------------------------------------------------------------------------- recording


async def test_a_session_over_a_real_pty_records_both_directions(
    background: Background, tmp_path: Path
) -> None:
    path = tmp_path / "rfid-1.rec"

    await record_a_field_session(background, path)

    (link,) = read_recording(path)
    rx = b"".join(c.data for c in link.chunks if c.direction == "rx")
    tx = b"".join(c.data for c in link.chunks if c.direction == "tx")
    assert link.url.startswith("/dev/pts/")
    assert link.baudrate == 115200
    assert GOLDEN_TAG in rx
    assert tx.startswith(R2000Host().get_firmware_version() + R2000Host().set_work_antenna(0))
    times = [chunk.t for chunk in link.chunks]
    assert times == sorted(times)
    raw = lines(path)
    assert raw[0]["dir"] == "open"
    assert raw[0]["format"] == FORMAT
    assert raw[-1]["dir"] == "close"


async def test_every_reconnect_appends_a_new_link(background: Background, tmp_path: Path) -> None:
    path = tmp_path / "rfid-1.rec"

    await record_a_field_session(background, path)
    await record_a_field_session(background, path)

    assert len(read_recording(path)) == 2


async def test_recorder_writes_lines_with_times_since_the_link_opened(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "x.rec"
    recorder = FlightRecorder(str(path), url="socket://h:1", baudrate=9600, clock=clock)

    recorder.start()
    clock.now += 0.25
    recorder.record("tx", b"\xa0\x03")
    clock.now += 0.5
    recorder.record("rx", b"\x01")
    recorder.record("rx", b"")  # nothing arrived: nothing to record
    recorder.close()

    assert [(line["t"], line["dir"], line.get("hex")) for line in lines(path)] == [
        (0.0, "open", None),
        (0.25, "tx", "a003"),
        (0.75, "rx", "01"),
        (0.75, "close", None),
    ]
    assert read_recording(path) == [
        RecordedLink(
            "socket://h:1",
            9600,
            str(lines(path)[0]["at"]),
            (RecordedChunk(0.25, "tx", b"\xa0\x03"), RecordedChunk(0.75, "rx", b"\x01")),
        )
    ]


async def test_recorder_flushes_on_its_own_without_waiting_for_close(tmp_path: Path) -> None:
    path = tmp_path / "x.rec"
    recorder = FlightRecorder(str(path), url="u", baudrate=1)
    recorder.start()
    recorder.record("rx", b"\x01")

    await wait_until(lambda: path.exists() and '"rx"' in path.read_text())

    recorder.close()


async def test_a_full_file_is_rotated_and_both_halves_replay(tmp_path: Path) -> None:
    path = tmp_path / "x.rec"
    recorder = FlightRecorder(
        str(path), url="u", baudrate=1, max_bytes=2_000, flush_interval_s=0.001
    )
    recorder.start()
    for n in range(200):
        recorder.record("rx", bytes([n]) * 8)
        if n % 20 == 19:
            await asyncio.sleep(0.01)  # let the flush timer write, and so check the size
    recorder.close()

    rotated = tmp_path / "x.rec.1"
    assert rotated.exists()
    assert path.stat().st_size < 2 * 2_000
    received = b""
    for part in (rotated, path):
        assert lines(part)[0]["dir"] == "open"
        assert lines(part)[0].get("continued") is True
        (link,) = read_recording(part)
        assert all(chunk.t >= link.start_t for chunk in link.chunks)
        received += b"".join(chunk.data for chunk in link.chunks)
    assert received.endswith(bytes([199]) * 8)  # the newest history is the one kept


async def test_an_unwritable_record_path_does_not_stop_the_session(
    background: Background, tmp_path: Path
) -> None:
    simulator = R2000Simulator(round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC)
    pty = simulator.open_pty()
    background.start(pty.run())
    seen = Observations()
    config = reader_config(pty.path, record=str(tmp_path / "no-such-dir" / "x.rec"))

    background.start(session(config, seen, CountingBackoff()).run())
    await wait_until(lambda: len(seen.tags()) >= 5)

    assert [type(o).__name__ for o in seen.links()] == ["ReaderUp"]
    assert not (tmp_path / "no-such-dir").exists()


async def test_a_disk_that_fills_up_disables_recording_not_the_session(
    background: Background,
) -> None:
    # /dev/full opens fine and fails every write with ENOSPC, as a full disk does.
    simulator = R2000Simulator(round_delay_s=0.005)
    simulator.add_tag(GOLDEN_EPC)
    pty = simulator.open_pty()
    background.start(pty.run())
    seen = Observations()

    with structlog.testing.capture_logs() as logs:
        background.start(session(reader_config(pty.path, record="/dev/full"), seen).run())
        await wait_until(lambda: simulator.rounds >= 100, timeout_s=20)  # past several flushes

    assert len(seen.tags()) >= 100
    assert [type(o).__name__ for o in seen.links()] == ["ReaderUp"]
    warnings = [entry for entry in logs if entry["event"] == "recorder.disabled"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert "No space left on device" in str(warnings[0]["error"])


async def test_the_recorder_follows_the_transport_however_it_closes(tmp_path: Path) -> None:
    path = tmp_path / "x.rec"

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)  # unread bytes would make the close a reset
        writer.write(b"\xa0\x01")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await open_link(f"socket://127.0.0.1:{port}", 115200, str(path))
        writer.write(b"\x72")
        assert await reader.read() == b"\xa0\x01"
        writer.transport.abort()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()

    (link,) = read_recording(path)
    assert [(c.direction, c.data) for c in link.chunks] == [("tx", b"\x72"), ("rx", b"\xa0\x01")]
    assert lines(path)[-1]["dir"] == "close"


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("", "no open line"),
        ('{"t": 0, "dir": "rx", "hex": "00"}\n', ":1: bytes before the first open line"),
        ("not json\n", ":1: not a JSON line"),
        ('{"t": 0, "dir": "open", "format": "other/9", "baudrate": 1}\n', ":1: format"),
        ('{"t": -1, "dir": "open"}\n', ":1: t must be a non-negative number"),
        ('{"t": 0, "dir": "sideways"}\n', ":1: unknown dir"),
    ],
    ids=["empty", "no-open", "not-json", "other-format", "negative-t", "bad-dir"],
)
def test_a_bad_recording_is_one_error_naming_the_file_and_line(
    tmp_path: Path, content: str, complaint: str
) -> None:
    path = tmp_path / "bad.rec"
    path.write_text(content)

    with pytest.raises(RecordingError, match=complaint) as raised:
        read_recording(path)
    assert str(path) in str(raised.value)


def test_a_last_line_cut_short_by_a_crash_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "x.rec"
    path.write_text(
        f'{{"t": 0.0, "dir": "open", "format": "{FORMAT}", "url": "u", "baudrate": 1, "at": ""}}\n'
        '{"t": 0.1, "dir": "rx", "hex": "a0"}\n'
        '{"t": 0.2, "dir": "rx", "he'
    )

    (link,) = read_recording(path)

    assert link.chunks == (RecordedChunk(0.1, "rx", b"\xa0"),)


def test_a_whole_last_line_without_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "x.rec"
    path.write_text(
        f'{{"t": 0.0, "dir": "open", "format": "{FORMAT}", "url": "u", "baudrate": 1, "at": ""}}\n'
        '{"t": 0.1, "dir": "rx", "hex": "a0"}'
    )

    (link,) = read_recording(path)

    assert link.chunks == (RecordedChunk(0.1, "rx", b"\xa0"),)


def test_a_missing_recording_is_a_recording_error(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="cannot read"):
        read_recording(tmp_path / "absent.rec")


# ---------------------------------------------------------------------------- replay


async def test_replay_of_a_recording_drives_a_second_session_to_the_same_epcs(
    background: Background, tmp_path: Path
) -> None:
    path = tmp_path / "field.rec"
    recorded = await record_a_field_session(background, path)
    assert recorded == {GOLDEN_EPC, OTHER_EPC}

    replayer = Replayer.from_file(path, speed=1.0)
    assert replayer.follows_host
    replay = replayer.open_pty()
    background.start(replay.run())
    seen = Observations()
    background.start(session(reader_config(replay.path, antennas=(1, 2)), seen).run())
    await wait_until(lambda: {t.epc for t in seen.tags()} == recorded)

    assert seen.epcs_by_antenna() == {(GOLDEN_EPC, 1), (OTHER_EPC, 2)}
    assert replayer.requests_awaited >= 4  # it waited for the new session's requests


async def test_replay_without_host_requests_plays_on_its_own_timing(tmp_path: Path) -> None:
    path = tmp_path / "stream.rec"
    path.write_text(
        f'{{"t": 0.0, "dir": "open", "format": "{FORMAT}", "url": "u", "baudrate": 1, "at": ""}}\n'
        f'{{"t": 0.01, "dir": "rx", "hex": "{GOLDEN_TAG[:7].hex()}"}}\n'
        f'{{"t": 0.02, "dir": "rx", "hex": "{GOLDEN_TAG[7:].hex()}"}}\n'
    )
    replayer = Replayer.from_file(path, speed=2.0)
    endpoint = await replayer.open_tcp()
    serving = asyncio.create_task(endpoint.run())
    try:
        reader, writer = await open_link(endpoint.url, 115200)
        async with asyncio.timeout(5):
            assert await reader.readexactly(len(GOLDEN_TAG)) == GOLDEN_TAG
        writer.close()
        await writer.wait_closed()
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)

    assert not replayer.follows_host
    assert replayer.chunks_sent == 2  # one write per recorded chunk


def test_a_recording_with_nothing_to_play_is_refused() -> None:
    link = RecordedLink("u", 1, "", (RecordedChunk(0.0, "tx", b"\x00"),))

    with pytest.raises(RecordingError, match="no received bytes"):
        Replayer([link])


async def test_cli_replay_serves_a_recording_and_refuses_a_bad_file(
    background: Background, tmp_path: Path
) -> None:
    path = tmp_path / "field.rec"
    await record_a_field_session(background, path, antennas=(1,))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from simulators.cli import main; sys.exit(main())",
        "replay",
        str(path),
        "--speed",
        "4",
        "--loop",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout
    try:
        async with asyncio.timeout(10):
            url = (await process.stdout.readline()).decode().strip()
        seen = Observations()
        background.start(session(reader_config(url), seen).run())
        await wait_until(lambda: GOLDEN_EPC in {t.epc for t in seen.tags()}, timeout_s=10)
    finally:
        process.terminate()
        async with asyncio.timeout(10):
            assert await process.wait() == 0

    (tmp_path / "bad.rec").write_text("nonsense\n")
    bad = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from simulators.cli import main; sys.exit(main())",
        "replay",
        str(tmp_path / "bad.rec"),
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(10):
        _, stderr = await bad.communicate()
    assert bad.returncode == 2
    assert stderr.decode().splitlines() == [
        f"edgegate-sim: error: {tmp_path / 'bad.rec'}:1: not a JSON line"
    ]
