"""The passage tracker, driven with an explicit clock (pure logic, no I/O)."""

from __future__ import annotations

import itertools

from edgegate.gate.model import (
    BeamChanged,
    ClosedPassage,
    CodeScanned,
    Direction,
    ReaderDown,
    ReaderUp,
    TagSeen,
)
from edgegate.gate.passage import PassageEnded, PassageTracker, TrackerSettings

A, B, C = "3074257BF7194E4000001A85", "3074257BF7194E4000001A86", "3074257BF7194E4000001A87"


def tracker(**overrides: object) -> PassageTracker:
    ids = (f"p{n}" for n in itertools.count(1))
    settings = TrackerSettings(**{"stable_set_s": 0.8, "depart_s": 2.0, **overrides})  # type: ignore[arg-type]
    return PassageTracker(settings, new_id=lambda: next(ids))


def read(epc: str, at: float, antenna: int = 1, rssi: float = -55.0) -> TagSeen:
    return TagSeen(reader="rfid-1", epc=epc, antenna=antenna, rssi_dbm=rssi, at_mono_s=at)


def test_first_tag_opens_a_passage_and_a_stable_set_closes_it() -> None:
    t = tracker()
    assert t.observe(read(A, 10.0)) == []
    assert t.open_passage_id == "p1"
    assert t.observe(read(B, 10.5)) == []
    assert t.tick(11.29) == []
    [closed] = t.tick(11.3)
    assert closed.passage_id == "p1"
    assert closed.close_cause == "stable_set"
    assert sorted(closed.epcs) == [A, B]
    assert t.open_passage_id is None


def test_repeated_reads_are_counted_once_with_peak_rssi_and_antennas() -> None:
    t = tracker()
    for n, (antenna, rssi) in enumerate([(1, -60.0), (2, -50.0), (1, -70.0)]):
        t.observe(read(A, 1.0 + n * 0.1, antenna=antenna, rssi=rssi))
    [closed] = t.tick(5.0)
    [tag] = closed.tags
    assert (tag.reads, tag.rssi_max_dbm, tag.antennas) == (3, -50.0, (1, 2))
    assert (tag.first_seen_mono_s, tag.last_seen_mono_s) == (1.0, 1.2)


def test_repeats_of_a_known_tag_do_not_extend_the_stable_set() -> None:
    t = tracker()
    t.observe(read(A, 0.0))
    for n in range(1, 8):
        assert t.observe(read(A, n * 0.1)) == []
    [closed] = t.observe(read(A, 0.85))
    assert closed.closed_at_mono_s == 0.85


def test_reads_below_the_rssi_floor_are_ignored() -> None:
    t = tracker(min_rssi_dbm=-70.0)
    t.observe(read(A, 0.0, rssi=-71.0))
    assert t.open_passage_id is None
    t.observe(read(B, 0.1, rssi=-70.0))
    [closed] = t.tick(2.0)
    assert closed.epcs == (B,)


def test_max_open_closes_a_passage_that_keeps_growing() -> None:
    t = tracker(max_open_s=3.0)
    closed = []
    for n in range(40):
        closed += t.observe(read(f"{n:024X}", n * 0.1))
    assert len(closed) == 1
    assert closed[0].close_cause == "max_open"
    assert closed[0].closed_at_mono_s == 3.0


def test_a_lingering_tag_neither_opens_nor_joins_until_it_has_departed() -> None:
    t = tracker()
    t.observe(read(A, 0.0))
    [first] = t.tick(1.0)
    # The pallet keeps sitting in front of the antennas: still one decision.
    for n in range(30):
        assert t.observe(read(A, 1.0 + n * 0.1)) == []
    assert t.open_passage_id is None
    # A new tag opens a passage of its own without the lingering one.
    t.observe(read(B, 4.0))
    t.observe(read(A, 4.1))
    [second] = t.tick(5.0)
    assert second.epcs == (B,)
    # Gone for depart_s (last read 4.1): A counts again.
    t.observe(read(A, 6.2))
    [third] = t.tick(7.1)
    assert first.epcs == third.epcs == (A,)


def test_each_lingering_tag_departs_on_its_own_last_read() -> None:
    t = tracker()
    for epc in (A, B, C):
        t.observe(read(epc, 0.0))
    [first] = t.tick(1.0)
    t.observe(read(B, 1.5))  # B is still in the field, and C longer still
    t.observe(read(C, 1.9))
    assert t.next_deadline() == 2.0  # A's departure (last read 0.0)
    # At 3.6 A (last read 0.0) and B (1.5) have gone; C (1.9) has not.
    t.tick(3.6)
    for epc in (A, B, C):
        t.observe(read(epc, 3.6))
    [second] = t.tick(4.5)
    assert sorted(first.epcs) == [A, B, C]
    assert sorted(second.epcs) == [A, B]


def test_a_reader_down_during_the_passage_is_recorded() -> None:
    t = tracker()
    t.observe(read(A, 0.0))
    t.observe(ReaderDown(reader="rfid-2", reason="eof", at_mono_s=0.2))
    t.observe(ReaderUp(reader="rfid-2", at_mono_s=0.3))
    [closed] = t.tick(1.0)
    assert closed.readers_down == ("rfid-2",)
    t.observe(read(B, 5.0))
    [clean] = t.tick(6.0)
    assert clean.readers_down == ()


def test_a_passage_opened_while_a_reader_is_down_names_it() -> None:
    t = tracker()
    t.observe(ReaderDown(reader="rfid-2", reason="eof", at_mono_s=0.0))
    t.observe(read(A, 0.5))
    [closed] = t.tick(2.0)
    assert closed.readers_down == ("rfid-2",)


