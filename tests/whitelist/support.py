"""Test support: the contract's example records and a forge that builds signed bundles."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgegate.whitelist.bundle import (
    TrustedKeys,
    VerifiedBundle,
    public_key_base64,
    sign_body,
    verify_bundle,
)

SITE = "HAK-CBZ"
EPC = "3074257BF7194E4000001A85"
VEHICLE_TAG = "E20000000000000000001234"

# The contract's own examples (DESIGN.md §7).
ITEM: Mapping[str, object] = {
    "type": "item",
    "epc": EPC,
    "tid": "E2801160200074CF085B0A9B",
    "trace_code": "1234567890123456",
    "sku": "SKU-LANCOME-50ML",
    "gtin": "06141411234567",
    "owner": "91460000MA5T000001",
    "status": "bonded",
    "directions": ["in", "out"],
    "destinations": ["DFS-HAIKOU-01"],
    "conversion_ref": None,
    "declare_by": "2026-12-09T00:00:00Z",
    "valid_until": None,
}
PASS: Mapping[str, object] = {
    "type": "pass",
    "pass_no": "HP4601202611250001",
    "pass_type": 1,
    "direction": "in",
    "status": "approved",
    "vehicle_no": "琼A12345",
    "vehicle_tag": VEHICLE_TAG,
    "owner": "91460000MA5T000001",
    "destination": None,
    "lines": [{"sku": "SKU-LANCOME-50ML", "qty": 120}],
    "valid_until": "2026-11-26T00:00:00Z",
}
ENTERPRISE: Mapping[str, object] = {
    "type": "enterprise",
    "owner": "91460000MA5T000001",
    "tier": "advanced",
    "blacklisted": False,
}
VEHICLE: Mapping[str, object] = {
    "type": "vehicle",
    "vehicle_tag": VEHICLE_TAG,
    "vehicle_no": "琼A12345",
    "owner": "91460000MA5T000001",
}
DESTINATION: Mapping[str, object] = {
    "type": "destination",
    "id": "DFS-HAIKOU-01",
    "kind": "duty_free_shop",
}
EXAMPLES: Sequence[Mapping[str, object]] = (ITEM, PASS, ENTERPRISE, VEHICLE, DESTINATION)


def item(epc: str, **fields: object) -> dict[str, object]:
    """The example item under another EPC, with some fields changed."""
    return copy.deepcopy(dict(ITEM)) | {"epc": epc} | fields


def epc(n: int) -> str:
    """A distinct, valid 96-bit EPC for item number ``n``."""
    return f"30740000000000{n:010X}"


class Forge:
    """Builds bundle bodies and bundles signed with one key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        self.keys = TrustedKeys.from_base64([public_key_base64(private)])

    def body(
        self,
        records: Sequence[Mapping[str, object]],
        *,
        kind: str = "snapshot",
        seq: int = 1,
        base_seq: int | None = None,
        **header: object,
    ) -> bytes:
        head: dict[str, object] = {
            "format": "edgegate.whitelist",
            "version": 1,
            "kind": kind,
            "site": SITE,
            "seq": seq,
            "issued_at": "2026-11-25T08:00:00Z",
            "issuer": "test",
            "count": len(records),
        }
        if base_seq is not None:
            head["base_seq"] = base_seq
        elif kind == "delta":
            head["base_seq"] = seq - 1
        head |= header
        lines = [head, *records]
        return "\n".join(json.dumps(line, ensure_ascii=False) for line in lines).encode() + b"\n"

    def sign(self, body: bytes) -> bytes:
        return sign_body(body, self.private)

    def verify(self, data: bytes) -> VerifiedBundle:
        return verify_bundle(data, self.keys)

    def snapshot(self, records: Sequence[Mapping[str, object]], seq: int = 1) -> VerifiedBundle:
        return self.verify(self.sign(self.body(records, seq=seq)))

    def delta(
        self, records: Sequence[Mapping[str, object]], seq: int, base_seq: int | None = None
    ) -> VerifiedBundle:
        body = self.body(records, kind="delta", seq=seq, base_seq=base_seq)
        return self.verify(self.sign(body))


def open_files() -> set[Path]:
    """The files this process has open now (Linux)."""
    fds = Path("/proc/self/fd")
    links = (os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink())
    # A file removed while open is still open: Linux names it "<path> (deleted)".
    return {Path(link.removesuffix(" (deleted)")) for link in links} - {fds}
