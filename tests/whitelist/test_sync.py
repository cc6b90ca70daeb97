"""Live sync against a real broker: the daemon's WhitelistSync behind a real Publisher and
outbox, fed by the back-office simulator (or by hand-made bundles for the rejections)."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgegate.localbroker import LocalBroker
from edgegate.mqtt.alarms import Alarms
from edgegate.mqtt.outbox import AsyncOutbox
from edgegate.mqtt.publisher import Publisher, PublisherSettings, Subscription
from edgegate.mqtt.topics import Topics
from edgegate.mqtt.whitelist_link import WhitelistLink
from edgegate.whitelist import sync as sync_module
from edgegate.whitelist.applier import ProcessApplier, ThreadApplier
from edgegate.whitelist.bundle import VerifiedBundle, public_key_base64
from edgegate.whitelist.records import RecordType
from edgegate.whitelist.store import ApplyResult, IndexState, WhitelistStore
from edgegate.whitelist.sync import SyncSettings, WhitelistSync
from simulators.backoffice import BackOffice, BackOfficeSettings

from .support import EPC, ITEM, SITE, Forge, epc, item, open_files

TIMEOUT_S = 20
MAX_BUNDLE = 256 * 1024


@dataclass
class Watcher:
    """Everything the gate publishes, as the back office sees it."""

    alarms: list[dict[str, object]] = field(default_factory=list)
    resyncs: list[dict[str, object]] = field(default_factory=list)
    online: bool = False  # the gate announced itself, so it has subscribed


@dataclass
class Gate:
    topics: Topics
    store: WhitelistStore
    sync: WhitelistSync
    outbox: AsyncOutbox
    watcher: Watcher
    broker: LocalBroker
    run_publisher: Callable[[], asyncio.Task[None]]
    publisher: Publisher | None = None
    publisher_task: asyncio.Task[None] | None = None

    async def stop_publisher(self) -> None:
        assert self.publisher is not None
        assert self.publisher_task is not None
        self.publisher.shutdown()
        await self.publisher_task

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while not predicate():
                await asyncio.sleep(0.02)

    async def drained(self) -> None:
        """Everything the gate committed has been acknowledged by the broker."""
        async with asyncio.timeout(TIMEOUT_S):
            while (await self.outbox.stats()).depth:
                await asyncio.sleep(0.02)

    async def wait_seq(self, seq: int) -> None:
        await self.wait_for(lambda: self.store.state().seq == seq)

    async def published(self, bundle: bytes) -> None:
        await self.wait_for(lambda: self.watcher.online)
        async with aiomqtt.Client(self.broker.host, self.broker.port) as client:
            await client.publish(self.topics.whitelist, bundle, qos=1)


@pytest.fixture
def topics() -> Topics:
    # A prefix of its own per test: the session broker is shared, and P/<site>/whitelist is
    # site-wide.
    return Topics(f"t{uuid.uuid4().hex[:10]}", SITE, "G01")


@pytest.fixture(params=["thread", "process"])
def apply_in(request: pytest.FixtureRequest) -> str:
    """Where the gate applies bundles: both places must behave alike."""
    return str(request.param)


@pytest.fixture
def office_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


async def _watch(
    broker: LocalBroker, topics: Topics, watcher: Watcher, ready: asyncio.Event
) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(topics.alarm, qos=1)
        await client.subscribe(topics.whitelist_resync, qos=1)
        await client.subscribe(topics.status, qos=1)
        ready.set()
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            payload = json.loads(message.payload)
            if message.topic.matches(topics.alarm):
                watcher.alarms.append(payload)
            elif message.topic.matches(topics.status):
                watcher.online = payload["state"] == "online"
            else:
                assert isinstance(payload.pop("event_id"), str)  # acknowledgeable (ack = "app")
                watcher.resyncs.append(payload)


@asynccontextmanager
async def running_gate(
    tmp_path: Path,
    broker: LocalBroker,
    topics: Topics,
    trusted: list[str],
    store: WhitelistStore | None = None,
    max_bundle: int = MAX_BUNDLE,
    apply_in: str = "thread",
) -> AsyncIterator[Gate]:
    store = store or WhitelistStore.open(tmp_path / "state")
    outbox = await AsyncOutbox.open(tmp_path / "outbox.db")
    link = WhitelistLink(Alarms(outbox, topics), outbox, topics)
    settings = SyncSettings(site=SITE, trusted_keys=tuple(trusted), max_bundle_bytes=max_bundle)
    applier = (
        ProcessApplier(
            store.path.parent, fallback=ThreadApplier(store), reindex_after=store.reindex_after
        )
        if apply_in == "process"
        else ThreadApplier(store)
    )
    sync = WhitelistSync(store, settings, alarm=link, resync=link, applier=applier)
    watcher = Watcher()
    client_id = f"gate-{topics.prefix}"
    async with asyncio.TaskGroup() as group:
        watching = asyncio.Event()
        watch = group.create_task(_watch(broker, topics, watcher, watching))
        await watching.wait()

        def run_publisher() -> asyncio.Task[None]:
            publisher = Publisher(
                PublisherSettings(
                    broker.host, broker.port, client_id, backoff_base_s=0.05, backoff_cap_s=0.3
                ),
                topics,
                outbox,
                version="test",
                whitelist_seq=lambda: store.state().seq,
                subscriptions=[Subscription(topics.whitelist, sync.on_message)],
            )
            gate.publisher = publisher
            gate.publisher_task = group.create_task(publisher.run(), name="publisher")
            return gate.publisher_task

        gate = Gate(topics, store, sync, outbox, watcher, broker, run_publisher)
        run_publisher()
        sync_task = group.create_task(sync.run(), name="whitelist-sync")
        try:
            yield gate
        finally:
            if gate.publisher is not None and gate.publisher_task is not None:
                gate.publisher.shutdown()
                await gate.publisher_task
            sync_task.cancel()
            watch.cancel()
    await applier.aclose()
    await outbox.close()
    store.close()


@asynccontextmanager
async def running_office(
    broker: LocalBroker, topics: Topics, key: Ed25519PrivateKey, items: int = 60
) -> AsyncIterator[BackOffice]:
    office = BackOffice(
        BackOfficeSettings(
            host=broker.host,
            port=broker.port,
            topic_prefix=topics.prefix,
            site=SITE,
            items=items,
            delta_interval_s=3600,  # the tests publish deltas themselves
            changes_per_delta=8,
        ),
        key,
    )
    ready = asyncio.Event()
    task = asyncio.create_task(office.run(ready), name="backoffice")
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await ready.wait()
        yield office
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def matches_office(store: WhitelistStore, office: BackOffice) -> bool:
    items = [key for kind, key in office.records if kind == "item"]
    found = store.lookup_items(items)
    return len(found) == len(items) and all(
        found[epc_].status == office.records[("item", epc_)]["status"] for epc_ in items
    )


async def test_a_new_gate_asks_for_the_whitelist_then_applies_deltas_in_order(
    tmp_path: Path,
    broker: LocalBroker,
    topics: Topics,
    office_key: Ed25519PrivateKey,
    apply_in: str,
) -> None:
    trusted = [public_key_base64(office_key)]
    async with (
        running_office(broker, topics, office_key) as office,
        running_gate(tmp_path, broker, topics, trusted, apply_in=apply_in) as gate,
    ):
        await gate.wait_seq(1)  # the answer to its "empty" resync (or the first snapshot)
        assert gate.watcher.resyncs[0] == {"have_seq": None, "reason": "empty"}
        for _ in range(3):
            await office.publish_delta()
        await gate.wait_seq(4)

        assert matches_office(gate.store, office)
        state = gate.store.state()
        assert state.counts[RecordType.ITEM] == sum(1 for k, _ in office.records if k == "item")
        assert gate.sync.counters.applied >= 4
        assert gate.watcher.alarms == []


async def test_a_gap_asks_for_one_resync_with_have_seq_and_the_gate_catches_up(
    tmp_path: Path, broker: LocalBroker, topics: Topics, office_key: Ed25519PrivateKey
) -> None:
    async with (
        running_office(broker, topics, office_key) as office,
        running_gate(tmp_path, broker, topics, [public_key_base64(office_key)]) as gate,
    ):
        await gate.wait_seq(1)
        await gate.wait_for(lambda: gate.watcher.resyncs == [{"have_seq": None, "reason": "empty"}])
        office.next_delta()  # seq 2 and 3 are lost on the way
        office.next_delta()
        await office.publish_delta()  # 4: a gap
        await office.publish_delta()  # 5: the same gap, already asked about

        await gate.wait_seq(5)
        assert matches_office(gate.store, office)
        await gate.wait_for(lambda: len(gate.watcher.resyncs) >= 2)
        await gate.drained()
        resyncs = gate.watcher.resyncs[1:]
        assert resyncs == [{"have_seq": 1, "reason": "gap"}]
        gaps = [a for a in gate.watcher.alarms if str(a["detail"]).startswith("gap:")]
        assert len(gaps) == 1
        assert gaps[0]["kind"] == "whitelist_rejected"
        assert office.resyncs_answered == 2


async def test_deltas_published_while_the_gate_is_offline_arrive_when_it_reconnects(
    tmp_path: Path, broker: LocalBroker, topics: Topics, office_key: Ed25519PrivateKey
) -> None:
    async with (
        running_office(broker, topics, office_key) as office,
        running_gate(tmp_path, broker, topics, [public_key_base64(office_key)]) as gate,
    ):
        await gate.wait_seq(1)
        await gate.stop_publisher()  # offline; its session (and subscription) persists

        for _ in range(3):
            await office.publish_delta()
        assert gate.store.state().seq == 1
        gate.run_publisher()  # the same client id: the broker delivers what it queued

        await gate.wait_seq(4)
        assert matches_office(gate.store, office)
        assert [r["reason"] for r in gate.watcher.resyncs] == ["empty"]  # no gap, no resync


def _forged(forge: Forge) -> dict[str, Callable[[], bytes]]:
    """One bundle per rejection reason, against a store at snapshot seq 5."""
    stranger = Forge(Ed25519PrivateKey.generate())

    def tampered() -> bytes:
        data = bytearray(forge.sign(forge.body([item(epc(1))], kind="delta", seq=6)))
        data[data.index(b'"bonded"') + 1] ^= 0x01
        return bytes(data)

    def delta(records: list[dict[str, object]], **header: object) -> bytes:
        return forge.sign(forge.body(records, **({"kind": "delta", "seq": 6} | header)))  # type: ignore[arg-type]

    upsert = {"op": "upsert", **item(epc(1))}
    return {
        "bad_signature": tampered,
        "unknown_key": lambda: stranger.sign(stranger.body([upsert], kind="delta", seq=6)),
        "wrong_site": lambda: delta([upsert], site="SHA-FTZ"),
        "rollback": lambda: forge.sign(forge.body([item(epc(1))], seq=4)),
        "gap": lambda: forge.sign(forge.body([upsert], kind="delta", seq=8, base_seq=7)),
        "malformed_json": lambda: forge.sign(forge.body([], kind="delta", seq=6, count=1) + b"{"),
        "unknown_record_type": lambda: delta([{"op": "upsert", "type": "container"}]),
        "missing_key_field": lambda: delta([{"op": "delete", "type": "item"}]),
        "count_mismatch": lambda: delta([upsert], count=2),
        "oversized": lambda: delta([{"op": "upsert", **item(epc(n))} for n in range(1200)]),
        "bad_gzip": lambda: gzip.compress(delta([upsert]))[:-9],
        "bad_field": lambda: delta([{"op": "upsert", **item(epc(1), status="lost")}]),
        "bad_header": lambda: delta([upsert], version=2),
        "malformed_signature_line": lambda: b"not a signature\n" + delta([upsert]),
    }


REASONS = list(_forged(Forge(Ed25519PrivateKey.generate())))


@pytest.mark.parametrize("reason", REASONS)
async def test_each_rejection_raises_an_alarm_naming_its_reason_and_changes_nothing(
    tmp_path: Path, broker: LocalBroker, topics: Topics, forge: Forge, reason: str, apply_in: str
) -> None:
    store = WhitelistStore.open(tmp_path / "state")
    store.apply(
        forge.snapshot([ITEM, item(epc(1), sku="OLD")], seq=5),
        site=SITE,
        sha256="seed",
        now=datetime.now(UTC),
    )
    before = (store.state(), store.lookup_items([EPC, epc(1)]))
    bundle = _forged(forge)[reason]()
    trusted = [public_key_base64(forge.private)]

    async with running_gate(tmp_path, broker, topics, trusted, store, apply_in=apply_in) as gate:
        await gate.published(bundle)
        await gate.wait_for(lambda: bool(gate.watcher.alarms))

        [alarm] = gate.watcher.alarms
        assert alarm["kind"] == "whitelist_rejected"
        assert str(alarm["detail"]).startswith(f"{reason}: ")
        assert gate.sync.counters.rejected == {reason: 1}
        assert (store.state(), store.lookup_items([EPC, epc(1)])) == before


async def test_a_redelivered_bundle_is_a_silent_duplicate(
    tmp_path: Path, broker: LocalBroker, topics: Topics, forge: Forge
) -> None:
    delta = forge.sign(forge.body([{"op": "upsert", **item(epc(7))}], kind="delta", seq=2))
    store = WhitelistStore.open(tmp_path / "state")
    store.apply(forge.snapshot([ITEM], seq=1), site=SITE, sha256="s", now=datetime.now(UTC))

    async with running_gate(
        tmp_path, broker, topics, [public_key_base64(forge.private)], store
    ) as gate:
        await gate.published(delta)
        await gate.published(delta)
        await gate.wait_for(lambda: gate.sync.counters.duplicates == 1)

        assert gate.store.state().seq == 2
        await gate.drained()
        assert gate.watcher.alarms == []


def seeded(state_dir: Path, forge: Forge, items: int) -> str | None:
    """Apply a snapshot of ``items`` items to a store there, as a gate had it; its index file."""
    with WhitelistStore.open(state_dir) as seed:
        snapshot = forge.snapshot([item(epc(n)) for n in range(items)], seq=1)
        seed.apply(snapshot, site=SITE, sha256="s", now=datetime.now(UTC))
        return seed.index_state().file


class _PausingStore(WhitelistStore):
    """Stops every apply inside its open write transaction until told to go on."""

    applying = threading.Event()
    resume = threading.Event()

    def apply(self, bundle: VerifiedBundle, **kw: object) -> ApplyResult:
        def hold(_done: int) -> None:
            self.applying.set()
            assert self.resume.wait(TIMEOUT_S)

        return super().apply(bundle, progress=hold, **kw)  # type: ignore[arg-type]


async def test_decisions_go_on_while_a_delta_is_being_applied(
    tmp_path: Path, broker: LocalBroker, topics: Topics, forge: Forge
) -> None:
    seeded(tmp_path / "state", forge, 2000)
    store = _PausingStore.open(tmp_path / "state")
    changes = [{"op": "upsert", **item(epc(n), status="seized")} for n in range(2000)]
    delta = forge.sign(forge.body(changes, kind="delta", seq=2))

    trusted = [public_key_base64(forge.private)]
    async with running_gate(tmp_path, broker, topics, trusted, store, max_bundle=4 << 20) as gate:
        await gate.published(delta)
        try:
            assert await asyncio.to_thread(_PausingStore.applying.wait, TIMEOUT_S)
            # The delta is mid-transaction. A passage of 1,000 tags is looked up meanwhile,
            # from the event loop's side, and sees the last committed whitelist.
            for _ in range(3):
                found = await asyncio.to_thread(store.lookup_items, [epc(n) for n in range(1000)])
                assert len(found) == 1000
                assert {r.status for r in found.values()} == {"bonded"}
            assert store.state().seq == 1
        finally:
            _PausingStore.resume.set()
        await gate.wait_seq(2)
        assert store.item(epc(5)).status == "seized"  # type: ignore[union-attr]


async def test_a_delta_that_makes_the_index_due_is_in_force_first_then_the_index_is_rebuilt(
    tmp_path: Path, broker: LocalBroker, topics: Topics, forge: Forge, apply_in: str
) -> None:
    first = seeded(tmp_path / "state", forge, 40)
    store = WhitelistStore.open(tmp_path / "state", reindex_after=10)
    changes = [{"op": "upsert", **item(epc(n), status="seized")} for n in range(15)]

    trusted = [public_key_base64(forge.private)]
    async with running_gate(tmp_path, broker, topics, trusted, store, apply_in=apply_in) as gate:
        await gate.published(forge.sign(forge.body(changes, kind="delta", seq=2)))
        await gate.wait_for(lambda: gate.sync.counters.index_builds == 1)

        state = store.index_state()
        assert (state.usable, state.records, state.unindexed) == (True, 40, 0)
        assert state.file != first
        assert gate.sync.counters.applied == 1
        # Opened already by the sync (see WhitelistStore.warm), not by the next passage.
        assert store.path.parent / str(state.file) in open_files()
        found = store.lookup_items([epc(n) for n in range(20)])
        assert [found[epc(n)].status for n in range(14, 16)] == ["seized", "bonded"]


async def test_an_idle_sync_closes_the_index_file_another_process_replaced(
    tmp_path: Path,
    broker: LocalBroker,
    topics: Topics,
    forge: Forge,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sync_module, "IDLE_WARM_S", 0.05)
    old = tmp_path / "state" / str(seeded(tmp_path / "state", forge, 3))
    trusted = [public_key_base64(forge.private)]
    async with running_gate(tmp_path, broker, topics, trusted) as gate:
        await gate.wait_for(lambda: old in open_files())
        with WhitelistStore.open(tmp_path / "state") as cli:  # e.g. ``whitelist import``
            snapshot = forge.snapshot([item(epc(7))], seq=2)
            cli.apply(snapshot, site=SITE, sha256="s2", now=datetime.now(UTC))
            new = tmp_path / "state" / str(cli.index_state().file)

        # Removed from the directory at once; its space is the daemon's until it closes it.
        assert not old.exists()
        await gate.wait_for(lambda: old not in open_files() and new in open_files())
        assert sorted(gate.store.lookup_items([epc(0), epc(7)])) == [epc(7)]


class _UntilStopped(threading.Event):
    """What the build asks "stop?": the first time, it waits to be told (a 10M-item build
    takes minutes), inside the build's write transaction."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__()
        self.stop = stop

    def is_set(self) -> bool:
        _LongBuildStore.building.set()
        _LongBuildStore.stopped = self.stop.wait(TIMEOUT_S)
        return _LongBuildStore.stopped