def test_codes_scanned_during_a_passage_join_it() -> None:
    t = tracker()
    t.observe(read(A, 0.0))
    t.observe(CodeScanned(reader="scan-1", value="HP4601202611250001", at_mono_s=0.3))
    [closed] = t.tick(1.0)
    assert [c.value for c in closed.codes] == ["HP4601202611250001"]


def test_direction_comes_from_config_or_antenna_order() -> None:
    fixed = tracker(direction=Direction.OUT)
    fixed.observe(read(A, 0.0))
    assert fixed.tick(1.0)[0].direction is Direction.OUT

    zones = {"outside_antennas": frozenset({1}), "inside_antennas": frozenset({2})}
    inbound = tracker(**zones)
    inbound.observe(read(A, 0.0, antenna=1))
    inbound.observe(read(A, 0.2, antenna=2))
    assert inbound.tick(1.0)[0].direction is Direction.IN

    outbound = tracker(**zones)
    outbound.observe(read(A, 0.0, antenna=2))
    outbound.observe(read(B, 0.3, antenna=1))
    assert outbound.tick(2.0)[0].direction is Direction.OUT

    unknown = tracker(**zones)
    unknown.observe(read(A, 0.0, antenna=1))
    assert unknown.tick(1.0)[0].direction is Direction.UNKNOWN


def test_next_deadline_is_the_stable_set_close_then_the_departure() -> None:
    t = tracker()
    assert t.next_deadline() is None
    t.observe(read(A, 10.0))
    assert t.next_deadline() == 10.8
    t.tick(10.8)
    assert t.next_deadline() == 12.0
    t.tick(12.0)
    assert t.next_deadline() is None


def test_flush_closes_the_open_passage_for_shutdown() -> None:
    t = tracker()
    assert t.flush(0.0) == []
    t.observe(read(A, 0.0))
    [closed] = t.flush(0.1)
    assert closed.close_cause == "shutdown"


def beam(name: str, broken: bool, at: float) -> BeamChanged:
    return BeamChanged(reader="io-1", beam=name, broken=broken, at_mono_s=at)


def test_portal_waits_for_the_beams_to_clear_before_closing() -> None:
    t = tracker()
    t.observe(beam("A", True, 0.0))
    assert t.open_passage_id == "p1"
    t.observe(read(A, 0.2))
    # Stable at 1.0, but only the beams clearing can close it: no deadline before max_open.
    assert t.next_deadline() == 30.0
    assert t.tick(5.0) == []  # stable long ago, but the pallet is still in the portal
    [closed] = t.observe(beam("A", False, 5.5))
    assert isinstance(closed, ClosedPassage)
    assert closed.direction is Direction.IN
    assert closed.direction_evidence == "beam A broke first"


def test_an_empty_passage_is_still_decided() -> None:
    t = tracker()
    t.observe(beam("B", True, 0.0))
    t.observe(beam("B", False, 0.4))
    [closed] = t.tick(0.8)
    assert isinstance(closed, ClosedPassage)
    assert closed.tags == ()
    assert closed.direction is Direction.OUT


def test_barrier_decides_when_stable_and_a_pass_is_scanned_then_ends_on_clear() -> None:
    t = tracker(barrier_mode=True, pass_wait_s=5.0)
    t.observe(beam("A", True, 0.0))
    t.observe(read(A, 0.1))
    assert t.tick(2.0) == []  # stable, waiting for a pass
    [closed] = t.observe(CodeScanned(reader="scan-1", value="HP4601202611250001", at_mono_s=2.5))
    assert isinstance(closed, ClosedPassage)
    assert closed.close_cause == "pass_scanned"
    t.observe(beam("B", True, 3.0))
    assert t.observe(beam("A", False, 4.0)) == []  # still in the lane
    [ended] = t.observe(beam("B", False, 5.0))
    assert ended == PassageEnded("p1", 5.0)


def test_barrier_decides_without_a_pass_after_pass_wait() -> None:
    t = tracker(barrier_mode=True, pass_wait_s=5.0)
    t.observe(beam("A", True, 0.0))
    t.observe(read(A, 0.1))
    # Stable at 0.9, but without a code only pass_wait can close it.
    assert t.next_deadline() == 5.9
    assert t.tick(5.89) == []
    [closed] = t.tick(5.9)
    assert isinstance(closed, ClosedPassage)
    assert closed.close_cause == "pass_wait"


def test_a_vehicle_that_backs_out_is_decided_as_it_stands() -> None:
    t = tracker(barrier_mode=True, pass_wait_s=5.0)
    t.observe(beam("A", True, 0.0))
    t.observe(read(A, 0.1))
    [closed] = t.observe(beam("A", False, 0.5))
    assert isinstance(closed, ClosedPassage)
    assert closed.close_cause == "backed_out"
    assert closed.epcs == (A,)


def test_a_beam_break_while_the_decided_vehicle_is_still_in_the_lane_opens_nothing() -> None:
    t = tracker(barrier_mode=True, pass_wait_s=0.0)
    t.observe(beam("A", True, 0.0))
    t.observe(read(A, 0.1))
    t.tick(1.0)
    t.observe(beam("B", True, 1.5))
    assert t.open_passage_id is None


def test_barrier_with_a_pass_scanned_closes_once_stable() -> None:
    t = tracker(barrier_mode=True, pass_wait_s=5.0)
    t.observe(beam("A", True, 0.0))
    t.observe(read(A, 0.1))
    t.observe(CodeScanned(reader="scan-1", value="HP4601202611250001", at_mono_s=0.3))
    assert t.next_deadline() == 0.9
    [closed] = t.tick(0.9)
    assert isinstance(closed, ClosedPassage)
    assert closed.close_cause == "pass_scanned"
