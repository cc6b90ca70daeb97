"""Scanner line framing (PROTOCOLS.md §3): suffixes, GS, chunking, bounds, bad bytes."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgegate.wire.lines import CR_SUFFIX, CRLF_SUFFIX, LF_SUFFIX, Ctl, LineDecoder

PASS_NO = "HP4601202611250001"
# A GS1 code (GTIN, then batch after a GS separator), as a 2D scanner sends it.
GS1 = "0106141411234567\x1d10ABC123"
TRACE_CODE = "1234567890123456"


def feed(decoder: LineDecoder, chunks: Iterable[bytes]) -> list[str]:
    return [code for chunk in chunks for code in decoder.receive_data(chunk)]


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def stream(codes: Iterable[str], suffix: bytes) -> bytes:
    return b"".join(code.encode() + suffix for code in codes)


@pytest.mark.parametrize("suffix", [CR_SUFFIX, CRLF_SUFFIX, LF_SUFFIX], ids=["cr", "crlf", "lf"])
def test_codes_end_at_the_configured_suffix_whole_and_byte_at_a_time(suffix: bytes) -> None:
    data = stream([PASS_NO, GS1, TRACE_CODE], suffix)

    assert feed(LineDecoder(suffix), [data]) == [PASS_NO, GS1, TRACE_CODE]
    assert feed(LineDecoder(suffix), one_byte_at_a_time(data)) == [PASS_NO, GS1, TRACE_CODE]


@pytest.mark.parametrize("suffix", [CR_SUFFIX, CRLF_SUFFIX, LF_SUFFIX], ids=["cr", "crlf", "lf"])
def test_a_code_split_at_every_byte_decodes_once(suffix: bytes) -> None:
    data = stream([GS1], suffix)
    for cut in range(1, len(data)):
        assert feed(LineDecoder(suffix), [data[:cut], data[cut:]]) == [GS1], cut


def test_gs_separators_are_kept_inside_the_code() -> None:
    (code,) = LineDecoder(CR_SUFFIX).receive_data(GS1.encode() + b"\r")

    assert code.split(chr(Ctl.GS)) == ["0106141411234567", "10ABC123"]


def test_iso_15434_envelope_bytes_are_kept() -> None:
    envelope = "[)>\x1e06\x1d1PABC\x1e\x04"

    assert LineDecoder(CR_SUFFIX).receive_data(envelope.encode() + b"\r") == [envelope]


def test_nothing_is_emitted_until_the_suffix_arrives() -> None:
    decoder = LineDecoder(CR_SUFFIX)

    assert decoder.receive_data(PASS_NO.encode()) == []
    assert decoder.buffered == len(PASS_NO)
    assert decoder.receive_data(b"\r") == [PASS_NO]
    assert decoder.buffered == 0


def test_crlf_decoder_keeps_a_lone_cr_as_data_and_emits_no_empty_code() -> None:
    decoder = LineDecoder(CRLF_SUFFIX)

    codes = feed(decoder, one_byte_at_a_time(b"\r" + b"line 1\rline 2\r\n"))

    assert codes == ["\rline 1\rline 2"]


def test_cr_decoder_fed_crlf_drops_the_lf_that_would_start_the_next_code() -> None:
    data = stream([PASS_NO, TRACE_CODE], CRLF_SUFFIX)

    assert feed(LineDecoder(CR_SUFFIX), [data]) == [PASS_NO, TRACE_CODE]
    assert feed(LineDecoder(CR_SUFFIX), one_byte_at_a_time(data)) == [PASS_NO, TRACE_CODE]


def test_cr_decoder_keeps_an_lf_that_does_not_follow_the_suffix() -> None:
    assert LineDecoder(CR_SUFFIX).receive_data(b"two\nlines\r") == ["two\nlines"]


def test_lf_decoder_fed_crlf_drops_the_cr_before_the_suffix() -> None:
    data = stream([PASS_NO, TRACE_CODE], CRLF_SUFFIX)

    assert feed(LineDecoder(LF_SUFFIX), one_byte_at_a_time(data)) == [PASS_NO, TRACE_CODE]


@pytest.mark.parametrize("suffix", [CR_SUFFIX, CRLF_SUFFIX, LF_SUFFIX], ids=["cr", "crlf", "lf"])
def test_empty_lines_are_not_codes(suffix: bytes) -> None:
    assert LineDecoder(suffix).receive_data(suffix * 3 + PASS_NO.encode() + suffix) == [PASS_NO]


def test_junk_before_a_suffix_is_a_code_of_its_own_and_the_next_code_is_intact() -> None:
    # Line framing has nothing to resynchronise on but the suffix: line noise becomes a code
    # that matches no whitelist key (a hold, never a pass), and the next scan is clean.
    decoder = LineDecoder(CR_SUFFIX)

    codes = decoder.receive_data(b"\x00~~\r" + PASS_NO.encode() + b"\r")

    assert codes == ["\x00~~", PASS_NO]


@pytest.mark.parametrize("suffix", [CR_SUFFIX, CRLF_SUFFIX, LF_SUFFIX], ids=["cr", "crlf", "lf"])
@pytest.mark.parametrize("chunking", ["whole", "bytewise"])
def test_an_overlong_line_is_dropped_whole_and_counted_once(suffix: bytes, chunking: str) -> None:
    decoder = LineDecoder(suffix, max_len=len(PASS_NO))
    data = b"X" * 40 + suffix + PASS_NO.encode() + suffix + b"Y" * (len(PASS_NO) + 1) + suffix
    chunks = [data] if chunking == "whole" else one_byte_at_a_time(data)

    assert feed(decoder, chunks) == [PASS_NO]
    assert decoder.overlong == 2
    assert decoder.buffered == 0


def test_a_code_of_exactly_max_len_bytes_is_kept() -> None:
    decoder = LineDecoder(CRLF_SUFFIX, max_len=len(PASS_NO))

    assert feed(decoder, one_byte_at_a_time(PASS_NO.encode() + b"\r\n")) == [PASS_NO]
    assert decoder.overlong == 0


@given(data=st.binary(max_size=300), max_len=st.integers(1, 20))
def test_the_buffer_never_holds_more_than_max_len_and_a_split_suffix(
    data: bytes, max_len: int
) -> None:
    decoder = LineDecoder(CRLF_SUFFIX, max_len=max_len)
    for chunk in one_byte_at_a_time(data):
        decoder.receive_data(chunk)
        assert decoder.buffered <= max_len + 1


def test_bytes_that_are_not_utf8_become_replacement_characters_and_are_counted() -> None:
    decoder = LineDecoder(CR_SUFFIX)

    codes = decoder.receive_data("通行".encode("gbk") + b"-7\r" + PASS_NO.encode() + b"\r")

    assert codes[0].endswith("-7")
    assert "\ufffd" in codes[0]
    assert codes[1] == PASS_NO
    assert (decoder.codes, decoder.undecodable) == (2, 1)


def test_utf8_codes_decode_unchanged() -> None:
    assert LineDecoder(LF_SUFFIX).receive_data("琼A12345\n".encode()) == ["琼A12345"]


@pytest.mark.parametrize("suffix", [b"", b"\r\r", b"\x03", b"\n\r"])
def test_only_cr_crlf_and_lf_are_suffixes(suffix: bytes) -> None:
    with pytest.raises(ValueError, match="suffix"):
        LineDecoder(suffix)


def test_max_len_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_len"):
        LineDecoder(CR_SUFFIX, max_len=0)


_CODE_TEXT = st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), min_size=1
)


@given(
    codes=st.lists(_CODE_TEXT, max_size=8),
    suffix=st.sampled_from([CR_SUFFIX, CRLF_SUFFIX, LF_SUFFIX]),
    cuts=st.lists(st.integers(0, 400), max_size=12),
)
def test_codes_and_counters_do_not_depend_on_how_the_stream_is_chunked(
    codes: list[str], suffix: bytes, cuts: list[int]
) -> None:
    data = stream(codes, suffix)
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(edges)]
    whole, chunked = LineDecoder(suffix, max_len=64), LineDecoder(suffix, max_len=64)

    expected = feed(whole, [data])

    assert feed(chunked, chunks) == expected
    assert (chunked.codes, chunked.overlong) == (whole.codes, whole.overlong)
    assert expected == [c for c in codes if len(c.encode()) <= 64]