class _LongBuildStore(WhitelistStore):
    building = threading.Event()
    stopped = False

    def reindex(self, *, now: datetime, stop: threading.Event | None = None) -> IndexState:
        assert stop is not None
        return super().reindex(now=now, stop=_UntilStopped(stop))


async def test_a_daemon_stopping_mid_build_stops_the_build_and_keeps_the_delta(
    tmp_path: Path, broker: LocalBroker, topics: Topics, forge: Forge
) -> None:
    first = seeded(tmp_path / "state", forge, 40)
    store = _LongBuildStore.open(tmp_path / "state", reindex_after=10)
    changes = [{"op": "upsert", **item(epc(n), status="seized")} for n in range(15)]

    trusted = [public_key_base64(forge.private)]
    async with running_gate(tmp_path, broker, topics, trusted, store) as gate:
        await gate.published(forge.sign(forge.body(changes, kind="delta", seq=2)))
        assert await asyncio.to_thread(_LongBuildStore.building.wait, TIMEOUT_S)
    # Leaving running_gate cancelled the sync, which told the build to stop; closing the
    # store waited for that. The build removed its file; the delta stays applied.

    assert _LongBuildStore.stopped
    with WhitelistStore.open(tmp_path / "state") as reopened:
        state = reopened.index_state()
        assert (state.file, state.unindexed) == (first, 15)
        files = {p.name for p in (tmp_path / "state").glob("whitelist.items-*")}
        assert first in files
        assert len(files) == 2  # and the index of the delta's 15 items; none half-written
        assert reopened.state().seq == 2
        assert reopened.item(epc(3)).status == "seized"  # type: ignore[union-attr]


