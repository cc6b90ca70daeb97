"""The customs rules of DESIGN.md §8 as a table of cases (pure: explicit records and instant)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import pytest
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
from edgegate.gate.rules import DecideContext, Facts, InspectionPolicy, decide, draw
from edgegate.whitelist.records import (
    DestinationKind,
    DestinationRecord,
    EnterpriseRecord,
    PassLine,
    PassRecord,
    PassType,
    Tier,
    VehicleRecord,
)

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
OWNER, OTHER_OWNER = "91460000MA5T000001", "91460000MA5T000002"
A, B, C = "3074257BF7194E4000001A85", "3074257BF7194E4000001A86", "3074257BF7194E4000001A87"
STRANGER = "E20034120000000000000BAD"
TRUCK = "E20000000000000000001234"
SHOP = DestinationRecord(id="DFS-HAIKOU-01", kind=DestinationKind.DUTY_FREE_SHOP)
WAREHOUSE = DestinationRecord(id="BW-01", kind=DestinationKind.BONDED_WAREHOUSE)


def item(epc: str, **fields: object) -> ItemRecord:
    base: dict[str, object] = {"sku": "SKU-LANCOME-50ML", "owner": OWNER, "status": "bonded"}
    return ItemRecord(epc=epc, **{**base, **fields})  # type: ignore[arg-type]


def gate_pass(**fields: object) -> PassRecord:
    base: dict[str, object] = {
        "pass_no": "HP4601202611250001",
        "pass_type": PassType.FIRST_LINE,
        "direction": Direction.IN,
        "status": "approved",
        "vehicle_no": "琼A12345",
        "vehicle_tag": TRUCK,
        "owner": OWNER,
        "destination": None,
        "lines": (PassLine("SKU-LANCOME-50ML", 2),),
        "valid_until": "2026-11-26T00:00:00Z",
    }
    return PassRecord(**{**base, **fields})  # type: ignore[arg-type]


def passage(
    *epcs: str,
    direction: Direction = Direction.IN,
    tids: Mapping[str, str] = {},
    readers_down: tuple[str, ...] = (),
    passage_id: str = "p1",
) -> ClosedPassage:
    tags = tuple(
        TagSummary(
            epc=e,
            reads=3,
            rssi_max_dbm=-50.0,
            antennas=(1,),
            first_seen_mono_s=0.0,
            last_seen_mono_s=0.5,
            tid=tids.get(e),
        )
        for e in epcs
    )
    return ClosedPassage(
        passage_id=passage_id,
        opened_at_mono_s=0.0,
        closed_at_mono_s=1.3,
        close_cause="stable_set",
        direction=direction,
        tags=tags,
        codes=(),
        readers_down=readers_down,
    )


PORTAL = DecideContext(now=NOW)


@dataclass(frozen=True)
class Case:
    name: str
    epcs: tuple[str, ...]
    items: Mapping[str, ItemRecord]
    expect: tuple[str, ...]
    direction: Direction = Direction.IN
    gate_pass: PassRecord | None = None
    scanned_pass_no: str | None = None
    vehicles: Mapping[str, VehicleRecord] = field(default_factory=dict)
    enterprises: Mapping[str, EnterpriseRecord] = field(default_factory=dict)
    destination: DestinationRecord | None = None
    departed: frozenset[str] = frozenset()
    tids: Mapping[str, str] = field(default_factory=dict)
    context: DecideContext = PORTAL


TRUCK_RECORD = VehicleRecord(vehicle_tag=TRUCK, vehicle_no="琼A12345", owner=OWNER)
BARRIER = DecideContext(now=NOW, barrier_mode=True)
TWO = {A: item(A), B: item(B)}

CASES = [
    Case("known bonded goods in a portal pass", (A, B), TWO, ()),
    Case("an unknown tag holds", (A, STRANGER), {A: item(A)}, ("UNKNOWN_TAG",)),
    Case(
        "a TID that differs from the record is a clone",
        (A,),
        {A: item(A, tid="E2801160200074CF085B0A9B")},
        ("CLONED_TAG",),
        tids={A: "E2801160200074CF00000000"},
    ),
    Case(
        "a matching TID is fine",
        (A,),
        {A: item(A, tid="E2801160200074CF085B0A9B")},
        (),
        tids={A: "e2801160200074cf085b0a9b"},
    ),
    Case(
        "an EPC that already left going out again is a clone",
        (A,),
        {A: item(A)},
        ("CLONED_TAG",),
        direction=Direction.OUT,
        departed=frozenset({A}),
    ),
    Case("an EPC that left may come back in", (A,), {A: item(A)}, (), departed=frozenset({A})),
    Case("a seized item holds", (A,), {A: item(A, status="seized")}, ("SEIZED",)),
    Case(
        "enter first, declare later: pending goods come in",
        (A,),
        {A: item(A, status="pending_declaration")},
        (),
    ),
    Case(
        "enter first, declare later: pending goods may not go out",
        (A,),
        {A: item(A, status="pending_declaration")},
        ("STATUS_NOT_RELEASED",),
        direction=Direction.OUT,
    ),
    Case(
        "arrived goods may not go out",
        (A,),
        {A: item(A, status="arrived")},
        ("STATUS_NOT_RELEASED",),
        direction=Direction.OUT,
    ),
    Case(
        "bonded goods toward a duty-free shop without conversion hold",
        (A, B),
        TWO,
        ("STATUS_NOT_RELEASED",),
        direction=Direction.OUT,
        gate_pass=gate_pass(direction=Direction.OUT, destination=SHOP.id),
        destination=SHOP,
        context=BARRIER,
    ),
    Case(
        "bonded goods with a conversion record reach the duty-free shop",
        (A, B),
        {e: item(e, conversion_ref="CV-2026-001") for e in (A, B)},
        (),
        direction=Direction.OUT,
        gate_pass=gate_pass(direction=Direction.OUT, destination=SHOP.id),
        destination=SHOP,
        context=BARRIER,
    ),
    Case(
        "duty-free goods out toward a bonded warehouse hold",
        (A, B),
        {e: item(e, status="duty_free") for e in (A, B)},
        ("DESTINATION_NOT_ALLOWED",),
        direction=Direction.OUT,
        gate_pass=gate_pass(direction=Direction.OUT, destination=WAREHOUSE.id),
        destination=WAREHOUSE,
        context=BARRIER,
    ),
    Case(
        "duty-free goods out toward a duty-free shop pass",
        (A, B),
        {e: item(e, status="duty_free") for e in (A, B)},
        (),
        direction=Direction.OUT,
        gate_pass=gate_pass(direction=Direction.OUT, destination=SHOP.id),
        destination=SHOP,
        context=BARRIER,
    ),
    Case(
        "an item not licensed for the pass's destination holds",
        (A, B),
        {e: item(e, status="duty_free", destinations=("DFS-SANYA-02",)) for e in (A, B)},
        ("DESTINATION_NOT_ALLOWED",),
        direction=Direction.OUT,
        gate_pass=gate_pass(direction=Direction.OUT, destination=SHOP.id),
        destination=SHOP,
        context=BARRIER,
    ),
    Case(
        "an item whose directions exclude this one holds",
        (A,),
        {A: item(A, directions=("out",))},
        ("DIRECTION_NOT_ALLOWED",),
    ),
    Case(
        "an unknown direction fails every direction check",
        (A,),
        {A: item(A)},
        ("DIRECTION_NOT_ALLOWED",),
        direction=Direction.UNKNOWN,
    ),
    Case("goods in a vehicle lane without a pass hold", (A, B), TWO, ("NO_PASS",), context=BARRIER),
    Case("an empty lane passage needs no pass", (), {}, (), context=BARRIER),
    Case(
        "a truck with its approved pass and the declared goods passes",
        (TRUCK, A, B),
        TWO,
        (),
        gate_pass=gate_pass(),
        vehicles={TRUCK: TRUCK_RECORD},
        context=BARRIER,
    ),
    Case(
        "a scanned pass number the whitelist does not know holds",
        (A, B),
        TWO,
        ("PASS_NOT_APPROVED",),
        scanned_pass_no="HP4601202611259999",
        context=BARRIER,
    ),
    Case(
        "a pass that is not approved holds",
        (A, B),
        TWO,
        ("PASS_NOT_APPROVED",),
        gate_pass=gate_pass(status="cancelled"),
        context=BARRIER,
    ),
    Case(
        "an expired pass holds",
        (A, B),
        TWO,
        ("PASS_NOT_APPROVED",),
        gate_pass=gate_pass(valid_until="2026-11-25T07:59:59Z"),
        context=BARRIER,
    ),
    Case(
        "a pass for the other direction holds",
        (A, B),
        TWO,
        ("PASS_NOT_APPROVED",),
        gate_pass=gate_pass(direction=Direction.OUT),
        context=BARRIER,
    ),
    Case(
        "another truck than the pass names holds",
        ("E20000000000000000009999", A, B),
        TWO,
        ("VEHICLE_MISMATCH",),
        gate_pass=gate_pass(),
        vehicles={
            "E20000000000000000009999": VehicleRecord(
                vehicle_tag="E20000000000000000009999", vehicle_no="琼B99999"
            )
        },
        context=BARRIER,
    ),
    Case(
        "a pass naming no vehicle is not checked against one",
        (TRUCK, A, B),
        TWO,
        (),
        gate_pass=gate_pass(vehicle_no=None, vehicle_tag=None),
        vehicles={TRUCK: TRUCK_RECORD},
        context=BARRIER,
    ),
    Case(
        "another owner's goods on the pass hold",
        (A, B),
        {A: item(A), B: item(B, owner=OTHER_OWNER)},
        ("OWNER_MISMATCH",),
        gate_pass=gate_pass(),
        context=BARRIER,
    ),
    Case(
        "one item missing from the manifest holds",
        (A,),
        {A: item(A)},
        ("MANIFEST_MISMATCH",),
        gate_pass=gate_pass(),
        context=BARRIER,
    ),
    Case(
        "an extra SKU against the manifest holds",
        (A, B, C),
        {**TWO, C: item(C, sku="SKU-SK2-230ML")},
        ("MANIFEST_MISMATCH",),
        gate_pass=gate_pass(),
        context=BARRIER,
    ),
    Case(
        "an empty-vehicle pass with goods aboard holds",
        (A,),
        {A: item(A)},
        ("MANIFEST_MISMATCH",),
        gate_pass=gate_pass(pass_type=PassType.EMPTY_VEHICLE, lines=()),
        context=BARRIER,
    ),
    Case(
        "a blacklisted owner holds",
        (A,),
        {A: item(A)},
        ("BLACKLISTED",),
        enterprises={OWNER: EnterpriseRecord(OWNER, Tier.REGULAR, blacklisted=True)},
    ),
    Case(
        "an item past valid_until holds",
        (A,),
        {A: item(A, valid_until="2026-11-25T08:00:00Z")},
        ("EXPIRED",),
    ),
    Case(
        "a stale whitelist holds under the hold policy",
        (A,),
        {A: item(A)},
        ("WHITELIST_STALE",),
        context=DecideContext(now=NOW, whitelist_stale=True),
    ),
    Case(
        "a stale whitelist passes under the pass policy",
        (A,),
        {A: item(A)},
        (),
        context=DecideContext(now=NOW, whitelist_stale=True, stale_policy_hold=False),
    ),
    Case(
        "a customs reject holds",
        (A,),
        {A: item(A)},
        ("CUSTOMS_HOLD",),
        context=DecideContext(now=NOW, customs_disposition="reject"),
    ),
    Case(
        "a customs manual disposition holds",
        (A,),
        {A: item(A)},
        ("CUSTOMS_HOLD",),
        context=DecideContext(now=NOW, customs_disposition="manual"),
    ),
    Case(
        "a customs release changes nothing",
        (A,),
        {A: item(A)},
        (),
        context=DecideContext(now=NOW, customs_disposition="release"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rule_table(case: Case) -> None:
    facts = Facts(
        items={e: case.items.get(e) for e in case.epcs if e not in case.vehicles},
        vehicles=case.vehicles,
        gate_pass=case.gate_pass,
        scanned_pass_no=case.scanned_pass_no,
        enterprises=case.enterprises,
        destination=case.destination,
        departed=case.departed,
    )
    decision = decide(
        passage(*case.epcs, direction=case.direction, tids=case.tids), facts, case.context
    )
    assert tuple(r.code.value for r in decision.reasons) == case.expect
    assert (decision.verdict is Verdict.PASS) == (not case.expect)


def test_a_reader_down_during_the_passage_holds_with_its_name() -> None:
    decision = decide(
        passage(A, readers_down=("rfid-2",)), Facts(items={A: item(A)}), DecideContext(now=NOW)
    )
    [reason] = decision.reasons
    assert reason.code is ReasonCode.READER_FAULT
    assert reason.detail == "reader down: rfid-2"


def test_every_reason_is_collected_not_only_the_first() -> None:
    seized_expired = item(A, status="seized", valid_until="2026-11-01T00:00:00Z")
    decision = decide(
        passage(A, STRANGER, readers_down=("rfid-2",)),
        Facts(items={A: seized_expired, STRANGER: None}),
        DecideContext(now=NOW, whitelist_stale=True),
    )
    assert [r.code.value for r in decision.reasons] == [
        "UNKNOWN_TAG",
        "SEIZED",
        "EXPIRED",
        "WHITELIST_STALE",
        "READER_FAULT",
    ]
    unknown = decision.reasons[0]
    assert unknown.epcs == (STRANGER,)
    assert decision.items[STRANGER] is None


def test_the_manifest_detail_names_the_sku_and_both_counts() -> None:
    decision = decide(passage(A), Facts(items={A: item(A)}, gate_pass=gate_pass()), BARRIER)
    [reason] = decision.reasons
    assert reason.detail == "SKU-LANCOME-50ML read 1, declared 2"


def test_an_overdue_declaration_is_an_alarm_never_a_reason() -> None:
    overdue = item(A, status="pending_declaration", declare_by="2026-11-20T00:00:00Z")
    decision = decide(passage(A), Facts(items={A: overdue}), DecideContext(now=NOW))
    assert decision.verdict is Verdict.PASS
    assert decision.overdue_epcs == (A,)


def test_the_pass_and_vehicle_are_reported_with_the_decision() -> None:
    decision = decide(
        passage(TRUCK, A, B),
        Facts(items=TWO, vehicles={TRUCK: TRUCK_RECORD}, gate_pass=gate_pass()),
        BARRIER,
    )
    assert (decision.vehicle_tag, decision.pass_no) == (TRUCK, "HP4601202611250001")
    assert decision.items[TRUCK] is None


def policy(rates: Mapping[str, float]) -> InspectionPolicy:
    return InspectionPolicy(enabled=True, seed=b"secret-seed", seed_id="s1", rates=rates)


RATES = {
    "advanced": 0.005,
    "certified": 0.015,
    "regular": 0.025,
    "discredited": 0.8,
    "severely_discredited": 1.0,
}


def test_the_random_draw_is_hmac_of_the_passage_id_and_recorded() -> None:
    decision = decide(
        passage(A, passage_id="p-42"),
        Facts(items={A: item(A)}),
        DecideContext(now=NOW, inspection=policy(RATES)),
    )
    assert decision.inspection is not None
    assert decision.inspection.p == 0.025  # no enterprise record: regular
    assert decision.inspection.seed_id == "s1"
    assert decision.inspection.drawn == (draw(b"secret-seed", "p-42") < 0.025)


def test_a_severely_discredited_owner_is_always_inspected_and_the_highest_rate_applies() -> None:
    enterprises = {
        OWNER: EnterpriseRecord(OWNER, Tier.ADVANCED),
        OTHER_OWNER: EnterpriseRecord(OTHER_OWNER, Tier.SEVERELY_DISCREDITED),
    }
    decision = decide(
        passage(A, B),
        Facts(items={A: item(A), B: item(B, owner=OTHER_OWNER)}, enterprises=enterprises),
        DecideContext(now=NOW, inspection=policy(RATES)),
    )
    assert decision.inspection is not None
    assert decision.inspection.p == 1.0
    assert [r.code.value for r in decision.reasons] == ["RANDOM_INSPECTION"]


def test_the_draw_is_deterministic_and_uniform_enough() -> None:
    values = [draw(b"seed", f"passage-{n}") for n in range(4000)]
    assert values == [draw(b"seed", f"passage-{n}") for n in range(4000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert 0.45 < sum(values) / len(values) < 0.55


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
    facts = Facts(items={e: item(e, status=status_of[e]) if e in known else None for e in EPCS})
    context = DecideContext(now=NOW)
    baseline = decide(passage(*EPCS, direction=Direction.OUT), facts, context)
    shuffled = decide(passage(*order, direction=Direction.OUT), facts, context)
    assert (shuffled.verdict, shuffled.reasons) == (baseline.verdict, baseline.reasons)
    # Outbound, only known bonded goods may pass.
    clean = all(e in known and status_of[e] == "bonded" for e in EPCS)
    assert (baseline.verdict is Verdict.PASS) == clean


@given(
    statuses=st.lists(
        st.sampled_from(["bonded", "seized", "duty_free", "arrived"]), min_size=1, max_size=6
    ),
    tier=st.sampled_from(list(Tier)),
    passage_id=st.text(min_size=1, max_size=20),
    barrier=st.booleans(),
)
def test_a_random_draw_never_removes_a_hold(
    statuses: list[str], tier: Tier, passage_id: str, barrier: bool
) -> None:
    epcs = EPCS[: len(statuses)]
    facts = Facts(
        items={e: item(e, status=s) for e, s in zip(epcs, statuses, strict=True)},
        enterprises={OWNER: EnterpriseRecord(OWNER, tier)},
    )
    base = DecideContext(now=NOW, barrier_mode=barrier)
    without = decide(passage(*epcs, direction=Direction.OUT, passage_id=passage_id), facts, base)
    with_draw = decide(
        passage(*epcs, direction=Direction.OUT, passage_id=passage_id),
        facts,
        replace(base, inspection=policy(RATES)),
    )
    if without.verdict is Verdict.HOLD:
        assert with_draw.verdict is Verdict.HOLD
        assert with_draw.reasons == without.reasons
    else:
        assert [r.code for r in with_draw.reasons] in ([], [ReasonCode.RANDOM_INSPECTION])
