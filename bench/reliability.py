"""The reliability campaign: scripted faults against the daemon, every count observed.

Each row runs ``edgegate run`` as its own process on a fresh state directory, a fresh
mosquitto (edgegate.localbroker) and an R2000 simulator on a pty driving pallets past the
antenna (simulators/harness.py), then injects one kind of fault N times:

1. broker: mosquitto SIGKILLed and restarted during the stream (``mqtt.ack = "app"``: a
   killed broker loses what it held, only the back office's ack closes that gap);
2. daemon: ``edgegate run`` SIGKILLed at a random moment while up and deciding, and
   restarted by the harness as systemd would (``Restart=always``; ``RESTART_S`` instead of
   the unit's 3 s ``RestartSec``, to keep the campaign short);
3. unplug: the reader's pty unplugged and plugged in again behind its stable link, with a
   pallet in the field at the moment of the unplug; the passage open then must be decided
   with ``READER_FAULT``, the pallet read again after the replug without it, and no
   passage that closed inside an outage may lack the flag; ``reader_down`` / ``reader_up``
   alarms count the reconnects;
4. corruption: 1 % of the reader's bytes damaged (i.i.d., the simulator's ``corrupt_rate``)
   for a period, against a whitelist knowing every pallet: pallets decided, phantom EPCs (a
   tag in a decision that the simulator never sent) and whether any phantom passed, frames
   rejected (``errors`` of the reader in ``G/health``: checksum + malformed); beside the
   peer measured first in the same run, the same stream through an intact line for a
   third of the time;
5. bundles: tampered bundles (a valid delta, one body byte flipped after signing) and
   rolled-back ones (validly signed, seq not newer) published on ``P/<site>/whitelist``;
   each must raise ``whitelist_rejected`` naming its reason (``bad_signature``,
   ``rollback``) while the store's seq and counts (``edgegate whitelist stats``) stay as
   they were and known pallets keep passing;
6. commands: bad JSON, an unknown verb, an unsigned and a badly signed ``release`` of a held
   passage on ``G/cmd``; each must be refused (a reply naming the reason; a payload that is
   not JSON carries no ``command_id`` to answer, so its refusal is read from the daemon's
   ``command.rejected`` log), with no state change: no release audited, neither green nor
   barrier coil ever set on the gate I/O simulator — and, as the control, a correctly
   signed release of the same passage afterwards is accepted and lights green.

Columns: *tried* faults injected; *survived* those after which the daemon was up again and
deciding (a decision made after the fault arrived, plus the row's own recovery condition);
*lost* decisions decided (the outbox's ``decision`` counter) that never reached the back
office (by ``seq``); *rejected* where refusing is the correct outcome; *dup* redeliveries.
Target: zero lost decisions in every row. Every count comes from a message received, the
heartbeat, the daemon's log or its outbox file — none is assumed.

Run: ``python -m bench reliability`` (about 4 minutes) or ``--quick`` (under 2 minutes);
``--rows broker,unplug`` runs a subset, ``--seed N`` repeats a campaign's random choices.
Prints a table and writes bench/results/reliability.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import measured_at
from edgegate.localbroker import LocalBroker
from edgegate.mqtt.commands import canonical_bytes
from edgegate.mqtt.payloads import instant
from edgegate.whitelist.bundle import public_key_base64
from simulators.backoffice import bundle_bytes, compact, header
from simulators.endpoints import serve_pty
from simulators.faults import Endpoint, FaultPlan
from simulators.gateio import GateIoSimulator
from simulators.harness import (
    GAP_S,
    SITE,
    TOPICS,
    Cable,
    Counts,
    Gate,
    Passages,
    Payload,
    Receiver,
    cancel_until_done,
    import_whitelist,
    pallet_epc,
    poll,
    settle,
    stop_passages,
    write_config,
)
from simulators.r2000 import R2000Simulator

RESULTS = Path(__file__).parent / "results" / "reliability.json"
RESTART_S = 1.0
RECOVERY_S = 20.0
"""Bound on every wait for a recovery, a reply or an alarm."""
ROW_BUDGET_S = 240.0
"""A row that takes longer is cut short and reported with its error."""
CORRUPT_RATE = 0.01
WHITELIST_SEQ = 10
KNOWN_PALLETS = 2_000
"""Items in the rows' whitelists: more pallets than any row drives."""
OWNER = "91460000MA5T000001"
OPERATOR = "officer-07"


