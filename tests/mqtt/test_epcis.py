"""The EPCIS 2.0 builder: EPC URIs, the canonical pre-hash string and the event hash id.

Golden values come from the GS1 standards' own examples: the SGTIN-96
``3074257BF7194E4000001A85`` of TDS (``urn:epc:id:sgtin:0614141.812345.6789``, GTIN
80614141123458), the EPCIS 2.0 example event's SGTINs and SGLN
(``https://id.gs1.org/01/10614141073464/21/2017``, ``…/414/0614141073467/254/1234``), and
the CBV 2.0 hash-id reference event's read point (``…/414/4012345000115/254/987``).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from edgegate.gate.model import (
    ClosedPassage,
    Decision,
    Direction,
    Reason,
    ReasonCode,
    TagSummary,
    Verdict,
)
from edgegate.mqtt.epcis import (
    EXTENSION_NS,
    EpcisSettings,
    ObjectEvent,
    build_epcis_document,
    canonical_uri,
    epc_uri,
    event_hash_id,
    prehash,
    utc_offset,
)

SETTINGS = EpcisSettings(
    read_point="urn:epc:id:sgln:4012345.00011.987", biz_location="urn:epc:id:sgln:0614141.07346.0"
)
ITEM = "3074257BF7194E4000001A85"
ITEM_URI = "urn:epc:id:sgtin:0614141.812345.6789"
VEHICLE = "E20000000000000000001234"


def passage(*epcs: str, direction: Direction = Direction.IN) -> ClosedPassage:
    return ClosedPassage(
        passage_id="018f0000-0000-7000-8000-000000000001",
        opened_at_mono_s=10.0,
        closed_at_mono_s=12.5,
        close_cause="stable_set",
        direction=direction,
        tags=tuple(
            TagSummary(
                epc,
                reads=3,
                rssi_max_dbm=-50,
                antennas=(1,),
                first_seen_mono_s=10,
                last_seen_mono_s=12,
            )
            for epc in epcs
        ),
    )


def held(*codes: ReasonCode, vehicle_tag: str | None = None) -> Decision:
    return Decision(
        verdict=Verdict.HOLD,
        reasons=tuple(Reason(code) for code in codes),
        vehicle_tag=vehicle_tag,
        pass_no="HP4601202611250001",
    )


def document(p: ClosedPassage, d: Decision, tz_offset: str = "+08:00") -> dict[str, object]:
    built = build_epcis_document(
        passage=p,
        decision=d,
        decision_event_id="018f0000-0000-7000-8000-0000000000aa",
        wall_of=lambda mono_s: 1_764_057_600.0 + mono_s,  # 2025-11-25T08:00:00Z + mono
        created_at_s=1_764_057_700.0,
        tz_offset=tz_offset,
        settings=SETTINGS,
    )
    parsed: dict[str, object] = json.loads(built.to_bytes())
    return parsed


def only_event(doc: dict[str, object]) -> dict[str, object]:
    body = doc["epcisBody"]
    assert isinstance(body, dict)
    [event] = body["eventList"]
    assert isinstance(event, dict)
    return event


def test_an_sgtin_96_becomes_its_pure_identity_uri() -> None:
    assert epc_uri(ITEM) == ITEM_URI


def test_a_tag_that_is_not_sgtin_96_keeps_its_raw_hex_uri() -> None:
    assert epc_uri("E2003412DEADBEEF00000001") == "urn:epc:raw:96.xE2003412DEADBEEF00000001"
    assert epc_uri("3034") == "urn:epc:raw:16.x3034"


def test_epc_and_location_uris_canonicalise_to_gs1_digital_link() -> None:
    assert canonical_uri(ITEM_URI) == "https://id.gs1.org/01/80614141123458/21/6789"
    assert (
        canonical_uri("urn:epc:id:sgtin:0614141.107346.2017")
        == "https://id.gs1.org/01/10614141073464/21/2017"
    )
    assert (
        canonical_uri("urn:epc:id:sgln:0614141.07346.1234")
        == "https://id.gs1.org/414/0614141073467/254/1234"
    )
    assert (
        canonical_uri("urn:epc:id:sgln:4012345.00011.987")
        == "https://id.gs1.org/414/4012345000115/254/987"
    )
    # Extension 0 means "the location itself": no AI 254.
    assert (
        canonical_uri("urn:epc:id:sgln:0614141.07346.0") == "https://id.gs1.org/414/0614141073467"
    )
    assert canonical_uri(" geo:19.99,110.33 ") == "geo:19.99,110.33"


def test_a_held_inbound_passage_is_an_arriving_non_conformant_observation() -> None:
    doc = document(passage(ITEM, VEHICLE), held(ReasonCode.UNKNOWN_TAG, vehicle_tag=VEHICLE))
    event = only_event(doc)
    assert doc["type"] == "EPCISDocument"
    assert doc["schemaVersion"] == "2.0"
    assert doc["@context"] == [
        "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld",
        {"edgegate": EXTENSION_NS},
    ]
    assert event["type"] == "ObjectEvent"
    assert event["action"] == "OBSERVE"
    assert event["bizStep"] == "arriving"
    assert event["disposition"] == "non_conformant"
    assert event["epcList"] == [ITEM_URI]  # the vehicle's plate tag is not an item
    assert event["eventTime"] == "2025-11-25T08:00:12.500Z"
    assert event["eventTimeZoneOffset"] == "+08:00"
    assert event["readPoint"] == {"id": SETTINGS.read_point}
    assert event["bizLocation"] == {"id": SETTINGS.biz_location}
    assert event["edgegate:decision"] == "hold"
    assert event["edgegate:reasons"] == ["UNKNOWN_TAG"]
    assert event["edgegate:passageID"] == "018f0000-0000-7000-8000-000000000001"
    assert event["edgegate:decisionEventID"] == "018f0000-0000-7000-8000-0000000000aa"
    assert event["edgegate:passNo"] == "HP4601202611250001"
    assert str(event["eventID"]).startswith("ni:///sha-256;")
    assert str(event["eventID"]).endswith("?ver=CBV2.0")


def test_a_pass_out_is_departing_in_transit_and_unknown_direction_has_no_biz_step() -> None:
    passed = Decision(verdict=Verdict.PASS, reasons=())
    out = only_event(document(passage(ITEM, direction=Direction.OUT), passed))
    assert (out["bizStep"], out["disposition"]) == ("departing", "in_transit")
    assert out["edgegate:reasons"] == []
    assert "edgegate:passNo" not in out
    unknown = only_event(document(passage(ITEM, direction=Direction.UNKNOWN), passed))
    assert "bizStep" not in unknown


def test_the_pre_hash_string_follows_the_canonical_order_with_sorted_lists() -> None:
    second = "3074257BF7194E4000001A86"
    event = ObjectEvent.model_validate(
        only_event(document(passage(second, ITEM), held(ReasonCode.SEIZED, ReasonCode.EXPIRED)))
    )
    ns = "{" + EXTENSION_NS + "}"
    assert prehash(event) == (
        "eventType=ObjectEvent"
        "eventTime=2025-11-25T08:00:12.500Z"
        "eventTimeZoneOffset=+08:00"
        "epcList"
        "epc=https://id.gs1.org/01/80614141123458/21/6789"
        "epc=https://id.gs1.org/01/80614141123458/21/6790"
        "action=OBSERVE"
        "bizStep=https://ref.gs1.org/cbv/BizStep-arriving"
        "disposition=https://ref.gs1.org/cbv/Disp-non_conformant"
        "readPointid=https://id.gs1.org/414/4012345000115/254/987"
        "bizLocationid=https://id.gs1.org/414/0614141073467"
        f"{ns}decision=hold"
        f"{ns}decisionEventID=018f0000-0000-7000-8000-0000000000aa"
        f"{ns}passNo=HP4601202611250001"
        f"{ns}passageID=018f0000-0000-7000-8000-000000000001"
        f"{ns}reasons=EXPIRED"
        f"{ns}reasons=SEIZED"
    )
    digest = hashlib.sha256(prehash(event).encode()).hexdigest()
    assert event.event_id == f"ni:///sha-256;{digest}?ver=CBV2.0" == event_hash_id(event)


def test_the_event_id_ignores_list_order_and_changes_with_any_field() -> None:
    second = "3074257BF7194E4000001A86"
    one = only_event(document(passage(ITEM, second), held(ReasonCode.SEIZED)))
    same = only_event(document(passage(second, ITEM), held(ReasonCode.SEIZED)))
    other_time_zone = only_event(
        document(passage(ITEM, second), held(ReasonCode.SEIZED), tz_offset="+00:00")
    )
    other_reason = only_event(document(passage(ITEM, second), held(ReasonCode.EXPIRED)))
    assert one["eventID"] == same["eventID"]
    assert len({one["eventID"], other_time_zone["eventID"], other_reason["eventID"]}) == 3


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 11, 25, tzinfo=UTC), "+00:00"),
        (datetime(2026, 11, 25, tzinfo=timezone(timedelta(hours=8))), "+08:00"),
        (datetime(2026, 11, 25, tzinfo=timezone(-timedelta(hours=3, minutes=30))), "-03:30"),
    ],
)
def test_the_time_zone_offset_is_spelled_as_epcis_wants(moment: datetime, expected: str) -> None:
    assert utc_offset(moment) == expected


def test_a_naive_time_has_no_offset_to_give() -> None:
    with pytest.raises(ValueError, match="aware"):
        utc_offset(datetime(2026, 11, 25))
