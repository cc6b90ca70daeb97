"""The decision event's fast encoding against its contract model, DecisionEvent."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from edgegate.gate.model import (
    ClosedPassage,
    CodeScanned,
    Decision,
    Direction,
    Inspection,
    ItemRecord,
    Reason,
    ReasonCode,
    TagSummary,
    Verdict,
)
from edgegate.mqtt.payloads import DecisionEvent, DecisionMessage, WallClock
from edgegate.whitelist.records import ItemStatus

EPCS = st.text("0123456789ABCDEF", min_size=24, max_size=24)
TEXT = st.text(min_size=1, max_size=12)
FINITE = st.floats(allow_nan=False, allow_infinity=False)

tags = st.builds(
    TagSummary,
    epc=EPCS,
    reads=st.integers(1, 10_000),
    rssi_max_dbm=FINITE,
    antennas=st.lists(st.integers(1, 8), max_size=4).map(tuple),
    first_seen_mono_s=st.just(10.0),
    last_seen_mono_s=st.just(11.0),
)
reasons = st.builds(
    Reason,
    code=st.sampled_from(ReasonCode),
    epcs=st.lists(EPCS, max_size=3).map(tuple),
    detail=st.none() | TEXT,
)
inspections = st.none() | st.builds(
    Inspection, p=st.floats(0, 1), seed_id=TEXT, drawn=st.booleans()
)


@st.composite
def decided(draw: st.DrawFn) -> tuple[ClosedPassage, Decision]:
    passage_tags = tuple(draw(st.lists(tags, max_size=6, unique_by=lambda t: t.epc)))
    known = draw(st.lists(st.booleans(), min_size=len(passage_tags), max_size=len(passage_tags)))
    items = {
        tag.epc: (
            ItemRecord(
                tag.epc, sku=draw(st.none() | TEXT), status=draw(st.sampled_from(ItemStatus))
            )
            if is_known
            else None
        )
        for tag, is_known in zip(passage_tags, known, strict=True)
    }
    held = tuple(draw(st.lists(reasons, max_size=3)))
    passage = ClosedPassage(
        passage_id=draw(TEXT),
        opened_at_mono_s=10.0,
        closed_at_mono_s=12.5,
        close_cause=draw(st.sampled_from(["beams_clear", "pass_scanned", "timeout"])),
        direction=draw(st.sampled_from(Direction)),
        tags=passage_tags,
        codes=tuple(
            draw(st.lists(st.builds(CodeScanned, reader=TEXT, value=TEXT, at_mono_s=st.just(11.0))))
        ),
    )
    decision = Decision(
        verdict=Verdict.HOLD if held else Verdict.PASS,
        reasons=held,
        items=items,
        inspection=draw(inspections),
        vehicle_tag=draw(st.none() | EPCS),
        pass_no=draw(st.none() | TEXT),
    )
    return passage, decision


def both(passage: ClosedPassage, decision: Decision) -> tuple[bytes, bytes]:
    fields = {
        "event_id": "0194f5a0-0000-7000-8000-000000000001",
        "seq": 7,
        "site": "HAK-CBZ",
        "gate": "G01",
        "passage": passage,
        "decision": decision,
        "wall_of": WallClock(1_764_057_600.0, 0.0),
        "decided_at_s": 1_764_057_613.25,
        "whitelist_seq": 42,
    }
    message = DecisionMessage(**fields)  # type: ignore[arg-type]
    return message.to_json(), message.to_event().to_bytes()


@given(decided())
def test_the_fast_encoding_is_the_contract_models_json(
    case: tuple[ClosedPassage, Decision],
) -> None:
    fast, contract = both(*case)

    assert json.loads(fast) == json.loads(contract)
    assert DecisionEvent.model_validate_json(fast).to_bytes() == contract


def test_a_held_passage_with_every_optional_field_is_encoded_per_the_contract() -> None:
    known, stranger = "3074257BF7194E4000001A85", "E2000000000000000000BEEF"
    passage = ClosedPassage(
        passage_id="p-1",
        opened_at_mono_s=10.0,
        closed_at_mono_s=12.5,
        close_cause="beams_clear",
        direction=Direction.IN,
        tags=(
            TagSummary(known, 5, -51.5, (1, 2), 10.0, 12.0),
            TagSummary(stranger, 2, -70.0, (2,), 11.0, 11.5),
        ),
        codes=(CodeScanned("scan-1", "琼A12345", 11.0),),
    )
    decision = Decision(
        verdict=Verdict.HOLD,
        reasons=(
            Reason(ReasonCode.UNKNOWN_TAG, epcs=(stranger,)),
            Reason(ReasonCode.RANDOM_INSPECTION, detail="drawn"),
        ),
        items={known: ItemRecord(known, sku="SKU-1", status=ItemStatus.BONDED), stranger: None},
        inspection=Inspection(p=0.05, seed_id="seed-2026", drawn=True),
        pass_no="HP4601202611250001",
    )

    fast, contract = both(passage, decision)
    body = json.loads(fast)

    assert fast == contract
    assert "琼A12345".encode() in fast  # UTF-8, not \\u escapes
    assert body["schema"] == "edgegate.decision/1"
    assert body["reasons"] == [
        {"code": "UNKNOWN_TAG", "epcs": [stranger]},
        {"code": "RANDOM_INSPECTION", "detail": "drawn"},
    ]
    assert body["tags"][1] == {
        "epc": stranger,
        "sku": None,
        "status": None,
        "reads": 2,
        "rssi_max": -70.0,
        "antennas": [2],
    }
    assert body["opened_at"] == "2025-11-25T08:00:10.000Z"
    assert body["inspection"] == {"p": 0.05, "seed_id": "seed-2026", "drawn": True}
    assert body["vehicle_tag"] is None