@dataclass(frozen=True, slots=True)
class Plan:
    broker_kills: int
    daemon_kills: int
    unplugs: int
    corruption_s: float
    bundles: int
    """Of each kind: tampered, rolled back."""
    commands: int
    """Rounds of the four bad commands."""


FULL = Plan(broker_kills=15, daemon_kills=15, unplugs=12, corruption_s=60.0, bundles=8, commands=8)
QUICK = Plan(broker_kills=3, daemon_kills=3, unplugs=3, corruption_s=12.0, bundles=2, commands=2)


@dataclass
class Tally:
    """A row as it is being measured; whatever it holds when a row fails is reported."""

    fault: str
    ack: str = "puback"
    tried: int = 0
    survived: int = 0
    rejected: int | None = None
    must_reject: bool = False
    """Every fault tried must be refused (``rejected == tried``)."""
    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)
    counts: Counts | None = None
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    fault: str
    ack: str
    tried: int
    survived: int
    lost: int | None
    rejected: int | None
    duplicates: int | None
    decided: int | None
    received: int | None
    ok: bool
    checks: dict[str, bool]
    figures: dict[str, object]
    seconds: float
    error: str | None

    @classmethod
    def of(cls, key: str, tally: Tally, seconds: float, error: str | None) -> Row:
        counts = tally.counts
        expected_rejections = not tally.must_reject or tally.rejected == tally.tried
        ok = (
            error is None
            and counts is not None
            and counts.lost == 0
            and tally.survived == tally.tried
            and expected_rejections
            and tally.exit_code == 0
            and all(tally.checks.values())
        )
        return cls(
            key=key,
            fault=tally.fault,
            ack=tally.ack,
            tried=tally.tried,
            survived=tally.survived,
            lost=None if counts is None else counts.lost,
            rejected=tally.rejected,
            duplicates=None if counts is None else counts.duplicates,
            decided=None if counts is None else counts.decided,
            received=None if counts is None else counts.received,
            ok=ok,
            checks=tally.checks,
            figures=tally.figures,
            seconds=round(seconds, 1),
            error=error,
        )


# -- the rig -------------------------------------------------------------------------------


@dataclass
class Rig:
    """One row's world: broker, daemon, back office, the reader's field and its tasks."""

    broker: LocalBroker
    gate: Gate
    office: Receiver
    passages: Passages
    group: asyncio.TaskGroup
    helpers: list[asyncio.Task[None]] = field(default_factory=list)
    stream: asyncio.Task[None] | None = None

    def start_stream(self) -> None:
        self.stream = self.group.create_task(self.passages.run(), name="passages")

    async def stop_stream(self) -> None:
        """Stop the pallets, and wait until the last one's passage is decided."""
        if self.stream is not None:
            await stop_passages(self.stream)
            self.stream = None

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """A helper task of the row, cancelled when the row ends."""
        self.helpers.append(self.group.create_task(work, name=name))

    def decided(self) -> int:
        return self.gate.outbox()[0]

    async def decision_after(self, seq: int) -> bool:
        """Whether a decision made after the gate's ``seq``-th arrives (bounded)."""
        return await self.office.until(lambda: self.office.last_seq > seq, RECOVERY_S)

    async def publish(self, topic: str, payload: bytes) -> None:
        async with aiomqtt.Client(self.broker.host, self.broker.port) as client:
            await client.publish(topic, payload, qos=1)


