"""Everything the whitelist says about one passage, fetched in one go for the rules.

Owns the lookups behind a decision (DESIGN.md §8): which EPCs are the vehicle, the item
records of the rest (one batch query), the gate pass — by a scanned pass number, else through
the vehicle — its owner's and the items' owners' enterprise records, and the pass's
destination. Runs on a worker thread (SQLite); returns a frozen :class:`Facts`.

Invariant: a pass found through the vehicle is the approved one for this direction when
there is one; a scanned number always wins over the vehicle, and a scanned number the
whitelist does not know is reported as such (the rules hold it as PASS_NOT_APPROVED).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from edgegate.gate.model import ClosedPassage, Direction
from edgegate.gate.rules import Facts
from edgegate.whitelist.records import EnterpriseRecord, PassRecord, VehicleRecord
from edgegate.whitelist.store import WhitelistStore

# A gate-pass number (核放单号) as printed in its QR: two letters and 16 digits, e.g.
# HP4601202611250001. Other scanned codes (溯源码, e-labels) are not passes.
PASS_NO_PATTERN = re.compile(r"^[A-Z]{2}\d{16}$")


def gather_facts(
    store: WhitelistStore, passage: ClosedPassage, departed: frozenset[str] = frozenset()
) -> Facts:
    vehicles = store.vehicles_among(passage.epcs)
    goods = [epc for epc in passage.epcs if epc not in vehicles]
    found = store.lookup_items(goods)
    items = {epc: found.get(epc) for epc in goods}

    scanned = [code.value.strip() for code in passage.codes]
    gate_pass: PassRecord | None = None
    scanned_pass_no: str | None = None
    for value in scanned:
        record = store.pass_by_no(value)
        if record is not None:
            gate_pass, scanned_pass_no = record, value
            break
        if scanned_pass_no is None and PASS_NO_PATTERN.match(value):
            scanned_pass_no = value
    if gate_pass is None and scanned_pass_no is None:
        gate_pass = _pass_through_vehicle(store, vehicles.values(), passage.direction)

    owners = {record.owner for record in found.values() if record.owner}
    if gate_pass is not None and gate_pass.owner:
        owners.add(gate_pass.owner)
    enterprises: dict[str, EnterpriseRecord] = {}
    for owner in owners:
        enterprise = store.enterprise(owner)
        if enterprise is not None:
            enterprises[owner] = enterprise
    destination = (
        store.destination(gate_pass.destination)
        if gate_pass is not None and gate_pass.destination
        else None
    )
    return Facts(
        items=items,
        vehicles=vehicles,
        gate_pass=gate_pass,
        scanned_pass_no=scanned_pass_no,
        enterprises=enterprises,
        destination=destination,
        departed=departed,
    )


def _pass_through_vehicle(
    store: WhitelistStore, vehicles: Iterable[VehicleRecord], direction: Direction
) -> PassRecord | None:
    candidates: list[PassRecord] = []
    for vehicle in vehicles:
        candidates += store.passes_for_vehicle(
            vehicle_tag=vehicle.vehicle_tag, vehicle_no=vehicle.vehicle_no
        )
    approved = [p for p in candidates if p.status == "approved"]
    same_direction = [p for p in approved if p.direction is direction]
    # Prefer the pass this crossing can use; else an approved one (the rules then say why
    # it does not fit); an unapproved pass is no pass at all (DESIGN.md §8).
    ranked = same_direction or approved
    return min(ranked, key=lambda p: p.pass_no) if ranked else None
