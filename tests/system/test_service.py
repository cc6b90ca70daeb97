"""`edgegate run` as systemd runs it: sd_notify on a real socket, SIGTERM, SIGHUP.

The daemon is a real process on a simulated reader's pty and a real broker; the notification
socket is a real AF_UNIX datagram socket standing in for systemd's.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest

from edgegate.app import Daemon
from edgegate.config import Config, load_config
from edgegate.localbroker import LocalBroker
from edgegate.mqtt.outbox import Outbox
from edgegate.mqtt.topics import Topics
from edgegate.whitelist.bundle import generate_keypair, load_private_key, sign_body
from simulators.endpoints import PtyEndpoint
from simulators.r2000 import R2000Simulator

from .support import (
    KNOWN,
    SITE,
    STRANGER,
    WAIT_S,
    NotifySocket,
    import_whitelist,
    log_event,
    next_json,
    pass_pallet,
    reap,
    start_daemon,
    status,
    write_bundle,
    write_config,
)

pytestmark = pytest.mark.system

# Another trusted key, as an operator would add it to [whitelist] trusted_keys.
NEW_KEY = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    socket = NotifySocket(tmp_path / "notify")
    yield socket
    socket.close()


@pytest.fixture
async def second_reader() -> AsyncIterator[tuple[R2000Simulator, PtyEndpoint]]:
    simulator = R2000Simulator()
    endpoint = simulator.open_pty()
    task = asyncio.create_task(endpoint.run(), name="r2000-simulator-2")
    yield simulator, endpoint
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.01)


async def read_tags(simulator: R2000Simulator, epcs: list[str]) -> None:
    """Put ``epcs`` in the field and wait until the daemon has certainly received them: it
    asks for the round after the one that carried them only once that round is processed."""
    rounds = simulator.rounds
    for epc in epcs:
        simulator.add_tag(epc, antenna_port=1, rssi_dbm=-54)
    await until(lambda: simulator.rounds >= rounds + 2)


async def decisions_until_stopped(
    messages: AsyncIterator[aiomqtt.Message], topics: Topics
) -> list[dict[str, object]]:
    """Every decision published before the retained ``stopped`` status."""
    decisions: list[dict[str, object]] = []
    async with asyncio.timeout(WAIT_S):
        async for message in messages:
            assert isinstance(message.payload, bytes)
            payload = json.loads(message.payload)
            if str(message.topic) == topics.decision:
                decisions.append(payload)
            elif str(message.topic) == topics.status and payload["state"] == "stopped":
                return decisions
    raise AssertionError("subscription ended")


def outbox_depth(state_dir: Path) -> int:
    outbox = Outbox.open(state_dir / "outbox.db")
    try:
        return outbox.stats().depth
    finally:
        outbox.close()


async def test_systemd_hears_ready_watchdog_and_stopping(
    gate_config: Path, notify: NotifySocket
) -> None:
    process = await start_daemon(
        gate_config, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"}
    )
    try:
        ready = await notify.expect("READY")
        await notify.expect("WATCHDOG")
        await notify.expect("WATCHDOG")
        process.send_signal(signal.SIGTERM)
        stopping = await notify.expect("STOPPING")
        async with asyncio.timeout(WAIT_S):
            assert await process.wait() == 0
    finally:
        await reap(process)
    assert notify.messages[0]["STATUS"].startswith("starting")
    # The pty reader answered its first request before READY: it counts as up.
    assert ready["STATUS"] == "ready: 1/1 readers up, whitelist seq 3, outbox 0"
    assert stopping["STATUS"].startswith("stopping")


async def test_sigterm_in_the_middle_of_a_stream_loses_no_decision(
    tmp_path: Path, broker: LocalBroker, reader: tuple[R2000Simulator, PtyEndpoint]
) -> None:
    simulator, endpoint = reader
    topics = Topics("edgegate/v1", SITE, "SYS-TERM")
    key = write_bundle(tmp_path / "snapshot.bundle")
    config = tmp_path / "edgegate.toml"
    write_config(config, tmp_path / "state", broker, endpoint.path, key, gate=topics.gate_id)
    import_whitelist(tmp_path / "snapshot.bundle", config)
    pallets = [[f"E2003412{p:08X}{n:08X}" for n in range(2)] for p in range(6)]
    process = await start_daemon(config)
    try:
        async with aiomqtt.Client(broker.host, broker.port) as sub:
            await sub.subscribe(f"{topics.gate}/#", qos=1)
            await status(sub.messages, "online", topics)
            for pallet in pallets[:-1]:
                await read_tags(simulator, pallet)
                simulator.clear()
                # Longer than stable_set_ms: each pallet is a passage of its own, decided
                # and published while the next one is being read.
                await asyncio.sleep(0.6)
            await read_tags(simulator, pallets[-1])
            process.send_signal(signal.SIGTERM)  # the last pallet is still in the field
            decisions = await decisions_until_stopped(sub.messages, topics)
            async with asyncio.timeout(WAIT_S):
                assert await process.wait() == 0
    finally:
        await reap(process)
    assert [d["seq"] for d in decisions] == list(range(1, len(pallets) + 1))
    tags = [sorted(tag["epc"] for tag in d["tags"]) for d in decisions]  # type: ignore[attr-defined]
    assert tags == pallets
    assert outbox_depth(tmp_path / "state") == 0


async def test_sighup_moves_a_reader_without_losing_the_outbox(
    tmp_path: Path,
    reader: tuple[R2000Simulator, PtyEndpoint],
    second_reader: tuple[R2000Simulator, PtyEndpoint],
    notify: NotifySocket,
) -> None:
    (old, old_port), (new, new_port) = reader, second_reader
    topics = Topics("edgegate/v1", SITE, "SYS-HUP")
    key = write_bundle(tmp_path / "snapshot.bundle")
    config = tmp_path / "edgegate.toml"
    state = tmp_path / "state"
    back_office = {"identifier": "back-office-hup", "clean_session": False}
    with LocalBroker(persistence=True) as broker:
        write_config(config, state, broker, old_port.path, key, gate=topics.gate_id)
        import_whitelist(tmp_path / "snapshot.bundle", config)
        process = await start_daemon(config, env={"NOTIFY_SOCKET": str(notify.path)})
        try:
            await notify.expect("READY")
            async with aiomqtt.Client(broker.host, broker.port, **back_office) as sub:
                await sub.subscribe(f"{topics.gate}/#", qos=1)
                await status(sub.messages, "online", topics)
            broker.stop()
            await pass_pallet(old, [KNOWN[0]])
            first = await log_event(process, "passage.decided")

            # The reader moves to another port, and the operator adds a trusted key.
            write_config(
                config,
                state,
                broker,
                new_port.path,
                key,
                gate=topics.gate_id,
                trusted_keys=(NEW_KEY,),
            )
            process.send_signal(signal.SIGHUP)
            reloading = await notify.expect("RELOADING")
            reloaded = await log_event(process, "config.reloaded")
            await notify.expect("READY")
            await pass_pallet(new, [KNOWN[1]])
            second = await log_event(process, "passage.decided")
            # The old port is closed: it is asked nothing while the new one keeps working.
            asked = old.rounds
            served = new.rounds
            await until(lambda: new.rounds >= served + 3)
            assert old.rounds == asked

            broker.start()
            async with aiomqtt.Client(broker.host, broker.port, **back_office) as sub:
                delivered = [await next_json(sub.messages, topics.decision) for _ in range(2)]
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(WAIT_S):
                assert await process.wait() == 0
        finally:
            await reap(process)
    assert str(config) in reloading["STATUS"]
    assert reloaded["readers_started"] == ["rfid-1"]
    assert reloaded["readers_stopped"] == ["rfid-1"]
    assert (first["seq"], second["seq"]) == (1, 2)
    assert [d["seq"] for d in delivered] == [1, 2]
    assert [[t["epc"] for t in d["tags"]] for d in delivered] == [[KNOWN[0]], [KNOWN[1]]]  # type: ignore[attr-defined]


async def test_sighup_with_a_broken_config_keeps_the_old_one(
    broker: LocalBroker,
    reader: tuple[R2000Simulator, PtyEndpoint],
    gate_config: Path,
    notify: NotifySocket,
) -> None:
    simulator, _ = reader
    topics = Topics("edgegate/v1", SITE, "SYS01")
    process = await start_daemon(gate_config, env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        await notify.expect("READY")
        await asyncio.to_thread(gate_config.write_text, "[gate\nsite = ", encoding="utf-8")
        process.send_signal(signal.SIGHUP)
        failed = await log_event(process, "config.reload_failed")
        await notify.expect("READY")
        async with aiomqtt.Client(broker.host, broker.port) as sub:
            await sub.subscribe(topics.decision, qos=1)
            await pass_pallet(simulator, KNOWN)
            decided = await next_json(sub.messages, topics.decision)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT_S):
            assert await process.wait() == 0
    finally:
        await reap(process)
    assert "TOML syntax error" in str(failed["error"])
    assert failed["level"] == "error"
    assert decided["decision"] == "pass"


async def test_a_reload_hook_receives_the_new_trusted_keys(
    tmp_path: Path, broker: LocalBroker, reader: tuple[R2000Simulator, PtyEndpoint]
) -> None:
    key = write_bundle(tmp_path / "snapshot.bundle")
    path = tmp_path / "edgegate.toml"
    write_config(path, tmp_path / "state", broker, reader[1].path, key, gate="SYS-HOOK")
    daemon = Daemon(load_config(path), config_path=path)
    received: list[Config] = []

    async def hook(config: Config) -> None:
        received.append(config)

    daemon.on_reload(hook)
    running = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(WAIT_S):
            await daemon.ready.wait()
        write_config(
            path,
            tmp_path / "state",
            broker,
            reader[1].path,
            key,
            gate="SYS-HOOK",
            trusted_keys=(NEW_KEY,),
        )
        daemon.request_reload()
        await until(lambda: bool(received))
    finally:
        daemon.request_stop()
        async with asyncio.timeout(WAIT_S):
            await running
    assert received[0].whitelist.trusted_keys == (key, NEW_KEY)


async def test_a_reader_removed_by_a_reload_no_longer_holds_passages(
    tmp_path: Path, broker: LocalBroker, reader: tuple[R2000Simulator, PtyEndpoint]
) -> None:
    simulator, endpoint = reader
    topics = Topics("edgegate/v1", SITE, "SYS-GONE")
    key = write_bundle(tmp_path / "snapshot.bundle")
    path = tmp_path / "edgegate.toml"
    state = tmp_path / "state"
    unplugged = str(tmp_path / "ttyUSB-unplugged")
    write_config(
        path, state, broker, endpoint.path, key, gate=topics.gate_id, more_readers=(unplugged,)
    )
    import_whitelist(tmp_path / "snapshot.bundle", path)
    daemon = Daemon(load_config(path), config_path=path)
    reloaded: list[Config] = []

    async def hook(config: Config) -> None:
        reloaded.append(config)

    daemon.on_reload(hook)
    running = asyncio.create_task(daemon.run())
    try:
        async with aiomqtt.Client(broker.host, broker.port) as sub:
            await sub.subscribe(topics.decision, qos=1)
            async with asyncio.timeout(WAIT_S):
                await daemon.ready.wait()
            await pass_pallet(simulator, [KNOWN[0]])
            while_down = await next_json(sub.messages, topics.decision)
            write_config(path, state, broker, endpoint.path, key, gate=topics.gate_id)
            daemon.request_reload()
            await until(lambda: bool(reloaded))
            await asyncio.sleep(1.0)  # the pallet departs (depart_ms) before the next one
            await pass_pallet(simulator, [KNOWN[1]])
            after = await next_json(sub.messages, topics.decision)
    finally:
        daemon.request_stop()
        async with asyncio.timeout(WAIT_S):
            await running
    assert while_down["decision"] == "hold"
    assert [r["code"] for r in while_down["reasons"]] == ["READER_FAULT"]  # type: ignore[attr-defined]
    assert [r.name for r in reloaded[0].readers] == ["rfid-1"]
    assert after["decision"] == "pass"
    assert after["reasons"] == []


def applier_children(pid: int) -> list[int]:
    """The daemon's whitelist apply processes (python -m edgegate.whitelist.applier)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"edgegate.whitelist.applier" in cmdline:
                found.append(int(child))
    return found