@contextlib.asynccontextmanager
async def rig(
    tally: Tally,
    work: Path,
    simulator: R2000Simulator,
    reader: Endpoint,
    *,
    devices: Sequence[Endpoint] = (),
    trusted_keys: Sequence[str] = (),
    operator_keys: dict[str, str] | None = None,
    gate_io: str | None = None,
    whitelist: bytes | None = None,
) -> AsyncIterator[Rig]:
    """Start the row's world, hand it over, then settle the counts and take it down."""
    await asyncio.to_thread(work.mkdir, parents=True)
    config, state, log = work / "edgegate.toml", work / "state", work / "daemon.log"
    with LocalBroker() as broker:
        write_config(
            config,
            state,
            broker,
            reader.url,
            ack=tally.ack,
            trusted_keys=trusted_keys,
            operator_keys=operator_keys,
            gate_io=gate_io,
        )
        if whitelist is not None:
            bundle = work / "snapshot.bundle"
            await asyncio.to_thread(bundle.write_bytes, whitelist)
            await import_whitelist(bundle, config)
        gate = Gate(config, state, log)
        office = Receiver(broker, ack=tally.ack == "app")
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(device.run(), name=f"device-{n}")
                    for n, device in enumerate((reader, *devices))
                ]
                listener = group.create_task(office.run(), name="back-office")
                async with asyncio.timeout(RECOVERY_S):
                    await office.subscribed.wait()
                await gate.start()
                await gate.logs("daemon.ready", 1, RECOVERY_S)
                world = Rig(broker, gate, office, Passages(simulator), group)
                yield world
                await world.stop_stream()
                tally.counts = await settle(gate, office)
                # What was received must also leave the outbox (PUBACK, or the back office's
                # ack with mqtt.ack = "app").
                await bounded(lambda: gate.outbox()[1] == 0, 5.0)
                tally.figures["outbox_rows_left"] = gate.outbox()[1]
                tally.exit_code = await gate.stop() if gate.running else None
                await cancel_until_done(listener)
                for task in [*world.helpers, *tasks]:
                    await cancel_until_done(task)
        finally:
            await gate.reap()


