"""The customs rules: one closed passage + what the whitelist says -> pass or hold, with reasons.

Owns the reason-code semantics of DESIGN.md §8. Pure: the caller supplies the item records
(one batch lookup per passage), the current wall-clock instant and the whitelist's
freshness; nothing here reads a clock, a database or the network.

Invariants:
- every reason is collected (a decision never stops at the first problem);
- the verdict is ``pass`` exactly when there is no reason;
- one :class:`Reason` per code, its EPCs sorted, so a decision does not depend on read order;
- an EPC the whitelist does not know is always held (UNKNOWN_TAG) — fail closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from edgegate.gate.model import (
    ClosedPassage,
    Decision,
    Direction,
    ItemRecord,
    Reason,
    ReasonCode,
)

# DESIGN.md §8: statuses under which goods may come in but must not go out.
_NOT_RELEASED_FOR_OUT = frozenset({"arrived", "pending_declaration"})


@dataclass(frozen=True, slots=True)
class DecideContext:
    """What the rules need besides the passage and its item records."""

    now: datetime
    whitelist_stale: bool = False
    stale_policy_hold: bool = True


def decide(
    passage: ClosedPassage,
    items: Mapping[str, ItemRecord | None],
    context: DecideContext,
) -> Decision:
    """Decide one passage. ``items`` maps every EPC of the passage to its record or None."""
    hits: dict[ReasonCode, set[str]] = {}
    details: dict[ReasonCode, str] = {}

    def flag(code: ReasonCode, epc: str | None = None, detail: str | None = None) -> None:
        hits.setdefault(code, set())
        if epc is not None:
            hits[code].add(epc)
        if detail is not None:
            details.setdefault(code, detail)

    if passage.readers_down:
        flag(ReasonCode.READER_FAULT, detail="reader down: " + ", ".join(passage.readers_down))
    if context.whitelist_stale and context.stale_policy_hold:
        flag(ReasonCode.WHITELIST_STALE)

    for epc in passage.epcs:
        record = items.get(epc)
        if record is None:
            flag(ReasonCode.UNKNOWN_TAG, epc)
            continue
        for code in _item_reasons(record, passage.direction, context.now):
            flag(code, epc)

    reasons = tuple(
        Reason(code=code, epcs=tuple(sorted(hits[code])), detail=details.get(code))
        for code in ReasonCode
        if code in hits
    )
    return Decision.from_reasons(reasons, {epc: items.get(epc) for epc in passage.epcs})


def _item_reasons(record: ItemRecord, direction: Direction, now: datetime) -> list[ReasonCode]:
    reasons: list[ReasonCode] = []
    if record.status == "seized":
        reasons.append(ReasonCode.SEIZED)
    # An unknown direction fails every direction check (DESIGN.md §8): a gate that cannot
    # tell in from out must not let goods through on a guess.
    if direction.value not in record.directions:
        reasons.append(ReasonCode.DIRECTION_NOT_ALLOWED)
    if direction is Direction.OUT and record.status in _NOT_RELEASED_FOR_OUT:
        reasons.append(ReasonCode.STATUS_NOT_RELEASED)
    if record.valid_until is not None and _parse_instant(record.valid_until) <= now:
        reasons.append(ReasonCode.EXPIRED)
    return reasons


def _parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
