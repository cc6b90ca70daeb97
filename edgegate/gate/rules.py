"""The customs rules: one closed passage + what the whitelist says -> pass or hold, with reasons.

Owns the reason-code semantics of DESIGN.md §8. Pure: the caller supplies every fact the
rules need (the passage's item, vehicle, pass, enterprise and destination records, fetched
in one batch), the current wall-clock instant, the whitelist's freshness, the customs
disposition and the inspection seed; nothing here reads a clock, a database or the network.

Invariants:
- every reason is collected (a decision never stops at the first problem);
- the verdict is ``pass`` exactly when there is no reason;
- one :class:`Reason` per code, its EPCs sorted, so a decision does not depend on read order;
- an EPC the whitelist does not know is always held (UNKNOWN_TAG) — fail closed;
- the random inspection is drawn only when nothing else holds, so a draw can only add a hold;
- DECLARATION_OVERDUE is an alarm, never a reason.

The whitelist's record types are consumed through read-only Protocols, so this module stays
free of the whitelist package (the gate layer imports only the standard library).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from edgegate.gate.model import (
    ClosedPassage,
    Decision,
    Direction,
    Inspection,
    ItemRecord,
    Reason,
    ReasonCode,
)

# DESIGN.md §8: statuses under which goods may come in but must not go out.
_NOT_RELEASED_FOR_OUT = frozenset({"arrived", "pending_declaration"})
# Destinations that sell or hand over duty-free goods (免保衔接).
_DUTY_FREE_OUTLETS = frozenset({"duty_free_shop", "pickup_point"})
_UNKNOWN_OWNER_TIER = "regular"


class PassLineLike(Protocol):
    @property
    def sku(self) -> str: ...
    @property
    def qty(self) -> int: ...


class PassLike(Protocol):
    """A gate pass (核放单) as the rules read it."""

    @property
    def pass_no(self) -> str: ...
    @property
    def direction(self) -> Direction: ...
    @property
    def status(self) -> str: ...
    @property
    def vehicle_no(self) -> str | None: ...
    @property
    def vehicle_tag(self) -> str | None: ...
    @property
    def owner(self) -> str | None: ...
    @property
    def destination(self) -> str | None: ...
    @property
    def lines(self) -> Sequence[PassLineLike]: ...
    @property
    def valid_until(self) -> str | None: ...


class EnterpriseLike(Protocol):
    @property
    def tier(self) -> str: ...
    @property
    def blacklisted(self) -> bool: ...


class VehicleLike(Protocol):
    @property
    def vehicle_tag(self) -> str: ...
    @property
    def vehicle_no(self) -> str | None: ...


class DestinationLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Facts:
    """What the whitelist (and the gate's own history) says about one passage.

    ``items`` maps every EPC of the passage that is not a vehicle to its record or None;
    ``vehicles`` the EPCs that are vehicle tags; ``gate_pass`` the pass found by a scanned
    ``pass_no`` or through the vehicle; ``scanned_pass_no`` a scanned number (known or not);
    ``enterprises`` the records of the owners involved; ``destination`` the record of the
    pass's destination; ``departed`` the EPCs that have left through this gate and not come
    back in.
    """

    items: Mapping[str, ItemRecord | None]
    vehicles: Mapping[str, VehicleLike] = field(default_factory=dict)
    gate_pass: PassLike | None = None
    scanned_pass_no: str | None = None
    enterprises: Mapping[str, EnterpriseLike] = field(default_factory=dict)
    destination: DestinationLike | None = None
    departed: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class InspectionPolicy:
    """The random-inspection draw (DESIGN.md §8): rates by tier, a secret seed and its id."""

    enabled: bool
    seed: bytes
    seed_id: str
    rates: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class DecideContext:
    """What the rules need besides the passage and its facts."""

    now: datetime
    whitelist_stale: bool = False
    stale_policy_hold: bool = True
    barrier_mode: bool = False
    customs_disposition: str | None = None
    inspection: InspectionPolicy | None = None


class _Collector:
    def __init__(self) -> None:
        self.epcs: dict[ReasonCode, set[str]] = {}
        self.details: dict[ReasonCode, list[str]] = {}

    def flag(self, code: ReasonCode, epc: str | None = None, detail: str | None = None) -> None:
        self.epcs.setdefault(code, set())
        if epc is not None:
            self.epcs[code].add(epc)
        if detail is not None and detail not in self.details.setdefault(code, []):
            self.details[code].append(detail)

    def reasons(self) -> tuple[Reason, ...]:
        return tuple(
            Reason(
                code=code,
                epcs=tuple(sorted(self.epcs[code])),
                detail="; ".join(sorted(self.details[code])) if self.details.get(code) else None,
            )
            for code in ReasonCode
            if code in self.epcs
        )


def decide(passage: ClosedPassage, facts: Facts, context: DecideContext) -> Decision:
    """Decide one passage against the facts the whitelist gave for it."""
    hits = _Collector()
    direction = passage.direction
    items = {epc: facts.items.get(epc) for epc in passage.epcs if epc not in facts.vehicles}
    known = {epc: record for epc, record in items.items() if record is not None}
    tids = {tag.epc: tag.tid for tag in passage.tags if tag.tid}

    if passage.readers_down:
        hits.flag(ReasonCode.READER_FAULT, detail="reader down: " + ", ".join(passage.readers_down))
    if context.whitelist_stale and context.stale_policy_hold:
        hits.flag(ReasonCode.WHITELIST_STALE)
    if context.customs_disposition in {"reject", "manual"}:
        hits.flag(
            ReasonCode.CUSTOMS_HOLD, detail=f"customs disposition {context.customs_disposition}"
        )

    # Read once here rather than per item: an enum's .value is a descriptor call.
    heading = direction.value
    for epc, record in items.items():
        if record is None:
            hits.flag(ReasonCode.UNKNOWN_TAG, epc)
            continue
        _item_rules(hits, record, tids.get(epc), direction, heading, facts, context.now)

    overdue = tuple(sorted(e for e, r in known.items() if _declaration_overdue(r, context.now)))
    owners = {r.owner for r in known.values() if r.owner}
    _pass_rules(hits, items, known, facts, context, direction)
    pass_owner = facts.gate_pass.owner if facts.gate_pass else None
    for owner in sorted(owners | ({pass_owner} if pass_owner else set())):
        enterprise = facts.enterprises.get(owner)
        if enterprise is not None and enterprise.blacklisted:
            hits.flag(ReasonCode.BLACKLISTED, detail=f"enterprise {owner} is blacklisted")

    reasons = hits.reasons()
    inspection = _inspection(passage.passage_id, owners, facts, context.inspection)
    if inspection is not None and inspection.drawn and not reasons:
        reasons = (Reason(code=ReasonCode.RANDOM_INSPECTION, detail=f"p={inspection.p}"),)
    return Decision.from_reasons(
        reasons,
        {epc: facts.items.get(epc) for epc in passage.epcs},
        inspection=inspection,
        vehicle_tag=next(iter(sorted(facts.vehicles)), None),
        pass_no=facts.gate_pass.pass_no if facts.gate_pass else facts.scanned_pass_no,
        overdue_epcs=overdue,
    )


def _item_rules(
    hits: _Collector,
    record: ItemRecord,
    tid: str | None,
    direction: Direction,
    heading: str,
    facts: Facts,
    now: datetime,
) -> None:
    epc = record.epc
    if record.status == "seized":
        hits.flag(ReasonCode.SEIZED, epc)
    if tid is not None and record.tid is not None and tid.upper() != record.tid:
        hits.flag(ReasonCode.CLONED_TAG, epc, detail="TID read does not match the record")
    if direction is Direction.OUT and epc in facts.departed:
        hits.flag(ReasonCode.CLONED_TAG, epc, detail="EPC already left through this gate")
    # An unknown direction fails every direction check (DESIGN.md §8): a gate that cannot
    # tell in from out must not let goods through on a guess.
    if heading not in record.directions:
        hits.flag(ReasonCode.DIRECTION_NOT_ALLOWED, epc)
    if record.valid_until is not None and _instant(record.valid_until) <= now:
        hits.flag(ReasonCode.EXPIRED, epc)
    if direction is not Direction.OUT:
        return
    if record.status in _NOT_RELEASED_FOR_OUT:
        hits.flag(ReasonCode.STATUS_NOT_RELEASED, epc, detail=f"{record.status} goods going out")
    destination = facts.destination
    if facts.gate_pass is None:
        return
    toward_outlet = destination is not None and destination.kind in _DUTY_FREE_OUTLETS
    # 免保衔接: bonded goods reach a duty-free outlet only after a conversion record.
    if record.status == "bonded" and toward_outlet and not record.conversion_ref:
        hits.flag(
            ReasonCode.STATUS_NOT_RELEASED, epc, detail="bonded goods toward a duty-free outlet"
        )
    if record.status == "duty_free" and not toward_outlet:
        where = facts.gate_pass.destination or "no destination"
        hits.flag(ReasonCode.DESTINATION_NOT_ALLOWED, epc, detail=f"duty-free goods toward {where}")
    named = facts.gate_pass.destination
    if named is not None and record.destinations and named not in record.destinations:
        hits.flag(ReasonCode.DESTINATION_NOT_ALLOWED, epc, detail=f"not licensed for {named}")


def _pass_rules(
    hits: _Collector,
    items: Mapping[str, ItemRecord | None],
    known: Mapping[str, ItemRecord],
    facts: Facts,
    context: DecideContext,
    direction: Direction,
) -> None:
    gate_pass = facts.gate_pass
    if gate_pass is None:
        if facts.scanned_pass_no is not None:
            hits.flag(
                ReasonCode.PASS_NOT_APPROVED, detail=f"pass {facts.scanned_pass_no} is unknown"
            )
        elif context.barrier_mode and items:
            hits.flag(ReasonCode.NO_PASS)
        return

    problem = _pass_problem(gate_pass, direction, context.now)
    if problem is not None:
        hits.flag(ReasonCode.PASS_NOT_APPROVED, detail=f"pass {gate_pass.pass_no} {problem}")

    read_vehicles = [facts.vehicles[epc] for epc in sorted(facts.vehicles)]
    if read_vehicles and (gate_pass.vehicle_tag or gate_pass.vehicle_no):
        matches = any(
            (gate_pass.vehicle_tag and v.vehicle_tag == gate_pass.vehicle_tag)
            or (gate_pass.vehicle_no and v.vehicle_no == gate_pass.vehicle_no)
            for v in read_vehicles
        )
        if not matches:
            hits.flag(
                ReasonCode.VEHICLE_MISMATCH,
                detail=f"read {read_vehicles[0].vehicle_no or read_vehicles[0].vehicle_tag}, "
                f"pass names {gate_pass.vehicle_no or gate_pass.vehicle_tag}",
            )

    if gate_pass.owner:
        for epc, record in known.items():
            if record.owner != gate_pass.owner:
                hits.flag(ReasonCode.OWNER_MISMATCH, epc)

    read_counts = Counter(record.sku or "?" for record in known.values())
    declared = Counter[str]()
    for line in gate_pass.lines:
        declared[line.sku] += line.qty
    for sku in sorted(read_counts.keys() | declared.keys()):
        if read_counts[sku] != declared[sku]:
            hits.flag(
                ReasonCode.MANIFEST_MISMATCH,
                detail=f"{sku} read {read_counts[sku]}, declared {declared[sku]}",
            )


def _pass_problem(gate_pass: PassLike, direction: Direction, now: datetime) -> str | None:
    if gate_pass.status != "approved":
        return f"is {gate_pass.status}"
    if gate_pass.valid_until is not None and _instant(gate_pass.valid_until) <= now:
        return "has expired"
    if gate_pass.direction is not direction:
        return f"is for direction {gate_pass.direction.value}, passage is {direction.value}"
    return None


def _declaration_overdue(record: ItemRecord, now: datetime) -> bool:
    return (
        record.status in _NOT_RELEASED_FOR_OUT
        and record.declare_by is not None
        and _instant(record.declare_by) <= now
    )


def _inspection(
    passage_id: str,
    owners: set[str],
    facts: Facts,
    policy: InspectionPolicy | None,
) -> Inspection | None:
    if policy is None or not policy.enabled:
        return None
    tiers = [
        facts.enterprises[o].tier if o in facts.enterprises else _UNKNOWN_OWNER_TIER for o in owners
    ] or [_UNKNOWN_OWNER_TIER]
    p = max(policy.rates.get(tier, policy.rates.get(_UNKNOWN_OWNER_TIER, 0.0)) for tier in tiers)
    return Inspection(p=p, seed_id=policy.seed_id, drawn=draw(policy.seed, passage_id) < p)


def draw(seed: bytes, passage_id: str) -> float:
    """``HMAC-SHA256(seed, passage_id)`` read as a fraction in [0, 1) — auditable (§8)."""
    digest = hmac.new(seed, passage_id.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
