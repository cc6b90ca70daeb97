"""Bundles applied in a child process: the same answers and refusals as in the daemon's own
thread, seen by the daemon's store, and a child that dies or is stopped never leaves half a
change behind."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgegate.whitelist.applier import ApplyRequest, ProcessApplier, ThreadApplier
from edgegate.whitelist.bundle import public_key_base64
from edgegate.whitelist.errors import BundleError, RejectReason
from edgegate.whitelist.index import INDEX_PREFIX
from edgegate.whitelist.records import RecordType
from edgegate.whitelist.store import IndexState, WhitelistStore

from .support import SITE, Forge, epc, item

TIMEOUT_S = 20
NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


@pytest.fixture
async def applier(tmp_path: Path) -> AsyncIterator[ProcessApplier]:
    with WhitelistStore.open(tmp_path, reindex_after=5) as daemon_store:
        applier = ProcessApplier(tmp_path, fallback=ThreadApplier(daemon_store), reindex_after=5)
        try:
            yield applier
        finally:
            await applier.aclose()


def request(forge: Forge) -> ApplyRequest:
    return ApplyRequest(SITE, (public_key_base64(forge.private),), 64 << 20, NOW)


def signed(forge: Forge, records: list[dict[str, object]], **header: object) -> bytes:
    return forge.sign(forge.body(records, **header))


async def apply(applier: ProcessApplier, forge: Forge, bundle: bytes) -> object:
    return await applier.apply(bundle, hashlib.sha256(bundle).hexdigest(), request(forge))


async def test_bundles_applied_in_the_child_answer_as_in_a_thread_and_reach_the_daemon_s_store(
    tmp_path: Path, applier: ProcessApplier, forge: Forge
) -> None:
    snapshot = signed(forge, [item(epc(n)) for n in range(10)], seq=1)
    changes = [{"op": "upsert", **item(epc(n), status="seized")} for n in range(6)]
    delta = signed(forge, changes, kind="delta", seq=2)
    with WhitelistStore.open(tmp_path) as daemon_store:
        first = await apply(applier, forge, snapshot)
        second = await apply(applier, forge, delta)
        assert daemon_store.item(epc(5)).status == "seized"  # type: ignore[union-attr]
        built = await applier.reindex(NOW)
        assert daemon_store.index_state() == built

    with WhitelistStore.open(tmp_path / "twin", reindex_after=5) as twin:
        threaded = ThreadApplier(twin)
        twin_first = await threaded.apply(
            snapshot, hashlib.sha256(snapshot).hexdigest(), request(forge)
        )
        twin_second = await threaded.apply(delta, hashlib.sha256(delta).hexdigest(), request(forge))
    assert (first, second) == (twin_first, twin_second)
    assert second.index_due  # type: ignore[attr-defined]
    assert second.counts[RecordType.ITEM] == 10  # type: ignore[attr-defined]
    assert (built.records, built.unindexed, built.usable) == (10, 0, True)
    assert applier.started == 1


@pytest.mark.parametrize(
    ("bundle_of", "reason"),
    [
        (lambda f: f.sign(f.body([item(epc(1))], seq=2))[:-3] + b"}\n", RejectReason.BAD_SIGNATURE),
        (lambda f: f.sign(f.body([item(epc(1))], kind="delta", seq=5)), RejectReason.GAP),
        (
            lambda f: f.sign(f.body([item(epc(1))], seq=2, site="ELSEWHERE")),
            RejectReason.WRONG_SITE,
        ),
    ],
    ids=["bad signature", "gap", "wrong site"],
)
async def test_a_refusal_in_the_child_comes_back_with_its_reason_and_changes_nothing(
    tmp_path: Path, applier: ProcessApplier, forge: Forge, bundle_of: object, reason: RejectReason
) -> None:
    await apply(applier, forge, signed(forge, [item(epc(n)) for n in range(3)], seq=1))
    bundle = bundle_of(forge)  # type: ignore[operator]

    with pytest.raises(BundleError) as refused:
        await apply(applier, forge, bundle)

    assert refused.value.reason is reason
    with WhitelistStore.open(tmp_path) as store:
        assert store.state().seq == 1
        assert sorted(store.lookup_items([epc(n) for n in range(4)])) == [epc(0), epc(1), epc(2)]
    assert applier.started == 1  # a refusal is an answer, not a crash


async def test_a_child_killed_between_bundles_is_replaced_and_the_next_bundle_applies(
    tmp_path: Path, applier: ProcessApplier, forge: Forge
) -> None:
    await apply(applier, forge, signed(forge, [item(epc(1))], seq=1))
    assert applier.pid is not None
    os.kill(applier.pid, signal.SIGKILL)
    async with asyncio.timeout(TIMEOUT_S):
        while applier.alive:
            await asyncio.sleep(0.01)

    upsert = {"op": "upsert", **item(epc(2))}
    await apply(applier, forge, signed(forge, [upsert], kind="delta", seq=2))

    assert applier.started == 2
    with WhitelistStore.open(tmp_path) as store:
        assert store.state().seq == 2


async def test_a_bundle_whose_child_dies_during_the_apply_is_applied_by_the_fallback(
    tmp_path: Path, applier: ProcessApplier, forge: Forge
) -> None:
    await apply(applier, forge, signed(forge, [item(epc(1))], seq=1))
    assert applier.pid is not None
    os.kill(applier.pid, signal.SIGSTOP)  # frozen, then killed while it holds the request
    pending = asyncio.create_task(apply(applier, forge, signed(forge, [item(epc(2))], seq=2)))
    await asyncio.sleep(0.2)
    os.kill(applier.pid, signal.SIGKILL)

    result = await pending

    assert result.seq == 2  # type: ignore[attr-defined]
    assert (applier.fallbacks, applier.gave_up, applier.applied_in) == (1, False, "process")
    with WhitelistStore.open(tmp_path) as store:
        assert sorted(store.lookup_items([epc(1), epc(2)])) == [epc(2)]
    upsert = {"op": "upsert", **item(epc(3))}
    await apply(applier, forge, signed(forge, [upsert], kind="delta", seq=3))
    assert (applier.started, applier.fallbacks) == (2, 1)  # a new child took the next one


async def test_without_a_child_every_bundle_still_applies_and_after_three_failures_in_the_daemon(
    tmp_path: Path, forge: Forge
) -> None:
    with WhitelistStore.open(tmp_path) as daemon_store:
        applier = ProcessApplier(
            tmp_path, fallback=ThreadApplier(daemon_store), python=str(tmp_path / "no-python")
        )
        await apply(applier, forge, signed(forge, [item(epc(0))], seq=1))
        for seq in range(2, 6):
            upsert = {"op": "upsert", **item(epc(seq))}
            await apply(applier, forge, signed(forge, [upsert], kind="delta", seq=seq))
        await applier.reindex(NOW)

        assert daemon_store.state().seq == 5
        assert daemon_store.index_state().unindexed == 0
    assert (applier.started, applier.fallbacks, applier.gave_up) == (0, 6, True)
    assert applier.applied_in == "thread"


async def test_a_cancelled_request_stops_the_child_which_leaves_all_or_nothing(
    tmp_path: Path, applier: ProcessApplier, forge: Forge
) -> None:
    await apply(applier, forge, signed(forge, [item(epc(1))], seq=1))
    big = signed(forge, [item(epc(n)) for n in range(20_000)], seq=2)
    pid = applier.pid
    assert pid is not None
    pending = asyncio.create_task(apply(applier, forge, big))
    await asyncio.sleep(0.05)
    # Frozen wherever it got to (reading the bundle, applying it, writing its index), so the
    # request is surely in flight when it is cancelled; the stop arrives as it resumes.
    os.kill(pid, signal.SIGSTOP)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    os.kill(pid, signal.SIGCONT)
    await applier.aclose()

    assert not applier.alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    seq, index, files = whitelist_as_left(tmp_path)
    assert seq in (1, 2)
    assert index.records == (1 if seq == 1 else 20_000)
    assert files == [index.file]  # the index of what is applied, and no other


def whitelist_as_left(state_dir: Path) -> tuple[int | None, IndexState, list[str | None]]:
    with WhitelistStore.open(state_dir) as store:
        files: list[str | None] = sorted(p.name for p in state_dir.glob(f"{INDEX_PREFIX}*"))
        return store.state().seq, store.index_state(), files


async def test_a_stopped_daemon_leaves_no_child_behind(
    applier: ProcessApplier, forge: Forge
) -> None:
    await apply(applier, forge, signed(forge, [item(epc(1))], seq=1))
    pid = applier.pid
    assert pid is not None

    await applier.aclose()

    assert not applier.alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
