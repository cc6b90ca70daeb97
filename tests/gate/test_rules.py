"""The customs rules of the foundation stage (pure: explicit records, instant and staleness)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from edgegate.gate.model import (
    ClosedPassage,
    Direction,
    ItemRecord,
    ReasonCode,
    TagSummary,
    Verdict,
)
from edgegate.gate.rules import DecideContext, decide

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
FRESH = DecideContext(now=NOW)
KNOWN = "3074257BF7194E4000001A85"
STRANGER = "E20034120000000000000BAD"


def passage(
    *epcs: str, direction: Direction = Direction.IN, readers_down: tuple[str, ...] = ()
) -> ClosedPassage:
    tags = tuple(
        TagSummary(
            epc=e,
            reads=3,
            rssi_max_dbm=-50.0,
            antennas=(1,),
            first_seen_mono_s=0.0,
            last_seen_mono_s=0.5,
        )
        for e in epcs
    )
    return ClosedPassage(
        passage_id="p1",
        opened_at_mono_s=0.0,
        closed_at_mono_s=1.3,
        close_cause="stable_set",
        direction=direction,
        tags=tags,
        readers_down=readers_down,
    )


def item(epc: str = KNOWN, **fields: object) -> ItemRecord:
    return ItemRecord(epc=epc, sku="SKU-LANCOME-50ML", owner="91460000MA5T000001", **fields)  # type: ignore[arg-type]


def codes(decision_reasons: object) -> list[str]:
    return [r.code.value for r in decision_reasons]  # type: ignore[attr-defined]


def test_all_known_and_allowed_items_pass_with_no_reason() -> None:
    decision = decide(passage(KNOWN), {KNOWN: item()}, FRESH)
    assert decision.verdict is Verdict.PASS
    assert decision.reasons == ()


def test_an_unknown_tag_holds_the_passage_and_is_named() -> None:
    decision = decide(passage(KNOWN, STRANGER), {KNOWN: item(), STRANGER: None}, FRESH)
    assert decision.verdict is Verdict.HOLD
    [reason] = decision.reasons
    assert reason.code is ReasonCode.UNKNOWN_TAG
    assert reason.epcs == (STRANGER,)
    assert decision.items[STRANGER] is None


def test_a_tag_missing_from_the_lookup_counts_as_unknown() -> None:
    decision = decide(passage(STRANGER), {}, FRESH)
    assert codes(decision.reasons) == ["UNKNOWN_TAG"]


def test_every_reason_is_collected_not_only_the_first() -> None:
    seized_expired = item(status="seized", valid_until="2026-11-01T00:00:00Z")
    decision = decide(
        passage(KNOWN, STRANGER, readers_down=("rfid-2",)),
        {KNOWN: seized_expired, STRANGER: None},
        DecideContext(now=NOW, whitelist_stale=True),
    )
    assert codes(decision.reasons) == [
        "UNKNOWN_TAG",
        "SEIZED",
        "EXPIRED",
        "WHITELIST_STALE",
        "READER_FAULT",
    ]


def test_goods_not_yet_released_may_come_in_but_not_go_out() -> None:
    pending = {KNOWN: item(status="pending_declaration")}
    assert decide(passage(KNOWN, direction=Direction.IN), pending, FRESH).verdict is Verdict.PASS
    out = decide(passage(KNOWN, direction=Direction.OUT), pending, FRESH)
    assert codes(out.reasons) == ["STATUS_NOT_RELEASED"]


def test_a_direction_the_item_does_not_allow_holds_and_unknown_direction_fails() -> None:
    inbound_only = {KNOWN: item(directions=("in",))}
    out = decide(passage(KNOWN, direction=Direction.OUT), inbound_only, FRESH)
    assert codes(out.reasons) == ["DIRECTION_NOT_ALLOWED"]
    unknown = decide(passage(KNOWN, direction=Direction.UNKNOWN), {KNOWN: item()}, FRESH)
    assert codes(unknown.reasons) == ["DIRECTION_NOT_ALLOWED"]


def test_a_stale_whitelist_holds_only_under_the_hold_policy() -> None:
    stale_hold = DecideContext(now=NOW, whitelist_stale=True, stale_policy_hold=True)
    stale_pass = DecideContext(now=NOW, whitelist_stale=True, stale_policy_hold=False)
    assert codes(decide(passage(KNOWN), {KNOWN: item()}, stale_hold).reasons) == ["WHITELIST_STALE"]
    assert decide(passage(KNOWN), {KNOWN: item()}, stale_pass).verdict is Verdict.PASS


def test_validity_ends_at_valid_until() -> None:
    assert (
        decide(passage(KNOWN), {KNOWN: item(valid_until="2026-11-25T08:00:01Z")}, FRESH).verdict
        is Verdict.PASS
    )
    assert codes(
        decide(passage(KNOWN), {KNOWN: item(valid_until="2026-11-25T08:00:00Z")}, FRESH).reasons
    ) == ["EXPIRED"]


EPCS = [f"{n:024X}" for n in range(8)]


@given(
    order=st.permutations(EPCS),
    known=st.sets(st.sampled_from(EPCS)),
    statuses=st.lists(st.sampled_from(["bonded", "seized", "arrived"]), min_size=8, max_size=8),
)
def test_the_decision_does_not_depend_on_the_order_of_reads(
    order: list[str], known: set[str], statuses: list[str]
) -> None:
    status_of = dict(zip(EPCS, statuses, strict=True))
    records = {e: item(e, status=status_of[e]) if e in known else None for e in EPCS}
    baseline = decide(passage(*EPCS, direction=Direction.OUT), records, FRESH)
    shuffled = decide(passage(*order, direction=Direction.OUT), records, FRESH)
    assert (shuffled.verdict, shuffled.reasons) == (baseline.verdict, baseline.reasons)
    # Outbound, only known bonded goods may pass.
    clean = all(e in known and status_of[e] == "bonded" for e in EPCS)
    assert (baseline.verdict is Verdict.PASS) == clean
