"""Live whitelist sync (DESIGN.md §7, §9): bundles from ``P/<site>/whitelist`` into the store.

Owns what happens to a bundle that arrives over MQTT. The publisher's message loop hands it
to :meth:`WhitelistSync.on_message`, which only checks its size and queues it;
:meth:`WhitelistSync.run` has them verified and applied one at a time, in arrival order, by
its applier (the daemon's apply process, or a worker thread: see applier.py), so the event
loop — and every decision — goes on meanwhile (lookups use their own connection; SQLite WAL
lets them read the last committed whitelist).

Outcomes, each logged (``whitelist.applied``, ``whitelist.duplicate``, ``whitelist.rejected``):
- applied: a snapshot replaced everything, or a delta changed what it names, atomically;
- duplicate (the bundle applied before, or a snapshot of the current seq): MQTT delivers at
  least once, and the back office answers one gate's resync on the site-wide topic — no
  alarm;
- rejected for any other reason (signature, key, site, rollback, gap, format, size): a
  ``whitelist_rejected`` alarm naming the reason, and no change to the store;
- a gap additionally asks the back office for what is missing (``G/whitelist/resync``
  ``{"have_seq": n}``), and the gate keeps deciding with the whitelist it has.

Invariants:
- the message loop never waits for a verification or an apply, and queued bundles are
  bounded in bytes: past the budget a bundle is dropped, counted, and a resync requested
  once the queue has drained (the back office resends what was dropped);
- at most one resync request (and one ``gap`` alarm) per ``have_seq`` per
  ``resync_interval_s``: a burst of out-of-order deltas after an outage asks once, not once
  per delta; the deltas after the first are logged (``whitelist.gap_pending``);
- a database that is busy or failing (another process importing, disk trouble) is no
  reason to drop a bundle: it is retried until it applies or is rejected;
- this module knows nothing of MQTT: it reaches the outside world through the two small
  protocols below, which the composition root satisfies with the outbox and the alarms.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import structlog

from edgegate.whitelist.applier import ApplyRequest, BundleApplier, ThreadApplier
from edgegate.whitelist.bundle import TrustedKeys
from edgegate.whitelist.errors import BundleError, RejectReason
from edgegate.whitelist.store import ApplyResult, StoreError, WhitelistStore

log = structlog.get_logger(__name__)

# With no bundle to apply, the store is warmed this often anyway (see WhitelistStore.warm):
# another process (``whitelist import``, ``reindex``) may have replaced the item index, and
# the file it replaced keeps its disk space until this process closes it.
IDLE_WARM_S = 10.0


class RejectionAlarm(Protocol):
    """Raises ``whitelist_rejected`` (durably: it must reach the back office)."""

    async def whitelist_rejected(self, detail: str) -> None: ...


class ResyncRequester(Protocol):
    """Publishes ``G/whitelist/resync`` (durably, whenever the broker is reachable)."""

    async def request_resync(self, have_seq: int | None, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SyncSettings:
    site: str
    trusted_keys: tuple[str, ...]
    max_bundle_bytes: int
    resync_interval_s: float = 60.0
    # Bytes of bundles waiting to be applied; beyond it, arrivals are dropped (see above).
    queue_budget_bytes: int | None = None  # default: four maximal bundles
    retry_s: float = 5.0


@dataclass(slots=True)
class SyncCounters:
    """What the sync has done since start (for health and tests)."""

    received: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    dropped: int = 0
    resync_requests: int = 0
    store_errors: int = 0
    index_builds: int = 0  # item index rebuilds after deltas (see _build_index)
    last_applied_seq: int | None = None
    last_rejection: str | None = None


@dataclass(frozen=True, slots=True)
class _Oversized:
    size: int


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


class WhitelistSync:
    def __init__(
        self,
        store: WhitelistStore,
        settings: SyncSettings,
        alarm: RejectionAlarm,
        resync: ResyncRequester,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        applier: BundleApplier | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._applier = applier or ThreadApplier(store)
        self._trusted_keys = settings.trusted_keys
        self._alarm = alarm
        self._resync = resync
        self._clock = clock
        self._wall = wall
        self._queue: asyncio.Queue[bytes | _Oversized] = asyncio.Queue()
        self._queued_bytes = 0
        self._budget = settings.queue_budget_bytes or 4 * settings.max_bundle_bytes
        self._lost = False  # a bundle was dropped: ask for a resync once the queue drains
        self._last_request: tuple[int | None, float] | None = None
        self.counters = SyncCounters()
        # Parsed here only to refuse a malformed key now; the applier parses them per bundle.
        if not TrustedKeys.from_base64(settings.trusted_keys).by_id:
            log.warning("whitelist.no_trusted_keys", detail="every bundle will be rejected")

    async def use_trusted_keys(self, trusted_keys: tuple[str, ...]) -> None:
        """Trust these keys from the next bundle on (a config reload during a key rotation)."""
        TrustedKeys.from_base64(trusted_keys)  # a malformed key is refused here, not per bundle
        self._trusted_keys = trusted_keys

    async def resync_now(self) -> dict[str, object]:
        """The operator's ``resync`` command: ask the back office now, whatever was asked before."""
        state = await asyncio.to_thread(self._store.state)
        have = state.seq if state.site == self._settings.site else None
        self._last_request = None
        await self._request(have, "command")
        return {"have_seq": have}

    async def on_message(self, topic: str, payload: bytes) -> None:
        """The subscription handler: bounded and quick — check the size, queue, return."""
        self.counters.received += 1
        size = len(payload)
        if size > self._settings.max_bundle_bytes:
            self._queue.put_nowait(_Oversized(size))  # rejected, in order, by run()
            return
        if self._queued_bytes + size > self._budget:
            self.counters.dropped += 1
            self._lost = True
            log.warning("whitelist.dropped", bytes=size, queued_bytes=self._queued_bytes)
            return
        self._queued_bytes += size
        self._queue.put_nowait(payload)

    async def run(self) -> None:
        """Apply queued bundles in order, forever (cancel to stop)."""
        state = await asyncio.to_thread(self._store.state)
        if state.seq is None or state.site != self._settings.site:
            await self._request(None, "empty")
        while True:
            if self._queue.empty() and self._lost:
                self._lost = False
                state = await asyncio.to_thread(self._store.state)
                await self._request(state.seq if state.site == self._settings.site else None, "gap")
            try:
                async with asyncio.timeout(IDLE_WARM_S):
                    item = await self._queue.get()
            except TimeoutError:
                await self._warm()
                continue
            if isinstance(item, _Oversized):
                limit = self._settings.max_bundle_bytes
                await self._rejected(
                    BundleError(
                        RejectReason.OVERSIZED, f"bundle of {item.size} bytes exceeds {limit}"
                    ),
                    item.size,
                    None,
                )
                continue
            self._queued_bytes -= len(item)
            await self._handle(item)

    async def _handle(self, payload: bytes) -> None:
        sha256 = await asyncio.to_thread(_digest, payload)  # a 64 MiB payload takes a while
        while True:
            try:
                request = ApplyRequest(
                    site=self._settings.site,
                    trusted_keys=self._trusted_keys,
                    max_bundle_bytes=self._settings.max_bundle_bytes,
                    now=self._wall(),
                )
                result = await self._applier.apply(payload, sha256, request)
            except BundleError as exc:
                await self._refused(exc, len(payload), sha256)
                return
            except StoreError as exc:
                # Busy (another process importing) or failing: the bundle itself may be fine.
                self.counters.store_errors += 1
                log.error(
                    "whitelist.store_error", error=str(exc), retry_in_s=self._settings.retry_s
                )
                await asyncio.sleep(self._settings.retry_s)
                continue
            except Exception as exc:
                # A fault of ours, not of the bundle: it did not apply (the transaction rolled
                # back), and one bundle must not take the daemon down. Loud, then go on.
                log.exception("whitelist.apply_failed", sha256=sha256)
                await self._alarm.whitelist_rejected(
                    f"internal_error: {type(exc).__name__}: {exc} (sha256 {sha256[:16]})"
                )
                return
            self._applied(result)
            await self._warm()
            if result.index_due:
                await self._build_index()
            return

    async def _build_index(self) -> None:
        """Rebuild the item index after the delta that made it due, before the next bundle.

        The delta is applied and in force already (its items are read from the database);
        this only brings lookups back to full speed. Minutes at 10M items: cancelling stops
        the build within a few hundred rows (see the appliers), so the daemon still stops
        promptly. A build that fails is logged and left to the next delta, which finds it
        still due.
        """
        started = time.monotonic()
        try:
            state = await self._applier.reindex(self._wall())
        except StoreError as exc:
            log.error("whitelist.index_failed", error=str(exc))
            return
        except Exception:
            log.exception("whitelist.index_failed")  # e.g. the disk is full
            return
        log.info(
            "whitelist.index_built",
            records=state.records,
            file=state.file,
            seconds=round(time.monotonic() - started, 1),
        )
        await self._warm()
        self.counters.index_builds += 1

    async def _warm(self) -> None:
        """Have the store read what lookups need after this change (see WhitelistStore.warm)
        here rather than in the next passage. Failing costs that passage the reading only."""
        try:
            await asyncio.to_thread(self._store.warm)
        except StoreError as exc:
            log.warning("whitelist.warm_failed", error=str(exc))

    def _applied(self, result: ApplyResult) -> None:
        self.counters.applied += 1
        self.counters.last_applied_seq = result.seq
        log.info(
            "whitelist.applied",
            kind=result.kind.value,
            seq=result.seq,
            previous_seq=result.previous_seq,
            records=result.records,
            counts={str(rtype): n for rtype, n in result.counts.items()},
            index_built=result.index_built,
            index_due=result.index_due,
        )

    async def _refused(self, error: BundleError, size: int, sha256: str) -> None:
        if error.reason is RejectReason.DUPLICATE:
            self.counters.duplicates += 1
            log.info("whitelist.duplicate", detail=error.message)
            return
        if error.reason is RejectReason.GAP:
            state = await asyncio.to_thread(self._store.state)
            have = state.seq if state.site == self._settings.site else None
            if not self._due(have):
                # Already asked for this seq: the answer is on its way (or will be asked
                # for again after resync_interval_s). Logged, not alarmed again.
                log.info("whitelist.gap_pending", have_seq=have, detail=error.message)
                return
            await self._rejected(error, size, sha256)
            await self._request(have, "gap")
            return
        await self._rejected(error, size, sha256)

    async def _rejected(self, error: BundleError, size: int, sha256: str | None) -> None:
        self.counters.rejected[error.reason.value] += 1
        self.counters.last_rejection = error.reason.value
        digest = "" if sha256 is None else f", sha256 {sha256[:16]}"
        detail = f"{error.reason}: {error.message} ({size} bytes{digest})"
        log.warning("whitelist.rejected", reason=error.reason.value, detail=detail)
        await self._alarm.whitelist_rejected(detail)

    def _due(self, have_seq: int | None) -> bool:
        last = self._last_request
        return (
            last is None
            or last[0] != have_seq
            or self._clock() - last[1] >= self._settings.resync_interval_s
        )

    async def _request(self, have_seq: int | None, reason: str) -> None:
        if not self._due(have_seq):
            return
        self._last_request = (have_seq, self._clock())
        self.counters.resync_requests += 1
        log.info("whitelist.resync_requested", have_seq=have_seq, reason=reason)
        await self._resync.request_resync(have_seq, reason)
