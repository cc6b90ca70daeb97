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
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from edgegate import __version__
from edgegate.config import Config, InspectionConfig
from edgegate.control import GateControl
from edgegate.devices.actions import GateDriver
from edgegate.devices.factory import build_actuator, build_sessions
from edgegate.gate.actions import ActionSettings, plan_for_decision, plan_for_passage_end
from edgegate.gate.model import ClosedPassage, Decision, Direction, Observation, Verdict
from edgegate.gate.passage import PassageEnded, PassageTracker, TrackerEvent, TrackerSettings
from edgegate.gate.rules import DecideContext, InspectionPolicy, decide
from edgegate.ids import uuid7
from edgegate.mqtt.commands import Authority, Commands
from edgegate.mqtt.outbox import AsyncOutbox
from edgegate.mqtt.payloads import WallClock, build_decision_event
from edgegate.mqtt.publisher import Publisher, PublisherSettings, Subscription
from edgegate.mqtt.topics import Topics
from edgegate.whitelist.facts import gather_facts
from edgegate.whitelist.store import WhitelistStore

log = structlog.get_logger(__name__)

DECISION_COUNTER = "decision"


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
    seed_path = config.seed_file or _credential("inspection-seed")
    if not seed_path:
        log.warning("inspection.disabled_no_seed", seed_id=config.seed_id)
        return None
    with open(seed_path, "rb") as handle:
        seed = handle.read().strip()
    return InspectionPolicy(enabled=True, seed=seed, seed_id=config.seed_id, rates=config.rates)


def _credential(name: str) -> str:
    directory = os.environ.get("CREDENTIALS_DIRECTORY", "")
    path = os.path.join(directory, name) if directory else ""
    return path if path and os.path.exists(path) else ""


def read_password(config: Config) -> str | None:
    """The MQTT password from ``mqtt.password`` or ``mqtt.password_file`` (never logged)."""
    if config.mqtt.password is not None:
        return config.mqtt.password.get_secret_value()
    if config.mqtt.password_file:
        with open(config.mqtt.password_file, encoding="utf-8") as handle:
            return handle.read().strip()
    return None


