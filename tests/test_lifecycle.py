"""Readiness, the health-gated watchdog (against a real notify socket) and reload plans."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgegate.config import Config, parse_config
from edgegate.gate.model import ReaderDown, ReaderUp, TagSeen
from edgegate.lifecycle import (
    HealthProbe,
    ReaderStartup,
    plan_reload,
    run_watchdog,
    status_line,
)
from edgegate.systemd import Notifier

WAIT_S = 10.0


async def test_startup_is_complete_once_every_reader_reported_up_or_down() -> None:
    startup = ReaderStartup(["rfid-1", "rfid-2"])
    startup.observe(TagSeen("rfid-1", "E200", 1, -50.0, 0.0))
    startup.observe(ReaderUp("rfid-1", 0.1))
    waiting = asyncio.create_task(startup.wait(WAIT_S))
    await asyncio.sleep(0)
    assert not waiting.done()
    startup.observe(ReaderDown("rfid-2", "cannot open /dev/ttyUSB9", 0.2))
    assert await waiting == frozenset()


async def test_a_reader_that_never_reports_is_named_when_the_wait_runs_out() -> None:
    startup = ReaderStartup(["rfid-1", "io-1"])
    startup.observe(ReaderUp("rfid-1", 0.0))
    assert await startup.wait(0.01) == frozenset({"io-1"})


async def test_a_gate_without_readers_is_started_at_once() -> None:
    assert await ReaderStartup([]).wait(WAIT_S) == frozenset()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Notifier]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.setblocking(False)
        yield sock, Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "notify")})


async def test_the_watchdog_pings_only_while_every_probe_answers(
    notify_socket: tuple[socket.socket, Notifier],
) -> None:
    sock, notifier = notify_socket
    loop = asyncio.get_running_loop()
    healthy = True
    unhealthy_rounds = 0
    wedged = asyncio.Event()  # never set: an unhealthy probe hangs like a stuck thread

    async def outbox_probe() -> None:
        nonlocal unhealthy_rounds
        if not healthy:
            unhealthy_rounds += 1
            await wedged.wait()

    async def until(condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not condition():
                await asyncio.sleep(0.005)

    task = asyncio.create_task(
        run_watchdog(notifier, 0.02, [HealthProbe("outbox", outbox_probe)]), name="watchdog"
    )
    try:
        async with asyncio.timeout(WAIT_S):
            assert await loop.sock_recv(sock, 64) == b"WATCHDOG=1"
            assert await loop.sock_recv(sock, 64) == b"WATCHDOG=1"
        healthy = False
        # Once an unhealthy round has begun, every ping of the healthy rounds is sent.
        await until(lambda: unhealthy_rounds >= 1)
        while True:
            try:
                sock.recv(64)
            except BlockingIOError:
                break
        await until(lambda: unhealthy_rounds >= 3)
        with pytest.raises(BlockingIOError):
            sock.recv(64)
        healthy = True
        async with asyncio.timeout(WAIT_S):
            assert await loop.sock_recv(sock, 64) == b"WATCHDOG=1"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_probe_that_raises_counts_as_unhealthy(
    notify_socket: tuple[socket.socket, Notifier],
) -> None:
    sock, notifier = notify_socket
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("database is locked")

    task = asyncio.create_task(run_watchdog(notifier, 0.01, [HealthProbe("db", broken)]))
    try:
        async with asyncio.timeout(WAIT_S):
            while calls < 3:
                await asyncio.sleep(0.005)
        with pytest.raises(BlockingIOError):
            sock.recv(64)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def config(**sections: object) -> Config:
    data: dict[str, object] = {
        "gate": {"site": "HAK-CBZ", "gate_id": "G01"},
        "readers": [
            {"name": "rfid-1", "kind": "r2000", "url": "/dev/edgegate/rfid-1"},
            {"name": "rfid-2", "kind": "r2000", "url": "/dev/edgegate/rfid-2"},
        ],
    }
    data.update(sections)
    return parse_config(data, environ={})


def test_reloading_the_same_config_changes_nothing() -> None:
    plan = plan_reload(config(), config())
    assert plan.config == config()
    assert (plan.readers_to_stop, plan.readers_to_start, plan.restart_needed) == ((), (), ())


def test_a_reader_with_a_new_url_is_stopped_and_started_again() -> None:
    moved = config(
        readers=[
            {"name": "rfid-1", "kind": "r2000", "url": "socket://10.0.0.9:7001"},
            {"name": "rfid-2", "kind": "r2000", "url": "/dev/edgegate/rfid-2"},
        ]
    )
    plan = plan_reload(config(), moved)
    assert plan.readers_to_stop == ("rfid-1",)
    assert [r.url for r in plan.readers_to_start] == ["socket://10.0.0.9:7001"]
    assert plan.config.readers == moved.readers


def test_a_removed_reader_is_stopped_and_an_added_one_started() -> None:
    plan = plan_reload(
        config(),
        config(
            readers=[
                {"name": "rfid-2", "kind": "r2000", "url": "/dev/edgegate/rfid-2"},
                {"name": "rfid-3", "kind": "r2000", "url": "/dev/edgegate/rfid-3"},
            ]
        ),
    )
    assert plan.readers_to_stop == ("rfid-1",)
    assert [r.name for r in plan.readers_to_start] == ["rfid-3"]


def test_whitelist_keys_and_log_level_apply_live() -> None:
    key = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
    plan = plan_reload(config(), config(whitelist={"trusted_keys": [key]}, log={"level": "debug"}))
    assert plan.config.whitelist.trusted_keys == (key,)
    assert plan.config.log.level == "debug"
    assert plan.restart_needed == ()


def test_sections_that_need_a_restart_keep_their_running_values_and_are_named() -> None:
    running = config()
    plan = plan_reload(
        running,
        config(
            gate={"site": "HAK-CBZ", "gate_id": "G02"},
            mqtt={"host": "10.0.0.5"},
            passage={"stable_set_ms": 1200},
        ),
    )
    assert plan.restart_needed == ("gate", "mqtt", "passage")
    assert plan.config.gate == running.gate
    assert plan.config.mqtt == running.mqtt
    assert plan.config.passage == running.passage


def test_the_status_line_names_readers_whitelist_and_outbox() -> None:
    assert status_line("ready", 2, 2, 42, 0) == (
        "ready: 2/2 readers up, whitelist seq 42, outbox 0"
    )
    assert status_line("ready", 0, 1, None, 17) == "ready: 0/1 readers up, no whitelist, outbox 17"