async def whitelist_stats(config: Path) -> dict[str, str]:
    """``edgegate whitelist stats``: seq, record counts and items by status, as printed."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgegate",
        "whitelist",
        "stats",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"whitelist stats failed: {err.decode().strip()}")
    stats = {}
    for line in out.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in ("seq", "records", "items"):
            stats[name] = value.strip()
    return stats


# -- whitelists and commands ---------------------------------------------------------------


def item(epc: str, status: str) -> dict[str, object]:
    return {
        "type": "item",
        "epc": epc,
        "sku": "SKU-LANCOME-50ML",
        "owner": OWNER,
        "status": status,
        "directions": ["in", "out"],
        "destinations": [],
    }


def snapshot(key: Ed25519PrivateKey, seq: int, prefix: str, status: str = "bonded") -> bytes:
    """A signed snapshot knowing pallets 1..KNOWN_PALLETS of the stream with ``prefix``."""
    records = [item(pallet_epc(n, prefix), status) for n in range(1, KNOWN_PALLETS + 1)]
    head = header(SITE, "snapshot", seq, None, datetime.now(UTC), len(records))
    return bundle_bytes([head, *map(compact, records)], key)


def seizing_delta(key: Ed25519PrivateKey, seq: int, base_seq: int, prefix: str) -> bytes:
    """A signed delta seizing every known pallet: applied, it would hold them all."""
    changes = [
        {"op": "upsert", **item(pallet_epc(n, prefix), "seized")}
        for n in range(1, KNOWN_PALLETS + 1)
    ]
    head = header(SITE, "delta", seq, base_seq, datetime.now(UTC), len(changes))
    return bundle_bytes([head, *map(compact, changes)], key)


def flip_body_byte(bundle: bytes, rng: random.Random) -> bytes:
    """The bundle with one byte of its body (after the signature line) changed."""
    damaged = bytearray(bundle)
    position = rng.randrange(bundle.index(b"\n") + 1, len(bundle))
    damaged[position] ^= rng.randrange(1, 256)
    return bytes(damaged)


def command(name: str, command_id: str, args: dict[str, object]) -> dict[str, object]:
    return {
        "command_id": command_id,
        "name": name,
        "args": args,
        "operator": OPERATOR,
        "issued_at": instant(time.time()),
    }


def signed(body: dict[str, object], key: Ed25519PrivateKey) -> bytes:
    sig = base64.b64encode(key.sign(canonical_bytes(body))).decode()
    return json.dumps({**body, "sig": sig}).encode()


def reasons(decision: Payload) -> set[str]:
    listed = decision.get("reasons")
    if not isinstance(listed, list):
        return set()
    return {str(reason.get("code")) for reason in listed if isinstance(reason, dict)}


def epcs_of(decision: Payload) -> set[str]:
    tags = decision.get("tags")
    if not isinstance(tags, list):
        return set()
    return {str(tag.get("epc")) for tag in tags if isinstance(tag, dict)}


def moment(text: object) -> float:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


# -- the rows ------------------------------------------------------------------------------


async def broker_kills(tally: Tally, work: Path, plan: Plan, rng: random.Random) -> None:
    simulator = R2000Simulator()
    async with rig(tally, work, simulator, simulator.open_pty()) as world:
        world.start_stream()
        for kill in range(plan.broker_kills):
            # Each kill hits a live connection: the gate is (re)connected first.
            await world.gate.logs("mqtt.connected", kill + 1, RECOVERY_S)
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            world.broker.kill()
            tally.tried += 1
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            await asyncio.to_thread(world.broker.start)
            tally.survived += await world.decision_after(world.decided())
        await asyncio.sleep(1.0)
    tally.figures["gate_connects"] = world.gate.logged("mqtt.connected")


async def daemon_kills(tally: Tally, work: Path, plan: Plan, rng: random.Random) -> None:
    simulator = R2000Simulator()
    async with rig(tally, work, simulator, simulator.open_pty()) as world:
        world.start_stream()
        for run in range(1, plan.daemon_kills + 1):
            # Up and deciding: die at any moment of it, mid-commit or mid-publish.
            await asyncio.sleep(rng.uniform(0.3, 2.0))
            await world.gate.kill()
            tally.tried += 1
            killed_at = world.decided()
            await asyncio.sleep(RESTART_S)
            await world.gate.start()
            await world.gate.logs("daemon.ready", run + 1, RECOVERY_S)
            tally.survived += await world.decision_after(killed_at)
        await asyncio.sleep(1.0)
    tally.figures["starts"] = world.gate.logged("daemon.ready")


async def unplugs(tally: Tally, work: Path, plan: Plan, rng: random.Random) -> None:
    simulator = R2000Simulator()
    cable = Cable(simulator.converse)
    flagged = 0
    async with rig(tally, work, simulator, cable) as world:
        office = world.office
        for cycle in range(1, plan.unplugs + 1):
            epc = pallet_epc(cycle, "E281")
            simulator.add_tag(epc, antenna_port=1, rssi_dbm=-55)
            await asyncio.sleep(0.3)  # read round after round: a passage is open
            cable.unplug()
            tally.tried += 1
            down = await office.until(exceeds(alarms(office, "reader_down"), cycle - 1), RECOVERY_S)
            await asyncio.sleep(rng.uniform(0.5, 2.0))  # the outage; the open passage closes
            cable.plug()
            up = await office.until(exceeds(alarms(office, "reader_up"), cycle - 1), RECOVERY_S)

            back = up and await office.until(read_again(office, epc, cycle), RECOVERY_S)
            simulator.clear()
            flagged += any(
                epc in epcs_of(d) and "READER_FAULT" in reasons(d) for d in office.decisions
            )
            tally.survived += down and up and back
            await asyncio.sleep(GAP_S)
    downs = [moment(a["at"]) for a in world.office.alarms_of("reader_down")]
    ups = [moment(a["at"]) for a in world.office.alarms_of("reader_up")]
    outages = list(zip(downs, ups, strict=False))
    unflagged = sum(
        "READER_FAULT" not in reasons(d)
        and any(down < moment(d["closed_at"]) < up for down, up in outages)
        for d in world.office.decisions
    )
    tally.figures |= {
        "reader_down_alarms": len(downs),
        "reader_up_alarms": len(ups),
        "ptys_served": cable.plugs,
        "outage_passages_flagged": flagged,
        "decisions_with_reader_fault": sum(
            "READER_FAULT" in reasons(d) for d in world.office.decisions
        ),
        "closed_in_outage_without_reader_fault": unflagged,
    }
    tally.checks["outage passages flagged READER_FAULT"] = flagged == tally.tried
    tally.checks["no unflagged passage closed in an outage"] = unflagged == 0


@dataclass(frozen=True, slots=True)
class Stream:
    """What one run of pallets through a (possibly corrupting) reader produced."""

    seconds: float
    driven: int
    decided: int
    """Pallets whose EPC is in some decision."""
    phantoms: frozenset[str]
    phantoms_passed: int
    frames: int
    frames_rejected: int
    bytes_corrupted: int
    reader_downs: int
    reply_timeouts: int
    decisions: Counter[str]


async def pallet_stream(
    tally: Tally, work: Path, seconds: float, corrupt_rate: float, seed: int
) -> Stream:
    """Pallets for ``seconds`` through a reader whose bytes are damaged at ``corrupt_rate``,
    against a whitelist that knows every pallet (a pallet passes unless something is wrong)."""
    simulator = R2000Simulator()
    reader, layer = serve_pty(simulator.converse, FaultPlan(corrupt_rate=corrupt_rate, seed=seed))
    key = Ed25519PrivateKey.generate()
    async with rig(
        tally,
        work,
        simulator,
        reader,
        trusted_keys=[public_key_base64(key)],
        whitelist=snapshot(key, WHITELIST_SEQ, "E280"),
    ) as world:
        world.start_stream()
        await asyncio.sleep(seconds)
        await world.stop_stream()
        # Heartbeats sent after the stream stopped: their counters cover every frame.
        beats = world.office.heartbeats
        await world.office.until(lambda: world.office.heartbeats >= beats + 2, RECOVERY_S)
    decisions = world.office.decisions
    seen: set[str] = set().union(*map(epcs_of, decisions))
    phantoms = frozenset(seen - world.passages.sent)
    frames = lookup(world.office.health, "readers", "0", "frames")
    rejected = lookup(world.office.health, "readers", "0", "errors")
    return Stream(
        seconds=seconds,
        driven=world.passages.driven,
        decided=len(world.passages.sent & seen),
        phantoms=phantoms,
        phantoms_passed=sum(
            bool(epcs_of(d) & phantoms) and d.get("decision") == "pass" for d in decisions
        ),
        frames=frames if isinstance(frames, int) else 0,
        frames_rejected=rejected if isinstance(rejected, int) else 0,
        bytes_corrupted=layer.bytes_corrupted,
        reader_downs=len(world.office.alarms_of("reader_down")),
        # A damaged closing frame leaves the round open until reply_timeout_s runs out.
        reply_timeouts=sum(
            str(record.get("reason")).startswith("no reply")
            for record in world.gate.records("reader.down")
        ),
        decisions=Counter(str(d.get("decision")) for d in decisions),
    )


def read_again(office: Receiver, epc: str, outage: int) -> Callable[[], bool]:
    """Whether ``epc`` is in a passage opened once the reader was up again after outage
    number ``outage``, and decided without ``READER_FAULT``."""

    def condition() -> bool:
        back_at = moment(office.alarms_of("reader_up")[outage - 1]["at"])
        return any(
            epc in epcs_of(d)
            and "READER_FAULT" not in reasons(d)
            and moment(d["opened_at"]) >= back_at
            for d in office.decisions
        )

    return condition


async def corruption(tally: Tally, work: Path, plan: Plan, rng: random.Random) -> None:
    # The peer, measured first in the same run: the same stream through an intact line.
    peer_tally = Tally("peer")
    peer = await pallet_stream(
        peer_tally, work / "clean", plan.corruption_s / 3, 0.0, rng.randrange(1 << 32)
    )
    damaged = await pallet_stream(
        tally, work / "corrupt", plan.corruption_s, CORRUPT_RATE, rng.randrange(1 << 32)
    )
    tally.tried, tally.survived = damaged.driven, damaged.decided
    tally.rejected = damaged.frames_rejected
    tally.figures |= {
        "corrupt_rate": CORRUPT_RATE,
        "seconds": damaged.seconds,
        "bytes_corrupted": damaged.bytes_corrupted,
        "frames_decoded_per_s": round(damaged.frames / damaged.seconds, 1),
        "frames_rejected": damaged.frames_rejected,
        "phantom_epcs": sorted(damaged.phantoms),
        "phantoms_passed": damaged.phantoms_passed,
        "decisions": dict(damaged.decisions),
        "reader_down_alarms": damaged.reader_downs,
        "reader_down_no_reply": damaged.reply_timeouts,
        "peer_seconds": round(peer.seconds, 1),
        "peer_pallets_decided": f"{peer.decided}/{peer.driven}",
        "peer_frames_decoded_per_s": round(peer.frames / peer.seconds, 1),
        "peer_reader_down_alarms": peer.reader_downs,
        "peer_lost": None if peer_tally.counts is None else peer_tally.counts.lost,
    }
    tally.checks["zero phantom EPCs"] = not damaged.phantoms
    tally.checks["no phantom passed"] = not damaged.phantoms_passed
    tally.checks["damaged frames rejected and counted"] = damaged.frames_rejected > 0
    peer_ok = peer.decided == peer.driven and tally.figures["peer_lost"] == 0
    tally.checks["peer (intact line) decided every pallet, lost none"] = peer_ok


async def bundles(tally: Tally, work: Path, plan: Plan, rng: random.Random) -> None:
    key = Ed25519PrivateKey.generate()
    tally.rejected, tally.must_reject = 0, True
    by_kind = {"tampered": [0, 0], "rolled_back": [0, 0]}  # tried, rejected with its reason
    passed = kept = 0
    simulator = R2000Simulator()
    async with rig(
        tally,
        work,
        simulator,
        simulator.open_pty(),
        trusted_keys=[public_key_base64(key)],
        whitelist=snapshot(key, WHITELIST_SEQ, "E280"),
    ) as world:
        world.start_stream()
        office = world.office
        baseline = await whitelist_stats(world.gate.config)
        attempts: list[tuple[str, str, bytes]] = []
        for n in range(plan.bundles):
            delta = seizing_delta(key, WHITELIST_SEQ + 1, WHITELIST_SEQ, "E280")
            attempts.append(("tampered", "bad_signature", flip_body_byte(delta, rng)))
            older = (
                snapshot(key, WHITELIST_SEQ - 1 - n, "E280", status="seized")
                if n % 2 == 0
                else seizing_delta(key, WHITELIST_SEQ, WHITELIST_SEQ - 1, "E280")
            )
            attempts.append(("rolled_back", "rollback", older))
        for kind, reason, payload in attempts:
            before_seq = world.decided()
            before = len(office.alarms_of("whitelist_rejected"))
            await world.publish(TOPICS.whitelist, payload)
            tally.tried += 1
            by_kind[kind][0] += 1
            alarmed = await office.until(
                exceeds(alarms(office, "whitelist_rejected"), before), RECOVERY_S
            )
            if alarmed:
                detail = str(office.alarms_of("whitelist_rejected")[before].get("detail"))
                if detail.startswith(f"{reason}:"):
                    tally.rejected += 1
                    by_kind[kind][1] += 1

            def passing(seq: int = before_seq) -> bool:
                return any(
                    int(str(d["seq"])) > seq
                    and d.get("decision") == "pass"
                    and d.get("whitelist_seq") == WHITELIST_SEQ
                    for d in office.decisions
                )

            still_passing = await office.until(passing, RECOVERY_S)
            unchanged = await whitelist_stats(world.gate.config) == baseline
            at_seq = lookup(office.health, "whitelist", "seq") == WHITELIST_SEQ
            passed += still_passing
            kept += unchanged and at_seq
            tally.survived += still_passing and unchanged and at_seq
    tally.checks["store seq and counts unchanged after each"] = kept == tally.tried
    tally.checks["known pallets still pass after each"] = passed == tally.tried
    tally.figures |= {
        "store_seq": baseline.get("seq"),
        "store_records": baseline.get("records"),
        "tampered_tried_rejected": by_kind["tampered"],
        "rolled_back_tried_rejected": by_kind["rolled_back"],
    }
    tally.figures["alarm_reasons"] = dict(
        Counter(
            str(alarm.get("detail")).partition(":")[0]
            for alarm in world.office.alarms_of("whitelist_rejected")
        )
    )


async def commands(tally: Tally, work: Path, plan: Plan, rng: random.Random) -> None:
    officer, impostor = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    tally.rejected, tally.must_reject = 0, True
    kinds = ("bad_json", "unknown_verb", "unsigned", "bad_signature")
    by_kind = {kind: [0, 0] for kind in kinds}
    lit: list[dict[str, bool]] = []
    simulator = R2000Simulator()
    async with GateIoSimulator() as io:
        cable = io.open_pty()
        async with rig(
            tally,
            work,
            simulator,
            simulator.open_pty(),
            devices=[cable],
            operator_keys={OPERATOR: public_key_base64(officer)},
            gate_io=cable.url,
        ) as world:
            office = world.office

            async def watch_coils() -> None:
                while True:
                    await io.until(lambda: io.coils()["green"] or io.coils()["barrier"])
                    lit.append(io.coils())
                    await io.until(lambda: not (io.coils()["green"] or io.coils()["barrier"]))

            world.spawn(watch_coils(), "coils")
            world.start_stream()
            if not await office.until(lambda: bool(office.decisions), RECOVERY_S):
                raise RuntimeError("no decision to release")
            held = office.decisions[0]
            if held.get("decision") != "hold":
                raise RuntimeError(f"the first passage was not held: {held.get('decision')}")
            target = {"passage_id": str(held["passage_id"])}
            # The command path is live before any fault: a ping is answered.
            await world.publish(TOPICS.cmd, json.dumps(command("ping", "ping-0", {})).encode())
            if not await office.until(replied(office, "ping-0"), RECOVERY_S):
                raise RuntimeError("no reply to a ping")
            for n in range(plan.commands):
                for kind in kinds:
                    command_id = f"{kind}-{n}"
                    payload, expected = bad_command(kind, command_id, target, impostor)
                    before_seq, before_log = world.decided(), rejections(world.gate)
                    await world.publish(TOPICS.cmd, payload)
                    tally.tried += 1
                    by_kind[kind][0] += 1
                    if kind == "bad_json":
                        refused = await bounded(
                            exceeds(functools.partial(rejections, world.gate), before_log),
                            RECOVERY_S,
                        )
                    else:
                        refused = await office.until(replied(office, command_id), RECOVERY_S)
                        reply = reply_to(office, command_id) or {}
                        refused = (
                            refused
                            and reply.get("ok") is False
                            and str(reply.get("error")).startswith(expected)
                        )
                    tally.rejected += refused
                    by_kind[kind][1] += refused
                    tally.survived += await world.decision_after(before_seq)
            await asyncio.sleep(0.5)  # anything a bad command caused would be out by now
            released_before = [a for a in office.audits if a.get("name") == "release"]
            lit_before = list(lit)
            # The control: the same passage, correctly signed, is released — it was not before.
            await world.publish(
                TOPICS.cmd, signed(command("release", "control", dict(target)), officer)
            )
            await office.until(replied(office, "control"), RECOVERY_S)
            control = reply_to(office, "control") or {}
            opened = await bounded(lambda: len(lit) > len(lit_before), RECOVERY_S)
    tally.checks["no release audited"] = not released_before
    tally.checks["no coil lit by a refused command"] = not lit_before
    tally.checks["control release accepted and lit"] = control.get("ok") is True and opened
    tally.figures |= {f"{kind}_tried_rejected": counts for kind, counts in by_kind.items()}
    tally.figures["control_reply"] = control
    tally.figures["replies_ok_false"] = sum(r.get("ok") is False for r in world.office.replies)


def bad_command(
    kind: str, command_id: str, target: dict[str, str], impostor: Ed25519PrivateKey
) -> tuple[bytes, str]:
    """A refused command of ``kind`` and the start of the error its reply must carry."""
    if kind == "bad_json":
        whole = json.dumps(command("release", command_id, dict(target)))
        return whole[: len(whole) // 2].encode(), "not JSON"
    if kind == "unknown_verb":
        return json.dumps(command("open_barrier", command_id, dict(target))).encode(), "name:"
    if kind == "unsigned":
        unsigned = json.dumps(command("release", command_id, dict(target))).encode()
        return unsigned, "release must be signed"
    return signed(command("release", command_id, dict(target)), impostor), "bad signature"


def exceeds(count: Callable[[], int], n: int) -> Callable[[], bool]:
    """The condition ``count() > n``, with ``n`` bound now (not when a loop moves on)."""
    return lambda: count() > n


def alarms(office: Receiver, kind: str) -> Callable[[], int]:
    return lambda: len(office.alarms_of(kind))


def replied(office: Receiver, command_id: str) -> Callable[[], bool]:
    return lambda: reply_to(office, command_id) is not None


def lookup(payload: object, *path: str) -> object:
    """``payload[path[0]][path[1]]…`` (a digit indexes a list), or None where it is missing."""
    for name in path:
        if isinstance(payload, list) and name.isdigit() and int(name) < len(payload):
            payload = payload[int(name)]
        elif isinstance(payload, dict):
            payload = payload.get(name)
        else:
            return None
    return payload


def reply_to(office: Receiver, command_id: str) -> Payload | None:
    return next((r for r in office.replies if r.get("command_id") == command_id), None)


def rejections(gate: Gate) -> int:
    return sum(r.get("reason") == "not JSON" for r in gate.records("command.rejected"))


async def bounded(condition: Callable[[], bool], timeout_s: float) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            await poll(condition, 0.05)
    except TimeoutError:
        return False
    return True


Runner = Callable[[Tally, Path, Plan, random.Random], Coroutine[Any, Any, None]]
ROWS: dict[str, tuple[str, Literal["puback", "app"], Runner]] = {
    "broker": ("broker SIGKILL + restart", "app", broker_kills),
    "daemon": ("daemon SIGKILL + restart", "puback", daemon_kills),
    "unplug": ("reader pty unplug + replug", "puback", unplugs),
    "corrupt": ("1 % byte corruption (frames)", "puback", corruption),
    "bundles": ("tampered / rolled-back bundles", "puback", bundles),
    "commands": ("bad / unsigned / badly signed cmds", "puback", commands),
}


async def run_row(key: str, root: Path, plan: Plan, rng: random.Random) -> Row:
    fault, ack, runner = ROWS[key]
    tally = Tally(fault, ack=ack)
    started = time.monotonic()
    error: str | None = None
    try:
        async with asyncio.timeout(ROW_BUDGET_S):
            await runner(tally, root / key, plan, rng)
    except Exception as exc:  # a failed row is reported, and the campaign goes on
        error = f"{type(exc).__name__}: {exc}"
    return Row.of(key, tally, time.monotonic() - started, error)


# -- the report ----------------------------------------------------------------------------


def show(value: object) -> str:
    return "-" if value is None else str(value)


def table(rows: Sequence[Row]) -> list[str]:
    head = (
        f"{'fault':<36} {'ack':<6} {'tried':>5} {'survived':>8} {'lost':>4} {'rejected':>8}"
        f" {'dup':>4} {'decided/received':>16} {'ok':>4} {'s':>5}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        received = f"{show(row.decided)}/{show(row.received)}"
        lines.append(
            f"{row.fault:<36} {row.ack:<6} {row.tried:>5} {row.survived:>8} {show(row.lost):>4}"
            f" {show(row.rejected):>8} {show(row.duplicates):>4} {received:>16}"
            f" {'ok' if row.ok else 'FAIL':>4} {row.seconds:>5.0f}"
        )
    for row in rows:
        lines.append(f"{row.key}:")
        if row.error:
            lines.append(f"  ERROR {row.error}")
        lines += [f"  {'✓' if held else '✗'} {check}" for check, held in row.checks.items()]
        figures = ", ".join(f"{name}={value}" for name, value in row.figures.items())
        if figures:
            lines.append(f"  {figures}")
    return lines


async def campaign(keys: Sequence[str], plan: Plan, seed: int, keep: bool) -> list[Row]:
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="edgegate-reliability-"))
    if keep:
        print(f"  configs, state and daemon logs kept in {root}")
    try:
        rows = []
        for key in keys:
            row = await run_row(key, root, plan, random.Random(rng.randrange(1 << 32)))
            print(f"  {key}: {'ok' if row.ok else 'FAIL'} in {row.seconds:.0f} s", flush=True)
            rows.append(row)
        return rows
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench reliability", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer faults (under 2 minutes)")
    parser.add_argument("--seed", type=int, default=None, help="repeat a campaign's choices")
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"a subset of {','.join(ROWS)} (default: all)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep each row's config, state and daemon log"
    )
    args = parser.parse_args(argv)
    keys = [key for key in args.rows.split(",") if key]
    unknown = set(keys) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    plan = QUICK if args.quick else FULL
    seed = random.randrange(1 << 32) if args.seed is None else args.seed
    print(f"reliability campaign ({'quick' if args.quick else 'full'}), seed {seed}", flush=True)
    started = time.monotonic()
    rows = asyncio.run(campaign(keys, plan, seed, args.keep))
    elapsed_s = time.monotonic() - started
    print("\n".join(table(rows)))
    met = all(row.lost == 0 for row in rows)
    verdict = "met" if met else "NOT met"
    print(f"target: zero lost decisions in every row: {verdict}")
    print(f"every row's own checks held: {all(row.ok for row in rows)}")
    print(f"campaign took {elapsed_s:.0f} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "bench": "reliability",
                "measured_at": measured_at(),
                "meta": {
                    "mode": "quick" if args.quick else "full",
                    "seed": seed,
                    "plan": asdict(plan),
                    "python": platform.python_version(),
                    "machine": platform.machine(),
                    "broker": "mosquitto (edgegate.localbroker), one per row",
                    "restart_s": RESTART_S,
                    "seconds": round(elapsed_s, 1),
                },
                "rows": [asdict(row) for row in rows],
                "targets": {"lost_decisions_per_row": 0, "met": met},
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