async def test_a_delta_over_mqtt_is_applied_in_the_apply_process_and_decides_the_next_passage(
    tmp_path: Path, broker: LocalBroker, reader: tuple[R2000Simulator, PtyEndpoint]
) -> None:
    simulator, endpoint = reader
    topics = Topics("edgegate/v1", SITE, "SYS-DELTA")
    key = write_bundle(tmp_path / "snapshot.bundle")  # seq 3: KNOWN, not STRANGER
    office_private, office_public = generate_keypair()
    config = tmp_path / "edgegate.toml"
    write_config(
        config,
        tmp_path / "state",
        broker,
        endpoint.path,
        key,
        gate=topics.gate_id,
        trusted_keys=(office_public,),
    )
    import_whitelist(tmp_path / "snapshot.bundle", config)
    header = {
        "format": "edgegate.whitelist",
        "version": 1,
        "kind": "delta",
        "site": SITE,
        "seq": 4,
        "base_seq": 3,
        "issued_at": "2026-11-25T08:00:00Z",
        "issuer": "system test",
        "count": 1,
    }
    upsert = {
        "op": "upsert",
        "type": "item",
        "epc": STRANGER,
        "sku": "SKU-LANCOME-50ML",
        "owner": "91460000MA5T000001",
        "status": "bonded",
        "directions": ["in", "out"],
        "destinations": [],
    }
    body = "\n".join(json.dumps(line) for line in (header, upsert)).encode()
    delta = sign_body(body, load_private_key(office_private))

    process = await start_daemon(config)
    try:
        async with aiomqtt.Client(broker.host, broker.port) as office:
            await office.subscribe(f"{topics.gate}/#", qos=1)
            await status(office.messages, "online", topics)
            await office.publish(topics.whitelist, delta, qos=1)
            applied = await log_event(process, "whitelist.applied")
            children = applier_children(process.pid)

            await pass_pallet(simulator, [STRANGER])
            decision = await next_json(office.messages, topics.decision)

            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(WAIT_S):
                assert await process.wait() == 0
    finally:
        await reap(process)

    assert (applied["seq"], applied["previous_seq"]) == (4, 3)
    assert len(children) == 1
    assert decision["decision"] == "pass"
    with pytest.raises(ProcessLookupError):
        os.kill(children[0], 0)  # stopped with the daemon
