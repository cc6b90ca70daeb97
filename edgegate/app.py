"""The composition root: builds every part from the config and runs them in one TaskGroup.

Owns wiring and lifecycle — nothing else in the package knows all the parts. The flow per
passage (DESIGN.md §2, §10): device sessions emit observations into one queue; the passage
tracker turns them into closed passages; each closed passage is looked up in the whitelist
(one batch query), decided by the pure rules, committed to the durable outbox, and only then
acted on at the gate; the publisher drains the outbox to the broker independently, so a
decision never waits on the network.

Invariants:
- a decision is in the outbox before anything observable happens (log line, gate action);
- on shutdown intake stops first, the open passage is decided and committed, then the
  publisher drains and announces ``stopped``;
- every task is named and owned by a TaskGroup; nothing is fire-and-forget.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import structlog

from edgegate import __version__
from edgegate.config import Config, ConfigError, InspectionConfig, load_config
from edgegate.control import GateControl
from edgegate.devices.actions import GateDriver
from edgegate.devices.factory import UnsupportedDeviceError, build_actuator, build_sessions
from edgegate.gate.actions import ActionSettings, plan_for_decision, plan_for_passage_end
from edgegate.gate.model import (
    ClosedPassage,
    Decision,
    Direction,
    Observation,
    ReaderDown,
    Verdict,
)
from edgegate.gate.passage import PassageEnded, PassageTracker, TrackerEvent, TrackerSettings
from edgegate.gate.rules import DecideContext, Facts, InspectionPolicy, decide
from edgegate.health import DecisionTally, Health, HealthSettings, HealthSources
from edgegate.history import DepartureHistory
from edgegate.ids import uuid7
from edgegate.lifecycle import (
    READY_WAIT_S,
    HealthProbe,
    ReaderStartup,
    ReloadHook,
    plan_reload,
    run_watchdog,
    status_line,
)
from edgegate.logs import configure_logging
from edgegate.mqtt.alarms import AlarmKind, Alarms, ReaderAlarms, overflow_alarm
from edgegate.mqtt.commands import Authority, CommandError, Commands
from edgegate.mqtt.epcis import EpcisSettings, build_epcis_document, utc_offset
from edgegate.mqtt.outbox import AsyncOutbox, NewEvent, OutboxLimits
from edgegate.mqtt.payloads import DecisionMessage, WallClock
from edgegate.mqtt.publisher import Publisher, PublisherSettings, Subscription
from edgegate.mqtt.reads import ReadsTap
from edgegate.mqtt.security import mqtt_password, tls_context
from edgegate.mqtt.topics import Topics
from edgegate.mqtt.whitelist_link import WhitelistLink
from edgegate.systemd import Notifier, credential
from edgegate.whitelist.applier import BundleApplier, ProcessApplier, ThreadApplier
from edgegate.whitelist.facts import gather_facts
from edgegate.whitelist.freshness import freshness
from edgegate.whitelist.store import WhitelistState, WhitelistStore
from edgegate.whitelist.sync import SyncSettings, WhitelistSync

log = structlog.get_logger(__name__)

DECISION_COUNTER = "decision"
EPCIS_COUNTER = "epcis"
# How often rows past outbox.max_age_s are looked for while nothing is appended.
OUTBOX_EXPIRY_CHECK_S = 60.0
# How often the STATUS= line shown by `systemctl status` is refreshed.
STATUS_INTERVAL_S = 10.0
# How long a thread may hold the GIL before another may take it (CPython default 5 ms).
GIL_SWITCH_INTERVAL_S = 0.0005


class Tick:
    """The tracker's next deadline has come: tick it at the current time. One per timer, so
    that a tick queued by a timer that was re-armed meanwhile is known to be stale."""

    __slots__ = ()


class DeadlineTicks:
    """One timer for a deadline that moves: a :class:`Tick` is handed to ``put`` when due.

    Invariant: at most one timer is live, and only its tick counts as current. Under 16
    line-rate readers the tracker loop waits on its queue thousands of times a second; an
    ``asyncio.timeout`` around every wait was a third of the daemon's busy time, while the
    deadline itself moves only when a new EPC arrives or a lingering tag's departure falls due.
    """

    def __init__(self, put: Callable[[Tick], None], clock: Callable[[], float]) -> None:
        self._put = put
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._armed: Tick | None = None
        self._armed_for: float | None = None

    def arm(self, deadline: float | None) -> None:
        """A tick at ``deadline`` (None: no tick); nothing to do while it has not moved."""
        if deadline == self._armed_for:
            return
        self.cancel()
        if deadline is not None:
            tick = self._armed = Tick()
            delay_s = max(0.0, deadline - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay_s, self._put, tick)
            self._armed_for = deadline

    def received(self, tick: Tick) -> None:
        """``tick`` was taken from the queue. The live timer's tick spends it (the next
        :meth:`arm` starts another). A stale one — its timer fired just before a re-arm —
        changes nothing: forgetting the live timer then would leave it running uncancelled,
        and timers would multiply (seen: 43,000 ticks/s ten minutes into a soak)."""
        if tick is self._armed:
            self._timer = self._armed = self._armed_for = None

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._armed = self._armed_for = None


def tracker_settings(config: Config) -> TrackerSettings:
    fixed = None if config.gate.direction == "auto" else Direction(config.gate.direction)
    return TrackerSettings(
        stable_set_s=config.passage.stable_set_ms / 1000,
        max_open_s=config.passage.max_open_s,
        min_rssi_dbm=config.passage.min_rssi_dbm,
        depart_s=config.passage.depart_ms / 1000,
        direction=fixed,
        outside_antennas=frozenset(config.gate.outside_antennas),
        inside_antennas=frozenset(config.gate.inside_antennas),
        barrier_mode=config.gate.mode == "barrier",
        pass_wait_s=config.passage.pass_wait_ms / 1000,
    )


def inspection_policy(config: InspectionConfig) -> InspectionPolicy | None:
    """The random-inspection policy, with its secret seed read once at start-up.

    The seed comes from ``seed_file`` or ``$CREDENTIALS_DIRECTORY/inspection-seed``. Without a
    seed there is no auditable draw, so inspection is off and a warning says so.
    """
    if not config.enabled:
        return None
    seed_path = config.seed_file or credential("inspection-seed")
    if not seed_path:
        log.warning("inspection.disabled_no_seed", seed_id=config.seed_id)
        return None
    with open(seed_path, "rb") as handle:
        seed = handle.read().strip()
    return InspectionPolicy(enabled=True, seed=seed, seed_id=config.seed_id, rates=config.rates)


def read_password(config: Config) -> str | None:
    """The MQTT password (never logged): see :func:`edgegate.mqtt.security.mqtt_password`."""
    return mqtt_password(config.mqtt)


class Daemon:
    def __init__(
        self,
        config: Config,
        clock: Callable[[], float] = time.monotonic,
        *,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self._config = config
        self._config_path = config_path
        self._notifier = notifier or Notifier()
        self._clock = clock
        self._topics = Topics(config.mqtt.topic_prefix, config.gate.site, config.gate.gate_id)
        # None closes intake (shutdown): the tracker decides everything queued before it.
        # A Tick is the tracker's own deadline falling due (see _track).
        self._observations: asyncio.Queue[Observation | Tick | None] = asyncio.Queue()
        self._startup = ReaderStartup(reader.name for reader in config.readers)
        self._reload_requested = asyncio.Event()
        self._reload_hooks: list[ReloadHook] = []
        self._tracker = PassageTracker(tracker_settings(config), new_id=uuid7)
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        # Built here, not in run(): a config naming a device we cannot drive is refused
        # before anything starts.
        self._sessions = build_sessions(config.readers, self._emit)
        self._inspection = inspection_policy(config.inspection)
        self._gate = GateDriver(build_actuator(self._sessions))
        self._actions = ActionSettings(barrier_mode=config.gate.mode == "barrier")
        self._sync: WhitelistSync | None = None  # set once the stores are open
        self._control = GateControl(self._gate, self._actions, self._resync_whitelist)
        # Secrets and key material are read once, before anything starts: a missing file is
        # a one-line config error (edgegate.mqtt.security), never a failure later on.
        self._mqtt_password = mqtt_password(config.mqtt)
        self._tls = tls_context(config.mqtt)
        self._epcis = (
            EpcisSettings(config.outputs.read_point, config.outputs.biz_location or None)
            if config.outputs.epcis
            else None
        )
        self._tally = DecisionTally()
        # Observers of every observation besides the tracker (reader alarms, G/reads);
        # installed by _run_parts before any session runs.
        self._taps: list[Callable[[Observation], None]] = []

    async def _resync_whitelist(self) -> dict[str, object]:
        """The ``resync`` command (§9): ask the back office for what this gate is missing."""
        if self._sync is None:
            raise CommandError("the whitelist sync has not started yet")
        return await self._sync.resync_now()

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        """SIGHUP: re-read the config file and apply what can change while running."""
        self._reload_requested.set()

    def on_reload(self, hook: ReloadHook) -> None:
        """Have ``hook`` receive the effective config after every successful reload.

        The extension point for parts that apply their settings live (new whitelist trusted
        keys, a new log level). Hooks run in registration order on the event loop; one that
        raises is logged and the others still run.
        """
        self._reload_hooks.append(hook)

    def _emit(self, observation: Observation) -> None:
        self._startup.observe(observation)
        self._observations.put_nowait(observation)
        for tap in self._taps:
            tap(observation)

    async def run(self) -> None:
        config = self._config
        # Worker threads (outbox commits, whitelist lookups) hand results back to the event
        # loop; with CPython's default 5 ms switch interval each hand-back can wait that long
        # for the GIL. Measured under 16 readers: decided → received fell from 32 to 4 ms.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        state_dir = config.storage.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self._notifier.status("starting: opening the outbox and the whitelist")
        outbox = await AsyncOutbox.open(
            state_dir / "outbox.db",
            limits=OutboxLimits(config.outbox.max_rows, config.outbox.max_age_s),
            overflow_event=overflow_alarm(self._topics),
        )
        store = await asyncio.to_thread(WhitelistStore.open, state_dir)
        await asyncio.to_thread(store.warm)
        self._history = await asyncio.to_thread(DepartureHistory.open, state_dir)
        self._parts = (outbox, store)
        self._alarms = Alarms(outbox, self._topics)
        try:
            await self._run_parts(outbox, store)
        finally:
            await outbox.close()
            store.close()
            self._history.close()

    async def _run_parts(self, outbox: AsyncOutbox, store: WhitelistStore) -> None:
        config = self._config
        link = WhitelistLink(self._alarms, outbox, self._topics)
        applier: BundleApplier = (
            ProcessApplier(config.storage.state_dir, fallback=ThreadApplier(store))
            if config.whitelist.apply_in == "process"
            else ThreadApplier(store)
        )
        sync = WhitelistSync(
            store,
            SyncSettings(
                site=config.gate.site,
                trusted_keys=config.whitelist.trusted_keys,
                max_bundle_bytes=config.whitelist.max_bundle_mib * 1024 * 1024,
            ),
            alarm=link,
            resync=link,
            applier=applier,
        )
        self._sync = sync
        self.on_reload(lambda new: sync.use_trusted_keys(new.whitelist.trusted_keys))
        commands = Commands(
            Authority(config.commands.operator_keys, time.time),
            self._control,
            outbox,
            self._topics,
            time.time,
        )
        publisher = Publisher(
            PublisherSettings(
                host=config.mqtt.host,
                port=config.mqtt.port,
                client_id=config.client_id,
                keepalive_s=config.mqtt.keepalive_s,
                username=config.mqtt.username or None,
                password=self._mqtt_password,
                tls_context=self._tls,
                window=config.outbox.window,
                ack=config.mqtt.ack,
                ack_timeout_s=config.outbox.ack_timeout_s,
                replay_rate_per_s=config.outbox.replay_rate_per_s,
            ),
            self._topics,
            outbox,
            version=__version__,
            whitelist_seq=lambda: store.state().seq,
            subscriptions=[
                Subscription(self._topics.cmd, commands.on_message),
                Subscription(self._topics.whitelist, sync.on_message),
            ],
        )
        try:
            async with asyncio.TaskGroup() as outer:
                publisher_task = outer.create_task(publisher.run(), name="publisher")
                gate_task = outer.create_task(self._gate.run(), name="gate-outputs")
                sync_task = outer.create_task(sync.run(), name="whitelist-sync")
                upkeep = self._start_upkeep(outer, outbox, store, publisher, applier)
                watchdog_task = self._start_watchdog(outer, outbox)
                async with asyncio.TaskGroup() as intake:
                    readers = {
                        session.name: intake.create_task(
                            session.run(), name=f"reader-{session.name}"
                        )
                        for session in self._sessions
                    }
                    intake.create_task(self._track(outbox, store), name="passage-tracker")
                    control = [
                        intake.create_task(
                            self._report_status(outbox, store), name="service-status"
                        ),
                        intake.create_task(
                            self._reload_on_request(intake, readers, outbox, store), name="reloader"
                        ),
                    ]
                    await self._stop.wait()
                    log.info("daemon.stopping")
                    self._notifier.stopping("stopping: deciding what the readers delivered")
                    for task in control:
                        task.cancel()
                    # Intake stops at the readers. What they delivered is still decided: the
                    # tracker drains the queue up to the None, then closes the open passage.
                    await _cancel_all(readers.values())
                    self._observations.put_nowait(None)
                self._notifier.status("stopping: publishing the outbox")
                publisher.shutdown()
                await publisher_task
                gate_task.cancel()
                sync_task.cancel()
                for task in upkeep:
                    task.cancel()
                if watchdog_task is not None:
                    watchdog_task.cancel()
        finally:
            # The apply process ends with the sync: told to stop, then waited for.
            await applier.aclose()
        log.info("daemon.stopped")

    def _start_upkeep(
        self,
        group: asyncio.TaskGroup,
        outbox: AsyncOutbox,
        store: WhitelistStore,
        publisher: Publisher,
        applier: BundleApplier,
    ) -> list[asyncio.Task[None]]:
        """Health heartbeats, reader alarms, G/reads and outbox expiry, for the whole run."""
        config = self._config
        health = Health(
            HealthSettings(
                interval_s=config.health.interval_s,
                whitelist_max_age_s=config.whitelist.max_age_s,
                outbox_high_water=config.outbox.high_water,
            ),
            self._topics,
            __version__,
            HealthSources(
                # The live list: a reload replaces its sessions in place.
                readers=self._sessions,
                outbox=outbox,
                whitelist=store.state,
                tally=self._tally,
                mqtt=publisher,
                alarms=self._alarms,
                applier=applier,
            ),
        )
        reader_alarms = ReaderAlarms(self._alarms)
        self._taps.append(reader_alarms.offer)
        tasks = [
            group.create_task(health.run(), name="health"),
            group.create_task(reader_alarms.run(), name="reader-alarms"),
            group.create_task(outbox.run_expiry(OUTBOX_EXPIRY_CHECK_S), name="outbox-expiry"),
        ]
        if config.outputs.reads:
            reads = ReadsTap(publisher, self._topics)
            self._taps.append(reads.offer)
            tasks.append(group.create_task(reads.run(), name="reads"))
        return tasks

    def _start_watchdog(
        self, group: asyncio.TaskGroup, outbox: AsyncOutbox
    ) -> asyncio.Task[None] | None:
        """The WATCHDOG=1 task, when systemd asked for one (``WatchdogSec=``)."""
        interval_s = self._notifier.watchdog_interval_s
        if interval_s is None:
            return None
        probes = [HealthProbe("outbox", outbox.probe)]
        return group.create_task(run_watchdog(self._notifier, interval_s, probes), name="watchdog")

    async def _report_status(self, outbox: AsyncOutbox, store: WhitelistStore) -> None:
        """READY=1 once every reader made its first attempt (bounded), then STATUS= updates."""
        silent = await self._startup.wait(READY_WAIT_S)
        if silent:
            log.warning("daemon.readers_silent", readers=sorted(silent), waited_s=READY_WAIT_S)
        log.info(
            "daemon.ready",
            readers=[session.name for session in self._sessions],
            state_dir=str(self._config.storage.state_dir),
        )
        # Everything built so far (modules, config, sessions) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it — a pause that
        # otherwise lands in some passage's decision.
        gc.freeze()
        self.ready.set()
        self._notifier.ready(await self._status("ready", outbox, store))
        while self._notifier.enabled:
            await asyncio.sleep(STATUS_INTERVAL_S)
            self._notifier.status(await self._status("ready", outbox, store))

    async def _status(self, phase: str, outbox: AsyncOutbox, store: WhitelistStore) -> str:
        stats = await outbox.stats()
        up = sum(session.stats.connected for session in self._sessions)
        return status_line(phase, up, len(self._sessions), store.state().seq, stats.depth)

    async def _reload_on_request(
        self,
        intake: asyncio.TaskGroup,
        readers: dict[str, asyncio.Task[None]],
        outbox: AsyncOutbox,
        store: WhitelistStore,
    ) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            await self._reload(intake, readers)
            self._notifier.ready(await self._status("ready", outbox, store))

    async def _reload(
        self, intake: asyncio.TaskGroup, readers: dict[str, asyncio.Task[None]]
    ) -> None:
        """Apply the config file again; on any error keep running on the old config.

        Only the device sessions whose settings changed are restarted; the passage tracker
        (and the passage it has open) and the outbox are untouched.
        """
        path = self._config_path
        if path is None:
            log.warning("config.reload_unavailable", reason="not started from a config file")
            return
        self._notifier.reloading(f"reloading {path}")
        try:
            plan = plan_reload(self._config, await asyncio.to_thread(load_config, path))
            started = build_sessions(plan.readers_to_start, self._emit)
        except (ConfigError, UnsupportedDeviceError) as exc:
            log.error("config.reload_failed", error=str(exc))
            return
        # A changed reader's port must be released before its new session opens it.
        await _cancel_all([readers.pop(name) for name in plan.readers_to_stop])
        remaining = {reader.name for reader in plan.config.readers}
        for name in plan.readers_to_stop:
            if name not in remaining:
                self._tracker.forget_reader(name)
        sessions = {session.name: session for session in self._sessions}
        sessions.update((session.name, session) for session in started)
        # In place: whoever holds the list (health reporting) sees the new sessions.
        self._sessions[:] = [sessions[reader.name] for reader in plan.config.readers]
        self._gate.use(build_actuator(self._sessions))
        self._config = plan.config
        for session in started:
            readers[session.name] = intake.create_task(session.run(), name=f"reader-{session.name}")
        for hook in self._reload_hooks:
            try:
                await hook(plan.config)
            except Exception as exc:
                log.error("config.reload_hook_failed", error=f"{type(exc).__name__}: {exc}")
        log.info(
            "config.reloaded",
            path=str(path),
            readers_stopped=list(plan.readers_to_stop),
            readers_started=[session.name for session in started],
        )
        if plan.restart_needed:
            log.warning("config.restart_needed", sections=list(plan.restart_needed))

    async def _track(self, outbox: AsyncOutbox, store: WhitelistStore) -> None:
        """Feed the tracker until intake closes (None), then decide what is still open;
        its deadlines arrive as ticks queued behind the observations (:class:`DeadlineTicks`)."""
        tracker = self._tracker
        queue = self._observations
        ticks = DeadlineTicks(queue.put_nowait, self._clock)
        try:
            while True:
                ticks.arm(tracker.next_deadline())
                observation = await queue.get()
                if observation is None:
                    break
                if isinstance(observation, Tick):
                    ticks.received(observation)
                    events = tracker.tick(self._clock())
                elif self._configured(observation):
                    events = tracker.observe(observation)
                else:
                    events = []
                for event in events:
                    await self._on_tracker_event(event, outbox, store)
        finally:
            ticks.cancel()
        now = self._clock()
        for event in [*tracker.tick(now), *tracker.flush(now)]:
            await self._on_tracker_event(event, outbox, store)

    def _configured(self, observation: Observation) -> bool:
        """False for the ReaderDown of a reader that a reload removed: queued before its
        session stopped, it would otherwise mark a reader that no longer exists down for
        good, and hold every passage with READER_FAULT."""
        return not isinstance(observation, ReaderDown) or any(
            reader.name == observation.reader for reader in self._config.readers
        )

    async def decide_and_act(self, passage: ClosedPassage) -> None:
        """Decide a closed passage exactly as the tracker's would be (tools, benchmarks):
        look up, decide, commit to the outbox, then act at the gate. Only while running."""
        await self._on_tracker_event(passage, *self._parts)

    def passage_ended(self, passage_id: str) -> None:
        """The passage's vehicle has left (as when both beams clear): close the barrier."""
        self._control.ended(passage_id)
        self._gate.follow(plan_for_passage_end())

    async def _on_tracker_event(
        self, event: TrackerEvent, outbox: AsyncOutbox, store: WhitelistStore
    ) -> None:
        if isinstance(event, PassageEnded):
            self.passage_ended(event.passage_id)
            return
        decision, departed = await self._decide(event, outbox, store)
        wait_s = self._config.commands.customs_wait_ms / 1000
        if decision.verdict is Verdict.PASS and wait_s > 0:
            # A pass waits for customs; a reject / manual disposition supersedes it with a
            # CUSTOMS_HOLD decision (same passage, newer seq) before the barrier opens.
            disposition = await self._control.wait_disposition(
                event.passage_id, decision.pass_no, wait_s
            )
            if disposition in {"reject", "manual"}:
                decision, departed = await self._decide(event, outbox, store, disposition)
        verdict = decision.verdict
        self._control.decided(event.passage_id, verdict, decision.pass_no)
        # Only now, with the decision durable in the outbox, does the gate act (§10).
        self._gate.follow(plan_for_decision(verdict, self._actions))
        # Bookkeeping waits until the gate has its orders: the barrier never waits for it,
        # and a pass superseded by customs records no departure.
        await self._after_commit(event, decision, departed)

    async def _decide(
        self,
        passage: ClosedPassage,
        outbox: AsyncOutbox,
        store: WhitelistStore,
        disposition: str | None = None,
    ) -> tuple[Decision, frozenset[str] | None]:
        """Decide and commit; also which of the passage's EPCs the departure history held
        (None where it was not asked: only an outbound passage needs it)."""
        config = self._config
        facts, departed, state = await asyncio.to_thread(self._look_up, store, passage)
        pass_no = facts.gate_pass.pass_no if facts.gate_pass else facts.scanned_pass_no
        disposition = disposition or self._control.disposition(passage.passage_id, pass_no)
        now = datetime.now(UTC)
        stale = freshness(state.issued_at, now, config.whitelist.max_age_s).stale
        decision = decide(
            passage,
            facts,
            DecideContext(
                now=now,
                whitelist_stale=stale,
                stale_policy_hold=config.whitelist.stale_policy == "hold",
                barrier_mode=config.gate.mode == "barrier",
                customs_disposition=disposition,
                inspection=self._inspection,
            ),
        )
        event_id = uuid7()
        wall_of = WallClock(time.time(), self._clock())

        def payload(seq: int) -> bytes:
            return DecisionMessage(
                event_id=event_id,
                seq=seq,
                site=config.gate.site,
                gate=config.gate.gate_id,
                passage=passage,
                decision=decision,
                wall_of=wall_of,
                decided_at_s=now.timestamp(),
                whitelist_seq=state.seq,
            ).to_json()

        events = [NewEvent(self._topics.decision, event_id, payload, DECISION_COUNTER)]
        if self._epcis is not None:
            document = build_epcis_document(
                passage=passage,
                decision=decision,
                decision_event_id=event_id,
                wall_of=wall_of,
                created_at_s=now.timestamp(),
                tz_offset=utc_offset(now.astimezone()),
                settings=self._epcis,
            )
            epcis = document.to_bytes()
            events.append(
                NewEvent(self._topics.epcis, document.event_id, lambda _: epcis, EPCIS_COUNTER)
            )
        # One transaction: the EPCIS event exists exactly when its decision does.
        seq = (await outbox.append_all(events)).seqs[0]
        self._tally.count(passed=decision.verdict is Verdict.PASS)
        log.info(
            "passage.decided",
            passage_id=passage.passage_id,
            seq=seq,
            decision=decision.verdict.value,
            reasons=[reason.code.value for reason in decision.reasons],
            tags=len(passage.tags),
            cause=passage.close_cause,
        )
        return decision, departed

    def _look_up(
        self, store: WhitelistStore, passage: ClosedPassage
    ) -> tuple[Facts, frozenset[str] | None, WhitelistState]:
        """Everything a decision reads from disk, in one trip to a worker thread."""
        # Only goods going out can be clones of goods already outside (DESIGN.md §8).
        outbound = passage.direction is Direction.OUT
        departed = self._history.departed_among(passage.epcs) if outbound else None
        return gather_facts(store, passage, departed or frozenset()), departed, store.state()

    async def _after_commit(
        self, passage: ClosedPassage, decision: Decision, departed: frozenset[str] | None
    ) -> None:
        """Bookkeeping that follows a durable decision: departures and overdue alarms."""
        if decision.verdict is Verdict.PASS and passage.direction is not Direction.UNKNOWN:
            goods = [epc for epc, record in decision.items.items() if record is not None]
            if departed is not None:  # asked exactly for outbound passages (_look_up)
                await asyncio.to_thread(self._history.leave, goods, already=departed)
            else:
                await asyncio.to_thread(self._history.come_back, goods)
        if decision.overdue_epcs:
            count = len(decision.overdue_epcs)
            await self._alarms.raise_alarm(
                AlarmKind.DECLARATION_OVERDUE,
                "warning",
                f"{count} item(s) past declare_by in passage {passage.passage_id}: "
                + ", ".join(decision.overdue_epcs[:10])
                + (" …" if count > 10 else ""),
            )


def install_signal_handlers(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)


async def _cancel_all(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until every one has finished (links closed)."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)


async def _apply_log_level(config: Config) -> None:
    configure_logging(config.log.level)


async def serve(config: Config, config_path: Path | None = None) -> None:
    """``edgegate run``: the daemon until SIGTERM / SIGINT; SIGHUP reloads ``config_path``."""
    notifier = Notifier.from_environ()
    if notifier.unsupported:
        log.warning("systemd.notify_unsupported", notify_socket=notifier.unsupported)
    daemon = Daemon(config, config_path=config_path, notifier=notifier)
    daemon.on_reload(_apply_log_level)
    install_signal_handlers(daemon)
    await daemon.run()
