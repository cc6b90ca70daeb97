"""Running as a service: what "ready" means, the health-gated watchdog, and reload plans.

Owns three service-manager concerns that the composition root (app.py) wires in:

- **Readiness.** The daemon is ready once its store is open, its whitelist loaded, and every
  configured device session has finished its first attempt — it reported ``ReaderUp`` or
  ``ReaderDown``. Not "connected": a reader that is down at start must not hold the gate
  back (its passages are held with ``READER_FAULT``), but a gate that reports ready before
  it even tried its readers would lie. A port that cannot be opened reports down at once, a
  port that opens but stays silent reports down after its reply timeout, and anything that
  hangs longer is cut off by the caller's bounded wait (:data:`READY_WAIT_S`).
- **Watchdog.** ``WATCHDOG=1`` is sent only while every :class:`HealthProbe` answers within
  half the ping interval. That the ping task runs at all proves the event loop is alive; the
  probes prove what the loop alone cannot (the outbox thread still takes work).
- **Reload.** :func:`plan_reload` compares the running config with a freshly loaded one:
  readers, whitelist and log settings apply live; every other section keeps its running
  value until a restart, and the plan names the sections that changed.

Invariant: nothing here performs I/O except through the callables it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import structlog

from edgegate.config import Config, ReaderConfig
from edgegate.gate.model import Observation, ReaderDown, ReaderUp
from edgegate.systemd import Notifier

log = structlog.get_logger(__name__)

# Bounded wait for every reader's first report before READY=1 — well inside systemd's
# default TimeoutStartSec (90 s), and longer than any reader's reply timeout by default.
READY_WAIT_S = 10.0

# Sections a running daemon applies on SIGHUP; every other section needs a restart.
LIVE_SECTIONS = frozenset({"readers", "whitelist", "log"})

ReloadHook = Callable[[Config], Awaitable[None]]
"""Called with the effective config after a successful reload (see :meth:`Daemon.on_reload`)."""


class ReaderStartup:
    """Which configured readers have not reported their first attempt yet."""

    def __init__(self, readers: Iterable[str]) -> None:
        self._waiting = set(readers)
        self._done = asyncio.Event()
        if not self._waiting:
            self._done.set()

    def observe(self, observation: Observation) -> None:
        if self._waiting and isinstance(observation, ReaderUp | ReaderDown):
            self._waiting.discard(observation.reader)
            if not self._waiting:
                self._done.set()

    async def wait(self, timeout_s: float) -> frozenset[str]:
        """Wait up to ``timeout_s`` for every first report; returns the readers still silent."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._done.wait()
        return frozenset(self._waiting)


@dataclass(frozen=True, slots=True)
class HealthProbe:
    """One health condition: ``check`` must return within the watchdog's budget."""

    name: str
    check: Callable[[], Awaitable[None]]


async def run_watchdog(
    notifier: Notifier, interval_s: float, probes: Sequence[HealthProbe]
) -> None:
    """Send ``WATCHDOG=1`` every ``interval_s`` while every probe passes; runs until cancelled.

    A probe gets half the interval; an unhealthy round skips its ping, and systemd restarts
    the service once ``WatchdogSec`` passes without one.
    """
    loop = asyncio.get_running_loop()
    budget_s = interval_s / 2
    next_ping = loop.time()
    while True:
        failed = await _failed_probes(probes, budget_s)
        if failed:
            log.error("watchdog.unhealthy", failed=failed, budget_s=budget_s)
        else:
            notifier.watchdog()
        # A fixed cadence: a slow probe delays this round, not every round after it.
        next_ping += interval_s
        await asyncio.sleep(max(0.0, next_ping - loop.time()))


async def _failed_probes(probes: Sequence[HealthProbe], budget_s: float) -> list[str]:
    async with asyncio.TaskGroup() as group:
        tasks = {
            probe.name: group.create_task(_passes(probe, budget_s), name=f"probe-{probe.name}")
            for probe in probes
        }
    return [name for name, task in tasks.items() if not task.result()]


async def _passes(probe: HealthProbe, budget_s: float) -> bool:
    try:
        async with asyncio.timeout(budget_s):
            await probe.check()
    except TimeoutError:
        return False
    except Exception as exc:
        log.error("watchdog.probe_failed", probe=probe.name, error=f"{type(exc).__name__}: {exc}")
        return False
    return True


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload changes. ``config`` is the effective config after it."""

    config: Config
    readers_to_stop: tuple[str, ...]
    readers_to_start: tuple[ReaderConfig, ...]
    restart_needed: tuple[str, ...]


def plan_reload(running: Config, loaded: Config) -> ReloadPlan:
    """Compare the running config with a newly loaded one.

    A reader whose settings changed in any way is stopped and started again under the new
    ones; a removed reader is stopped; a new one is started. Sections outside
    :data:`LIVE_SECTIONS` keep their running values.
    """
    kept = {
        section: getattr(running, section)
        for section in Config.model_fields
        if section not in LIVE_SECTIONS
    }
    restart_needed = tuple(s for s, value in kept.items() if getattr(loaded, s) != value)
    before = {reader.name: reader for reader in running.readers}
    after = {reader.name: reader for reader in loaded.readers}
    return ReloadPlan(
        config=loaded.model_copy(update=kept),
        readers_to_stop=tuple(name for name, r in before.items() if after.get(name) != r),
        readers_to_start=tuple(r for name, r in after.items() if before.get(name) != r),
        restart_needed=restart_needed,
    )


def status_line(
    phase: str, readers_up: int, readers: int, whitelist_seq: int | None, outbox_depth: int
) -> str:
    """The ``STATUS=`` text ``systemctl status`` shows, e.g.
    ``ready: 2/2 readers up, whitelist seq 42, outbox 0``."""
    whitelist = "no whitelist" if whitelist_seq is None else f"whitelist seq {whitelist_seq}"
    return f"{phase}: {readers_up}/{readers} readers up, {whitelist}, outbox {outbox_depth}"