def test_the_resync_request_payload_is_the_contract(topics: Topics) -> None:
    from edgegate.mqtt.payloads import WhitelistResync

    assert json.loads(WhitelistResync(event_id="e-1", have_seq=41, reason="gap").to_bytes()) == {
        "event_id": "e-1",
        "have_seq": 41,
        "reason": "gap",
    }


class Recorder:
    """The sync's two ways out, written down (no broker needed for these)."""

    def __init__(self) -> None:
        self.alarms: list[str] = []
        self.resyncs: list[tuple[int | None, str]] = []

    async def whitelist_rejected(self, detail: str) -> None:
        self.alarms.append(detail)

    async def request_resync(self, have_seq: int | None, reason: str) -> None:
        self.resyncs.append((have_seq, reason))


async def test_past_the_queue_budget_a_bundle_is_dropped_and_a_resync_asked_after(
    tmp_path: Path, forge: Forge
) -> None:
    store = WhitelistStore.open(tmp_path)
    store.apply(forge.snapshot([ITEM], seq=1), site=SITE, sha256="s", now=datetime.now(UTC))
    deltas = [
        forge.sign(forge.body([{"op": "upsert", **item(epc(n))}], kind="delta", seq=n + 2))
        for n in range(3)
    ]
    out = Recorder()
    settings = SyncSettings(
        SITE,
        (public_key_base64(forge.private),),
        max_bundle_bytes=MAX_BUNDLE,
        queue_budget_bytes=len(deltas[0]) + len(deltas[1]),
    )
    sync = WhitelistSync(store, settings, alarm=out, resync=out)
    for delta in deltas:  # arrive faster than they are applied
        await sync.on_message("w", delta)
    assert sync.counters.dropped == 1

    async with asyncio.TaskGroup() as group:
        task = group.create_task(sync.run())
        async with asyncio.timeout(TIMEOUT_S):
            while not out.resyncs:
                await asyncio.sleep(0.01)
        task.cancel()
    assert store.state().seq == 3
    assert out.resyncs == [(3, "gap")]
    assert out.alarms == []
    store.close()


async def test_the_resync_command_asks_at_once_even_if_just_asked(
    tmp_path: Path, forge: Forge
) -> None:
    store = WhitelistStore.open(tmp_path)
    out = Recorder()
    sync = WhitelistSync(
        store, SyncSettings(SITE, (), max_bundle_bytes=MAX_BUNDLE), alarm=out, resync=out
    )
    async with asyncio.TaskGroup() as group:
        task = group.create_task(sync.run())
        async with asyncio.timeout(TIMEOUT_S):
            while not out.resyncs:
                await asyncio.sleep(0.01)
        assert await sync.resync_now() == {"have_seq": None}
        task.cancel()
    assert out.resyncs == [(None, "empty"), (None, "command")]
    store.close()
