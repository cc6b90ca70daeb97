"""The gate's domain vocabulary: observations in, passages, reasons and decisions out.

Owns the value types that every other layer speaks. Everything here is an immutable value
(frozen, slotted dataclasses); nothing here performs I/O or reads a clock. Times are plain
floats of seconds on a clock the caller names in the field (``*_mono_s`` = a monotonic
clock, used for ordering and timeouts; wall-clock instants are added only at the edge, when
a decision event is built).

Invariants:
- an EPC is upper-case hex without separators (the whitelist keys on it, PROTOCOLS.md §5);
- antenna numbers are 1-based ports as labelled on the reader (R2000 wire 0 = port 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class TagSeen:
    """One read of one tag by one antenna."""

    reader: str
    epc: str
    antenna: int
    rssi_dbm: float
    at_mono_s: float
    tid: str | None = None


@dataclass(frozen=True, slots=True)
class CodeScanned:
    """One QR / barcode read by a scanner (the raw text, GS separators preserved)."""

    reader: str
    value: str
    at_mono_s: float


@dataclass(frozen=True, slots=True)
class BeamChanged:
    """A photo-eye or loop detector changed state (``broken`` = an object is in the beam)."""

    reader: str
    beam: str
    broken: bool
    at_mono_s: float


@dataclass(frozen=True, slots=True)
class ReaderDown:
    """A device link was lost or could not be opened; its reads cannot be trusted."""

    reader: str
    reason: str
    at_mono_s: float


@dataclass(frozen=True, slots=True)
class ReaderUp:
    """A device link is open and the device answers."""

    reader: str
    at_mono_s: float


Observation = TagSeen | CodeScanned | BeamChanged | ReaderDown | ReaderUp


@dataclass(frozen=True, slots=True)
class GateOutputs:
    """What the gate shows: the desired state of every output (all off = closed and dark)."""

    barrier_open: bool = False
    green: bool = False
    red: bool = False
    buzzer: bool = False


class Direction(StrEnum):
    IN = "in"
    OUT = "out"
    UNKNOWN = "unknown"


class Verdict(StrEnum):
    PASS = "pass"
    HOLD = "hold"


class ReasonCode(StrEnum):
    """Reason codes — contract, DESIGN.md §8. Names never change; new ones may be added."""

    UNKNOWN_TAG = "UNKNOWN_TAG"
    CLONED_TAG = "CLONED_TAG"
    SEIZED = "SEIZED"
    STATUS_NOT_RELEASED = "STATUS_NOT_RELEASED"
    DIRECTION_NOT_ALLOWED = "DIRECTION_NOT_ALLOWED"
    DESTINATION_NOT_ALLOWED = "DESTINATION_NOT_ALLOWED"
    NO_PASS = "NO_PASS"
    PASS_NOT_APPROVED = "PASS_NOT_APPROVED"
    VEHICLE_MISMATCH = "VEHICLE_MISMATCH"
    OWNER_MISMATCH = "OWNER_MISMATCH"
    MANIFEST_MISMATCH = "MANIFEST_MISMATCH"
    BLACKLISTED = "BLACKLISTED"
    EXPIRED = "EXPIRED"
    WHITELIST_STALE = "WHITELIST_STALE"
    READER_FAULT = "READER_FAULT"
    RANDOM_INSPECTION = "RANDOM_INSPECTION"
    CUSTOMS_HOLD = "CUSTOMS_HOLD"
    DECLARATION_OVERDUE = "DECLARATION_OVERDUE"


@dataclass(frozen=True, slots=True)
class TagSummary:
    """Everything a passage learned about one EPC (reads de-duplicated)."""

    epc: str
    reads: int
    rssi_max_dbm: float
    antennas: tuple[int, ...]
    first_seen_mono_s: float
    last_seen_mono_s: float
    tid: str | None = None


@dataclass(frozen=True, slots=True)
class ClosedPassage:
    """One vehicle or pallet crossing, closed and ready to be decided."""

    passage_id: str
    opened_at_mono_s: float
    closed_at_mono_s: float
    close_cause: str
    direction: Direction
    tags: tuple[TagSummary, ...]
    codes: tuple[CodeScanned, ...] = ()
    readers_down: tuple[str, ...] = ()
    direction_evidence: str = ""

    @property
    def epcs(self) -> tuple[str, ...]:
        return tuple(t.epc for t in self.tags)


class ItemRecord(NamedTuple):
    """The whitelist's view of one item (DESIGN.md §7, record type ``item``).

    A NamedTuple, not a frozen dataclass like the other values: a thousand-tag passage
    builds a thousand of these between the lookup and the decision, and a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) costs five times as
    much as a tuple's. Just as immutable; compare records with records only.
    """

    epc: str
    sku: str | None = None
    status: str = "bonded"
    owner: str | None = None
    tid: str | None = None
    trace_code: str | None = None
    gtin: str | None = None
    directions: tuple[str, ...] = ("in", "out")
    destinations: tuple[str, ...] = ()
    conversion_ref: str | None = None
    declare_by: str | None = None
    valid_until: str | None = None


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason a passage is held: ``{"code", "epcs"?, "detail"?}`` on the wire."""

    code: ReasonCode
    epcs: tuple[str, ...] = ()
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Inspection:
    """The random-inspection draw of one passage: probability, seed id, outcome (§8)."""

    p: float
    seed_id: str
    drawn: bool


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one passage: ``pass`` exactly when ``reasons`` is empty.

    ``items`` maps every EPC of the passage to its record (None when unknown or a vehicle);
    ``overdue_epcs`` are items past ``declare_by`` — an alarm, never a reason.
    """

    verdict: Verdict
    reasons: tuple[Reason, ...]
    items: Mapping[str, ItemRecord | None] = field(default_factory=dict)
    inspection: Inspection | None = None
    vehicle_tag: str | None = None
    pass_no: str | None = None
    overdue_epcs: tuple[str, ...] = ()

    @staticmethod
    def from_reasons(
        reasons: tuple[Reason, ...],
        items: Mapping[str, ItemRecord | None],
        *,
        inspection: Inspection | None = None,
        vehicle_tag: str | None = None,
        pass_no: str | None = None,
        overdue_epcs: tuple[str, ...] = (),
    ) -> Decision:
        return Decision(
            verdict=Verdict.HOLD if reasons else Verdict.PASS,
            reasons=reasons,
            items=items,
            inspection=inspection,
            vehicle_tag=vehicle_tag,
            pass_no=pass_no,
            overdue_epcs=overdue_epcs,
        )
