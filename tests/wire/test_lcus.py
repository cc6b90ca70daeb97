"""LCUS relay frames against PROTOCOLS.md §4: golden vectors, chunking, junk, false headers."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgegate.wire.lcus import LcusDecoder, RelayCommand, encode

# Verbatim from PROTOCOLS.md §4.
CH1_ON = bytes.fromhex("A0 01 01 A2")
CH1_OFF = bytes.fromhex("A0 01 00 A1")


def feed(decoder: LcusDecoder, chunks: Iterable[bytes]) -> list[RelayCommand]:
    return [command for chunk in chunks for command in decoder.receive_data(chunk)]


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def test_channel_1_on_and_off_encode_to_the_documented_frames() -> None:
    assert encode(1, on=True) == CH1_ON
    assert encode(1, on=False) == CH1_OFF


@pytest.mark.parametrize("chunking", ["whole", "bytewise"])
def test_documented_frames_decode_whole_and_byte_at_a_time(chunking: str) -> None:
    data = CH1_ON + CH1_OFF
    chunks = [data] if chunking == "whole" else one_byte_at_a_time(data)
    decoder = LcusDecoder()

    assert feed(decoder, chunks) == [RelayCommand(1, True), RelayCommand(1, False)]
    assert decoder.frames == 2


def test_junk_around_frames_is_skipped_and_counted_once_per_run() -> None:
    decoder = LcusDecoder()
    data = b"\x00\x55\xff" + CH1_ON + b"\x13\x11" + CH1_OFF + b"\x7f"

    assert feed(decoder, one_byte_at_a_time(data)) == [
        RelayCommand(1, True),
        RelayCommand(1, False),
    ]
    assert decoder.resyncs == 3


def test_a_frame_behind_a_false_header_is_still_found() -> None:
    decoder = LcusDecoder()

    # A0 A0 01 01: a candidate whose sum byte fails; the real frame starts one byte later.
    assert decoder.receive_data(b"\xa0" + CH1_ON) == [RelayCommand(1, True)]
    assert decoder.checksum_errors == 1


@pytest.mark.parametrize(
    "frame", [bytes.fromhex("A0 00 01 A1"), bytes.fromhex("A0 01 02 A3")], ids=["ch0", "state2"]
)
def test_frames_naming_channel_0_or_a_state_other_than_0_or_1_are_rejected(frame: bytes) -> None:
    decoder = LcusDecoder()

    assert decoder.receive_data(frame) == []
    assert decoder.malformed == 1


def test_a_corrupted_sum_never_switches_a_relay() -> None:
    decoder = LcusDecoder()

    assert decoder.receive_data(bytes.fromhex("A0 01 01 A3")) == []
    assert decoder.checksum_errors == 1


@pytest.mark.parametrize("channel", [0, 256, -1])
def test_channels_outside_1_to_255_cannot_be_encoded(channel: int) -> None:
    with pytest.raises(ValueError, match="channel"):
        encode(channel, on=True)


@given(
    commands=st.lists(st.builds(RelayCommand, st.integers(1, 255), st.booleans()), max_size=10),
    cuts=st.lists(st.integers(0, 60), max_size=10),
)
def test_any_commands_survive_any_chunking(commands: list[RelayCommand], cuts: list[int]) -> None:
    data = b"".join(encode(c.channel, c.on) for c in commands)
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    decoder = LcusDecoder()

    assert feed(decoder, [data[a:b] for a, b in itertools.pairwise(edges)]) == commands
    assert (decoder.checksum_errors, decoder.malformed, decoder.resyncs) == (0, 0, 0)


@given(junk=st.binary(max_size=40), cuts=st.lists(st.integers(0, 60), max_size=10))
def test_counters_do_not_depend_on_chunking(junk: bytes, cuts: list[int]) -> None:
    data = junk + CH1_ON
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    whole, chunked = LcusDecoder(), LcusDecoder()

    expected = whole.receive_data(data)

    assert feed(chunked, [data[a:b] for a, b in itertools.pairwise(edges)]) == expected
    assert (chunked.checksum_errors, chunked.malformed, chunked.resyncs) == (
        whole.checksum_errors,
        whole.malformed,
        whole.resyncs,
    )
