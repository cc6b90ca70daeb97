"""A simulated customs back office: realistic signed whitelist bundles, published live.

Owns three things, usable apart:

- :class:`Catalog` — a deterministic (seeded) whitelist of a bonded zone: enterprises with
  credit tiers (USCC codes with their GB 32100 check character), licensed destinations,
  SKUs with real GTIN-14 check digits, vehicles with plate tags, and items arriving in
  pallets (one SKU, consecutive serials, one status per pallet) whose EPCs are proper
  SGTIN-96 (filter 1, partition 5). Gate passes cover whole pallets of one owner, so their
  manifest lines match the items. Items are generated, never held: ten million stream out
  in about a minute, in the order a back office would export them (by pallet).
- :func:`write_bundle_file` — a signed bundle written straight to disk: the body is
  streamed after a placeholder signature line of the exact final length, then signed
  through a memory map and the line overwritten in place, so even a multi-gigabyte snapshot
  is never held in memory or copied.
- :class:`BackOffice` — the live service on a broker: publishes a snapshot, then a delta on
  a schedule (pallets arriving, declarations, duty-free conversions, seizures, departures,
  and an empty delta as a heartbeat when nothing happened), each to ``P/<site>/whitelist``;
  answers every gate's ``G/whitelist/resync`` by republishing the missing deltas — the very
  bytes first published, so gates that have them see duplicates, not rollbacks — or, when
  its history does not reach back that far, a snapshot of the current seq.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import mmap
import random
import shutil
import signal
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import aiomqtt
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgegate.whitelist.bundle import key_id, load_private_key, public_key_base64, sign_body

log = structlog.get_logger(__name__)

FORMAT = "edgegate.whitelist"
ISSUER = "edgegate-sim backoffice"

# Item status mix of a bonded zone's stock, per pallet (a pallet arrives and moves as one).
_STATUSES = (
    ("bonded", 50),
    ("duty_free", 25),
    ("released", 10),
    ("pending_declaration", 8),
    ("arrived", 5),
    ("seized", 2),
)
_TIERS = (
    ("advanced", 10),
    ("certified", 20),
    ("regular", 60),
    ("discredited", 8),
    ("severely_discredited", 2),
)
DESTINATIONS: tuple[tuple[str, str], ...] = (
    ("DFS-HAIKOU-01", "duty_free_shop"),
    ("DFS-SANYA-01", "duty_free_shop"),
    ("PICKUP-MEILAN-T2", "pickup_point"),
    ("BW-HAK-CBZ-03", "bonded_warehouse"),
    ("DOM-HAIKOU-DC1", "domestic"),
)
_BRANDS = ("LANCOME", "ESTEE", "SHISEIDO", "DIOR", "CHANEL", "SK2", "GUERLAIN", "CLINIQUE")
_PRODUCTS = ("SERUM", "CREAM", "TONER", "LIPSTICK", "PERFUME", "MASK", "CLEANSER", "EYE")
_SIZES = ("15ML", "30ML", "50ML", "75ML", "100ML", "200ML")
_USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_PLATE_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"


def gtin14(indicator: int, company_prefix: str, item_ref: str) -> str:
    """A GTIN-14 with its GS1 mod-10 check digit."""
    body = f"{indicator}{company_prefix}{item_ref}"
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


def sgtin96(company_prefix: str, item_ref: str, serial: int, *, filter_value: int = 1) -> str:
    """An SGTIN-96 EPC as 24 hex digits (partition 5: 7-digit prefix, 6-digit item ref)."""
    value = (
        0x30 << 88
        | filter_value << 85
        | 5 << 82
        | int(company_prefix) << 58
        | int(item_ref) << 38
        | serial & ((1 << 38) - 1)
    )
    return f"{value:024X}"


def uscc(region: str, sequence: str) -> str:
    """An 18-character unified social credit code with its GB 32100-2015 check character."""
    body = f"91{region}{sequence}"
    assert len(body) == 17
    total = sum(_USCC_CHARS.index(c) * w for c, w in zip(body, _USCC_WEIGHTS, strict=True))
    return body + _USCC_CHARS[(31 - total % 31) % 31]


def _weighted(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([v for v, _ in table], weights=[w for _, w in table])[0]


def timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Sku:
    code: str
    gtin: str
    company_prefix: str
    item_ref: str
    owner: str


@dataclass(frozen=True, slots=True)
class Pallet:
    """A run of items of one SKU: serials ``first_serial`` … ``+ count - 1``, one status."""

    first_index: int  # global index of its first item
    sku: int
    first_serial: int
    count: int
    status: str
    conversion_ref: str | None


@dataclass(frozen=True, slots=True)
class CatalogSpec:
    items: int
    site: str = "HAK-CBZ"
    skus: int = 500
    owners: int = 40
    vehicles: int = 30
    passes: int = 60
    seed: int = 1
    issued_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))


class Catalog:
    """A deterministic bonded-zone whitelist (see the module docstring)."""

    def __init__(self, spec: CatalogSpec) -> None:
        self.spec = spec
        rng = random.Random(spec.seed)
        self.enterprises = [
            {
                "type": "enterprise",
                "owner": uscc("460000", f"MA5T{n:05d}"[:9].ljust(9, "0")),
                "tier": _weighted(rng, _TIERS),
                "blacklisted": rng.random() < 0.02,
            }
            for n in range(spec.owners)
        ]
        owners = [str(e["owner"]) for e in self.enterprises]
        self.destinations = [{"type": "destination", "id": i, "kind": k} for i, k in DESTINATIONS]
        self.skus: list[Sku] = []
        for n in range(spec.skus):
            prefix = f"{6900000 + n // 100:07d}"
            item_ref = f"1{n % 100:05d}"  # indicator digit 1 + 5-digit item reference
            code = f"SKU-{rng.choice(_BRANDS)}-{rng.choice(_PRODUCTS)}-{rng.choice(_SIZES)}-{n}"
            gtin = gtin14(int(item_ref[0]), prefix, item_ref[1:])
            self.skus.append(Sku(code, gtin, prefix, item_ref, rng.choice(owners)))
        self.vehicles = [
            {
                "type": "vehicle",
                "vehicle_tag": f"E2000017{n:016X}",
                "vehicle_no": "琼" + rng.choice("ABCDE") + "".join(rng.choices(_PLATE_CHARS, k=5)),
                "owner": rng.choice(owners),
            }
            for n in range(spec.vehicles)
        ]
        self.pallets = self._plan_pallets(rng)
        self._starts = [p.first_index for p in self.pallets]
        self.passes = self._plan_passes(rng)

    # -- the plan -----------------------------------------------------------------------

    def _plan_pallets(self, rng: random.Random) -> list[Pallet]:
        pallets: list[Pallet] = []
        next_serial = [1000] * len(self.skus)
        index = 0
        while index < self.spec.items:
            sku = rng.randrange(len(self.skus))
            count = min(rng.randint(20, 200), self.spec.items - index)
            status = _weighted(rng, _STATUSES)
            conversion = (
                f"ZH4601{rng.randrange(10**10):010d}"
                if status == "bonded" and rng.random() < 0.2
                else None
            )
            pallets.append(Pallet(index, sku, next_serial[sku], count, status, conversion))
            next_serial[sku] += count
            index += count
        return pallets

    def _plan_passes(self, rng: random.Random) -> list[dict[str, object]]:
        passes: list[dict[str, object]] = []
        if not self.pallets:
            return passes
        valid_until = timestamp(self.spec.issued_at + timedelta(days=1))
        day = self.spec.issued_at.strftime("%Y%m%d")
        for n in range(self.spec.passes):
            first = rng.randrange(len(self.pallets))
            pallet = self.pallets[first]
            owner = self.skus[pallet.sku].owner
            # One to three pallets of the same owner on one vehicle.
            chosen = [
                p
                for p in self.pallets[first : first + 12]
                if self.skus[p.sku].owner == owner and p.status == pallet.status
            ][: rng.randint(1, 3)]
            qty: dict[str, int] = {}
            for p in chosen:
                code = self.skus[p.sku].code
                qty[code] = qty.get(code, 0) + p.count
            inbound = pallet.status in ("arrived", "pending_declaration")
            vehicle = rng.choice(self.vehicles) if self.vehicles else None
            passes.append(
                {
                    "type": "pass",
                    "pass_no": f"HP4601{day}{n:04d}",
                    "pass_type": 1 if inbound else (3 if pallet.status == "duty_free" else 2),
                    "direction": "in" if inbound else "out",
                    "status": "approved" if rng.random() < 0.9 else "pending",
                    "vehicle_no": None if vehicle is None else vehicle["vehicle_no"],
                    "vehicle_tag": None if vehicle is None else vehicle["vehicle_tag"],
                    "owner": owner,
                    "destination": "DFS-HAIKOU-01" if pallet.status == "duty_free" else None,
                    "lines": [{"sku": k, "qty": v} for k, v in sorted(qty.items())],
                    "valid_until": valid_until,
                }
            )
        return passes

    # -- records ------------------------------------------------------------------------

    @property
    def record_count(self) -> int:
        small = len(self.enterprises) + len(self.destinations) + len(self.vehicles)
        return self.spec.items + small + len(self.passes)

    def epc(self, index: int) -> str:
        """The EPC of item ``index`` (0-based, in export order)."""
        pallet = self.pallets[bisect_right(self._starts, index) - 1]
        sku = self.skus[pallet.sku]
        return sgtin96(
            sku.company_prefix, sku.item_ref, pallet.first_serial + index - pallet.first_index
        )

    def item(self, index: int, **changes: object) -> dict[str, object]:
        """Item ``index`` as a record object (the slow way; for small catalogs and deltas)."""
        record: dict[str, object] = json.loads(self._item_line(index))
        return record | changes

    def item_lines(self) -> Iterator[bytes]:
        """Every item as a compact JSON line (fast: one template per pallet)."""
        declare_by = json.dumps(timestamp(self.spec.issued_at + timedelta(days=14)))
        for pallet in self.pallets:
            sku = self.skus[pallet.sku]
            tail = self._tail(pallet, sku, declare_by)
            for k in range(pallet.count):
                yield _item_line(pallet.first_index + k, sku, pallet.first_serial + k, tail)

    def _item_line(self, index: int) -> bytes:
        pallet = self.pallets[bisect_right(self._starts, index) - 1]
        sku = self.skus[pallet.sku]
        declare_by = json.dumps(timestamp(self.spec.issued_at + timedelta(days=14)))
        serial = pallet.first_serial + index - pallet.first_index
        return _item_line(index, sku, serial, self._tail(pallet, sku, declare_by))

    @staticmethod
    def _tail(pallet: Pallet, sku: Sku, declare_by: str) -> str:
        status = pallet.status
        destinations = (
            '["DFS-HAIKOU-01","DFS-SANYA-01","PICKUP-MEILAN-T2"]' if status == "duty_free" else "[]"
        )
        pending = status in ("arrived", "pending_declaration")
        conversion = "null" if pallet.conversion_ref is None else f'"{pallet.conversion_ref}"'
        tail = (
            f'"sku":"{sku.code}","gtin":"{sku.gtin}","owner":"{sku.owner}",'
            f'"status":"{status}","directions":["in","out"],"destinations":{destinations},'
            f'"conversion_ref":{conversion},"declare_by":{declare_by if pending else "null"},'
            '"valid_until":null}'
        )
        return tail

    def small_records(self) -> Iterator[Mapping[str, object]]:
        yield from self.enterprises
        yield from self.destinations
        yield from self.vehicles
        yield from self.passes

    def snapshot_lines(self, seq: int) -> Iterator[bytes]:
        """The body of a snapshot: header, then every record."""
        yield header(self.spec.site, "snapshot", seq, None, self.spec.issued_at, self.record_count)
        for record in self.small_records():
            yield compact(record)
        yield from self.item_lines()


def _item_line(index: int, sku: Sku, serial: int, tail: str) -> bytes:
    epc = sgtin96(sku.company_prefix, sku.item_ref, serial)
    trace = (index * 7_919 + 1_000_003) % 10**16  # a bijection on 16 digits: unique codes
    return (
        f'{{"type":"item","epc":"{epc}","tid":"E2801160{index:016X}",'
        f'"trace_code":"{trace:016d}",{tail}'
    ).encode()


def compact(record: Mapping[str, object]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def header(
    site: str, kind: str, seq: int, base_seq: int | None, issued_at: datetime, count: int
) -> bytes:
    head: dict[str, object] = {
        "format": FORMAT,
        "version": 1,
        "kind": kind,
        "site": site,
        "seq": seq,
        "issued_at": timestamp(issued_at),
        "issuer": ISSUER,
        "count": count,
    }
    if base_seq is not None:
        head["base_seq"] = base_seq
    return compact(head)


def delta_lines(
    site: str,
    seq: int,
    base_seq: int,
    issued_at: datetime,
    changes: Sequence[Mapping[str, object]],
) -> Iterator[bytes]:
    """The body of a delta: header, then the changes (each with its ``op``)."""
    yield header(site, "delta", seq, base_seq, issued_at, len(changes))
    for change in changes:
        yield compact(change)


def bundle_bytes(lines: Iterable[bytes], private: Ed25519PrivateKey) -> bytes:
    """A signed bundle in memory (deltas, small snapshots)."""
    return sign_body(b"\n".join(lines) + b"\n", private)


def write_bundle_file(
    path: Path, lines: Iterable[bytes], private: Ed25519PrivateKey, *, compress: bool = False
) -> int:
    """Write a signed bundle of any size to ``path``; returns its size in bytes.

    The signature line has a fixed length (a 16-digit key id, a 64-byte signature), so a
    placeholder goes first, the body streams after it, and the real line overwrites the
    placeholder once the body — mapped, not read — is signed.
    """
    public = private.public_key().public_bytes_raw()
    placeholder = _signature_line(key_id(public), bytes(64))
    with path.open("w+b") as out:
        out.write(placeholder)
        _write_lines(out, lines)
        out.flush()
        with (
            mmap.mmap(out.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
            memoryview(mapped) as whole,
            whole[len(placeholder) :] as body,
        ):
            signature = private.sign(body)
        out.seek(0)
        out.write(_signature_line(key_id(public), signature))
    if compress:
        packed = path.with_name(path.name + ".gz")
        with path.open("rb") as raw, gzip.open(packed, "wb", compresslevel=6) as gz:
            shutil.copyfileobj(raw, gz, 4 * 1024 * 1024)
        packed.replace(path)
    return path.stat().st_size


def _signature_line(kid: str, signature: bytes) -> bytes:
    sig = base64.b64encode(signature).decode("ascii")
    return (
        json.dumps({"alg": "ed25519", "key_id": kid, "sig": sig}, separators=(",", ":")).encode()
        + b"\n"
    )


def _write_lines(out: BinaryIO, lines: Iterable[bytes]) -> None:
    buffer: list[bytes] = []
    size = 0
    for line in lines:
        buffer.append(line)
        size += len(line) + 1
        if size >= 1 << 20:
            out.write(b"\n".join(buffer) + b"\n")
            buffer, size = [], 0
    if buffer:
        out.write(b"\n".join(buffer) + b"\n")


# -- the live service -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackOfficeSettings:
    host: str
    port: int
    topic_prefix: str = "edgegate/v1"
    site: str = "HAK-CBZ"
    items: int = 2_000
    seed: int = 1
    delta_interval_s: float = 30.0
    changes_per_delta: int = 20
    # How many published deltas are kept to answer resyncs; older gates get a snapshot.
    keep_deltas: int = 1_000
    first_seq: int = 1


class BackOffice:
    """Publishes a snapshot, then deltas on a schedule; answers resync requests.

    Holds the whole whitelist in memory (it is the source of truth here), so it is meant for
    simulation sizes (thousands to a few hundred thousand items), not the 10M benchmark.
    """

    def __init__(self, settings: BackOfficeSettings, private: Ed25519PrivateKey) -> None:
        self.settings = settings
        self._private = private
        catalog = Catalog(CatalogSpec(items=settings.items, site=settings.site, seed=settings.seed))
        self._catalog = catalog
        self._rng = random.Random(settings.seed + 1)
        self.records: dict[tuple[str, str], dict[str, object]] = {}
        for record in catalog.small_records():
            self.records[_key(record)] = dict(record)
        for index in range(settings.items):
            record = catalog.item(index)
            self.records[_key(record)] = record
        self._next_index = settings.items
        self.seq = settings.first_seq
        self.issued_at = catalog.spec.issued_at
        self.deltas: dict[int, bytes] = {}  # seq -> the bytes published
        self._snapshots: dict[int, bytes] = {}
        self.resyncs_answered = 0
        self._client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()

    @property
    def whitelist_topic(self) -> str:
        return f"{self.settings.topic_prefix}/{self.settings.site}/whitelist"

    @property
    def resync_filter(self) -> str:
        return f"{self.settings.topic_prefix}/{self.settings.site}/+/whitelist/resync"

    def snapshot(self) -> bytes:
        """The current state as a signed snapshot (the same bytes for the same seq)."""
        cached = self._snapshots.get(self.seq)
        if cached is None:
            lines = [
                header(
                    self.settings.site,
                    "snapshot",
                    self.seq,
                    None,
                    self.issued_at,
                    len(self.records),
                )
            ]
            lines += [compact(record) for record in self.records.values()]
            cached = self._snapshots[self.seq] = bundle_bytes(lines, self._private)
        return cached

    def next_delta(self, now: datetime | None = None) -> bytes:
        """Advance one seq with a few realistic changes; returns the signed delta."""
        changes = self._changes(self.settings.changes_per_delta)
        base, self.seq = self.seq, self.seq + 1
        self.issued_at = max(now or datetime.now(UTC).replace(microsecond=0), self.issued_at)
        data = bundle_bytes(
            delta_lines(self.settings.site, self.seq, base, self.issued_at, changes), self._private
        )
        self.deltas[self.seq] = data
        for old in [s for s in self.deltas if s <= self.seq - self.settings.keep_deltas]:
            del self.deltas[old]
        return data

    def answer(self, have_seq: int | None) -> list[bytes]:
        """What a gate at ``have_seq`` needs: the missing deltas, else a snapshot."""
        if have_seq is not None and have_seq == self.seq:
            return []
        wanted = [] if have_seq is None else list(range(have_seq + 1, self.seq + 1))
        if wanted and all(seq in self.deltas for seq in wanted):
            return [self.deltas[seq] for seq in wanted]
        return [self.snapshot()]

    def _changes(self, n: int) -> list[dict[str, object]]:
        rng = self._rng
        items = [key for key in self.records if key[0] == "item"]
        changes: list[dict[str, object]] = []
        for _ in range(n if items else 0):
            roll = rng.random()
            if roll < 0.3:  # a new item arrives (enter first, declare later)
                record = self._catalog.item(rng.randrange(self._catalog.spec.items))
                record |= {
                    "epc": f"30{rng.randrange(1 << 88):022X}",
                    "status": "arrived",
                    "declare_by": timestamp(self.issued_at + timedelta(days=14)),
                }
                self.records[_key(record)] = record
                changes.append({"op": "upsert", **record})
                continue
            key = rng.choice(items)
            if key not in self.records:  # deleted earlier in this delta
                continue
            record = self.records[key]
            if roll < 0.45:  # it left the zone
                del self.records[key]
                changes.append({"op": "delete", "type": "item", "epc": key[1]})
                continue
            status = str(record["status"])
            moves = {
                "arrived": "pending_declaration",
                "pending_declaration": "bonded",
                "bonded": "duty_free",
                "duty_free": "released",
            }
            new_status = "seized" if roll > 0.99 else moves.get(status, status)
            record = record | {"status": new_status}
            if new_status == "bonded":
                record["declare_by"] = None
            if new_status == "duty_free":
                record["conversion_ref"] = f"ZH4601{rng.randrange(10**10):010d}"
                record["destinations"] = ["DFS-HAIKOU-01", "PICKUP-MEILAN-T2"]
            self.records[key] = record
            changes.append({"op": "upsert", **record})
        return changes

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Connect, publish the snapshot, then a delta every ``delta_interval_s``; forever."""
        s = self.settings
        async with aiomqtt.Client(s.host, s.port, identifier=f"backoffice-{s.site}") as client:
            self._client = client
            await client.subscribe(self.resync_filter, qos=1)
            await self.publish(self.snapshot())
            log.info("backoffice.snapshot", seq=self.seq, records=len(self.records))
            if ready is not None:
                ready.set()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._answer_resyncs(client), name="backoffice-resync")
                group.create_task(self._schedule(), name="backoffice-deltas")

    async def publish(self, data: bytes) -> None:
        client = self._client
        if client is None:
            raise RuntimeError("the back office is not connected")
        await client.publish(self.whitelist_topic, data, qos=1)

    async def publish_delta(self) -> bytes:
        async with self._lock:
            data = self.next_delta()
            await self.publish(data)
        log.info("backoffice.delta", seq=self.seq)
        return data

    async def _schedule(self) -> None:
        while True:
            await asyncio.sleep(self.settings.delta_interval_s)
            await self.publish_delta()

    async def _answer_resyncs(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                request = json.loads(payload)
                have = request["have_seq"]
                if have is not None and (isinstance(have, bool) or not isinstance(have, int)):
                    raise TypeError("have_seq must be an integer or null")
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("backoffice.bad_resync", topic=str(message.topic), error=str(exc))
                continue
            async with self._lock:
                answer = self.answer(have)
                for data in answer:
                    await self.publish(data)
            self.resyncs_answered += 1
            log.info("backoffice.resync", topic=str(message.topic), have_seq=have, sent=len(answer))


def _key(record: Mapping[str, object]) -> tuple[str, str]:
    kind = str(record["type"])
    field_name = {
        "item": "epc",
        "pass": "pass_no",
        "enterprise": "owner",
        "vehicle": "vehicle_tag",
        "destination": "id",
    }[kind]
    return kind, str(record[field_name])


# -- edgegate-sim backoffice ------------------------------------------------------------


def add_command(devices: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``edgegate-sim backoffice``: the service above on a broker until SIGINT / SIGTERM."""
    parser = devices.add_parser(
        "backoffice",
        help="customs back office: signed whitelist snapshot + deltas over MQTT, resyncs",
        description=(
            "Publish a signed whitelist snapshot, then a delta every --interval seconds, to "
            "P/<site>/whitelist, and answer every gate's resync request. Prints the public "
            "key the gates must trust (base64) as its one line on stdout."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--prefix", default="edgegate/v1", help="mqtt.topic_prefix")
    parser.add_argument("--site", default="HAK-CBZ")
    parser.add_argument("--items", type=int, default=2_000, help="items in the whitelist")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between deltas")
    parser.add_argument("--changes", type=int, default=20, help="changes per delta")
    parser.add_argument(
        "--key", help="signing key file (base64 raw seed or PEM); default: a fresh key"
    )
    parser.set_defaults(run=_run_command)


def _run_command(args: argparse.Namespace) -> None:
    if args.key:
        try:
            private = load_private_key(Path(args.key).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise OSError(f"{args.key}: {exc}") from None
    else:
        private = Ed25519PrivateKey.generate()
    office = BackOffice(
        BackOfficeSettings(
            host=args.host,
            port=args.port,
            topic_prefix=args.prefix,
            site=args.site,
            items=args.items,
            seed=args.seed,
            delta_interval_s=args.interval,
            changes_per_delta=args.changes,
        ),
        private,
    )
    print(public_key_base64(private), flush=True)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await office.run()
        except aiomqtt.MqttError as exc:
            raise OSError(f"broker {args.host}:{args.port}: {exc}") from None

    asyncio.run(serve())