class Daemon:
    def __init__(
        self,
        config: Config,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._clock = clock
        self._topics = Topics(config.mqtt.topic_prefix, config.gate.site, config.gate.gate_id)
        self._observations: asyncio.Queue[Observation] = asyncio.Queue()
        self._tracker = PassageTracker(tracker_settings(config), new_id=uuid7)
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        # Built here, not in run(): a config naming a device we cannot drive is refused
        # before anything starts.
        self._sessions = build_sessions(config.readers, self._observations.put_nowait)
        self._inspection = inspection_policy(config.inspection)
        self._gate = GateDriver(build_actuator(self._sessions))
        self._actions = ActionSettings(barrier_mode=config.gate.mode == "barrier")
        self._control = GateControl(self._gate, self._actions)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        config = self._config
        state_dir = config.storage.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        outbox = await AsyncOutbox.open(state_dir / "outbox.db")
        store = await asyncio.to_thread(WhitelistStore.open, state_dir)
        try:
            await self._run_parts(outbox, store)
        finally:
            await outbox.close()
            store.close()

    async def _run_parts(self, outbox: AsyncOutbox, store: WhitelistStore) -> None:
        config = self._config
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
                password=read_password(config),
            ),
            self._topics,
            outbox,
            version=__version__,
            whitelist_seq=lambda: store.state().seq,
            subscriptions=[Subscription(self._topics.cmd, commands.on_message)],
        )
        sessions = self._sessions
        async with asyncio.TaskGroup() as outer:
            publisher_task = outer.create_task(publisher.run(), name="publisher")
            gate_task = outer.create_task(self._gate.run(), name="gate-outputs")
            async with asyncio.TaskGroup() as intake:
                tasks = [
                    intake.create_task(session.run(), name=f"reader-{session.name}")
                    for session in sessions
                ]
                tracker_task = intake.create_task(
                    self._track(outbox, store), name="passage-tracker"
                )
                log.info(
                    "daemon.ready",
                    readers=[session.name for session in sessions],
                    state_dir=str(config.storage.state_dir),
                )
                self.ready.set()
                await self._stop.wait()
                log.info("daemon.stopping")
                for task in [*tasks, tracker_task]:
                    task.cancel()
            # Intake has stopped: decide what is still open so that no passage is lost.
            for event in self._tracker.flush(self._clock()):
                await self._on_tracker_event(event, outbox, store)
            publisher.shutdown()
            await publisher_task
            gate_task.cancel()
        log.info("daemon.stopped")

    async def _track(self, outbox: AsyncOutbox, store: WhitelistStore) -> None:
        tracker = self._tracker
        while True:
            deadline = tracker.next_deadline()
            timeout_s = None if deadline is None else max(0.0, deadline - self._clock())
            try:
                async with asyncio.timeout(timeout_s):
                    observation = await self._observations.get()
            except TimeoutError:
                events = tracker.tick(self._clock())
            else:
                events = tracker.observe(observation)
            for event in events:
                await self._on_tracker_event(event, outbox, store)

    async def _on_tracker_event(
        self, event: TrackerEvent, outbox: AsyncOutbox, store: WhitelistStore
    ) -> None:
        if isinstance(event, PassageEnded):
            self._control.ended(event.passage_id)
            self._gate.follow(plan_for_passage_end())
            return
        decision = await self._decide(event, outbox, store)
        wait_s = self._config.commands.customs_wait_ms / 1000
        if decision.verdict is Verdict.PASS and wait_s > 0:
            # A pass waits for customs; a reject / manual disposition supersedes it with a
            # CUSTOMS_HOLD decision (same passage, newer seq) before the barrier opens.
            disposition = await self._control.wait_disposition(
                event.passage_id, decision.pass_no, wait_s
            )
            if disposition in {"reject", "manual"}:
                decision = await self._decide(event, outbox, store, disposition)
        verdict = decision.verdict
        self._control.decided(event.passage_id, verdict, decision.pass_no)
        # Only now, with the decision durable in the outbox, does the gate act (§10).
        self._gate.follow(plan_for_decision(verdict, self._actions))

    async def _decide(
        self,
        passage: ClosedPassage,
        outbox: AsyncOutbox,
        store: WhitelistStore,
        disposition: str | None = None,
    ) -> Decision:
        config = self._config
        facts = await asyncio.to_thread(gather_facts, store, passage)
        pass_no = facts.gate_pass.pass_no if facts.gate_pass else facts.scanned_pass_no
        disposition = disposition or self._control.disposition(passage.passage_id, pass_no)
        state = store.state()
        now = datetime.now(UTC)
        stale = state.issued_at is None or (
            (now - state.issued_at).total_seconds() > config.whitelist.max_age_s
        )
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
            return build_decision_event(
                event_id=event_id,
                seq=seq,
                site=config.gate.site,
                gate=config.gate.gate_id,
                passage=passage,
                decision=decision,
                wall_of=wall_of,
                decided_at_s=now.timestamp(),
                whitelist_seq=state.seq,
            ).to_bytes()

        seq = await outbox.append(
            self._topics.decision, event_id, payload, counter=DECISION_COUNTER
        )
        log.info(
            "passage.decided",
            passage_id=passage.passage_id,
            seq=seq,
            decision=decision.verdict.value,
            reasons=[reason.code.value for reason in decision.reasons],
            tags=len(passage.tags),
            cause=passage.close_cause,
        )
        return decision


def install_signal_handlers(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.request_stop)


async def serve(config: Config) -> None:
    """``edgegate run``: the daemon until SIGTERM / SIGINT."""
    daemon = Daemon(config)
    install_signal_handlers(daemon)
    await daemon.run()
