"""``edgegate watch``: the view as pure logic (payloads -> screen text), then against a broker."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path

import aiomqtt
from rich.console import Console

from edgegate.localbroker import LocalBroker
from edgegate.mqtt.topics import Topics
from edgegate.watch import DECISIONS_SHOWN, BrokerAccess, GateView, render, watch

NOW_S = 1_795_000_000.0
WAIT_S = 20.0

PASSED = {
    "schema": "edgegate.decision/1",
    "seq": 41,
    "decision": "pass",
    "direction": "in",
    "passage_id": "018f0000-aaaa-7000-8000-000000000041",
    "decided_at": "2026-11-25T08:00:01.250Z",
    "reasons": [],
    "tags": [
        {
            "epc": "3074257BF7194E4000001A85",
            "sku": "SKU-LANCOME-50ML",
            "status": "bonded",
            "reads": 14,
            "rssi_max": -52.0,
            "antennas": [1, 2],
        }
    ],
}
HELD = {
    "seq": 42,
    "decision": "hold",
    "direction": "out",
    "passage_id": "018f0000-aaaa-7000-8000-000000000042",
    "decided_at": "2026-11-25T08:00:09.000Z",
    "reasons": [
        {"code": "UNKNOWN_TAG", "epcs": ["E2003412DEADBEEF00000001"]},
        {"code": "MANIFEST_MISMATCH", "detail": "SKU-A read 119, declared 120"},
    ],
    "tags": [
        {"epc": "E2003412DEADBEEF00000001", "sku": None, "status": None, "reads": 3},
    ],
}
HEALTH = {
    "schema": "edgegate.health/1",
    "uptime_s": 7260.0,
    "readers": [
        {"name": "rfid-1", "connected": True, "frames": 1200, "errors": 0},
        {"name": "io-1", "connected": False, "frames": 3, "errors": 2, "last_seen": None},
    ],
    "outbox": {"depth": 3, "oldest_age_s": 125.0, "awaiting_ack": 0, "dropped": 0},
    "whitelist": {"seq": 42, "age_s": 90000.0, "stale": True},
    "passages": {"decided": 12, "pass": 10, "hold": 2},
}


def text(view: GateView, now_s: float = NOW_S) -> str:
    console = Console(file=io.StringIO(), width=140, color_system=None)
    console.print(render(view, now_s))
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


def fold(*messages: tuple[str, object]) -> GateView:
    view = GateView("HAK-CBZ/G01", "127.0.0.1:1883")
    for subtopic, payload in messages:
        view.apply(subtopic, json.dumps(payload).encode(), NOW_S - 4)
    return view


def test_an_empty_view_says_what_has_not_arrived_yet() -> None:
    screen = text(GateView("HAK-CBZ/G01", "127.0.0.1:1883"))
    assert "HAK-CBZ/G01" in screen
    assert "no status yet" in screen
    assert "no decision yet" in screen
    assert "no health report yet" in screen
    assert "connecting" in screen


def test_the_latest_passage_shows_its_verdict_reasons_and_tags() -> None:
    screen = text(fold(("decision", PASSED), ("decision", HELD)))
    latest = screen.split("last decisions")[0]
    assert "HOLD" in latest
    assert "seq 42" in latest
    assert "direction out" in latest
    assert "UNKNOWN_TAG" in latest
    assert "E2003412DEADBEEF00000001" in latest
    assert "MANIFEST_MISMATCH  SKU-A read 119, declared 120" in latest
    assert "unknown" in latest  # the stranger tag has no SKU
    assert "PASS" not in latest


def test_last_decisions_are_listed_newest_first_with_their_reason_codes() -> None:
    screen = text(fold(("decision", PASSED), ("decision", HELD)))
    table = screen.split("last decisions")[1]
    rows = [line for line in table.splitlines() if "PASS" in line or "HOLD" in line]
    assert "HOLD" in rows[0]
    assert "UNKNOWN_TAG, MANIFEST_MISMATCH" in rows[0]
    assert "PASS" in rows[1]


def test_only_the_newest_decisions_are_kept() -> None:
    view = fold(*(("decision", {**PASSED, "seq": n}) for n in range(1, 25)))
    assert [d["seq"] for d in view.decisions] == list(range(24, 24 - DECISIONS_SHOWN, -1))


def test_status_and_health_render_readers_outbox_and_a_stale_whitelist() -> None:
    status = {"state": "online", "version": "0.1.0", "since": "x", "whitelist_seq": 42}
    screen = text(fold(("status", status), ("health", HEALTH)))
    assert "● online" in screen
    assert "v0.1.0" in screen
    assert "whitelist seq 42" in screen
    rfid = next(line for line in screen.splitlines() if "rfid-1" in line)
    io_line = next(line for line in screen.splitlines() if "io-1" in line)
    assert "● up" in rfid
    assert "1200" in rfid
    assert "● down" in io_line
    assert "outbox 3 (oldest 2 min)" in screen
    assert "age 25.0 h STALE" in screen
    assert "passages 12 (10 pass, 2 hold)" in screen
    assert "up 2.0 h" in screen
    assert "reported 4 s ago" in screen


def test_health_without_the_fields_this_view_knows_still_renders() -> None:
    screen = text(fold(("health", {"schema": "edgegate.health/9", "readers": "many"})))
    assert "reported 4 s ago" in screen
    screen = text(fold(("health", {"outbox": {"depth": "deep"}, "whitelist": {}})))
    assert "outbox ?" in screen
    assert "no whitelist" in screen


def test_garbage_is_counted_and_skipped_and_other_topics_are_ignored() -> None:
    view = GateView("HAK-CBZ/G01", "127.0.0.1:1883")
    view.apply("decision", b"\xff\xfe not json", NOW_S)
    view.apply("decision", b"[1, 2]", NOW_S)
    view.apply("health", b'"ok"', NOW_S)
    view.apply("cmd/reply", b'{"ok": true}', NOW_S)
    view.apply("decision", json.dumps({"decision": 7, "reasons": [None, {"code": 5}]}).encode(), 0)
    assert (view.messages, view.unreadable) == (5, 3)
    screen = text(view)
    assert "3 unreadable" in screen
    assert "?" in screen  # the mistyped decision is shown as far as it is understood


def test_alarms_are_listed_with_their_severity() -> None:
    alarm = {
        "event_id": "e1",
        "kind": "reader_down",
        "severity": "critical",
        "detail": "rfid-1: no reply to command 89 within 2.0 s",
        "at": "2026-11-25T08:00:00.000Z",
    }
    screen = text(fold(("alarm", alarm)))
    line = next(line for line in screen.splitlines() if "reader_down" in line)
    assert "critical" in line
    assert "no reply to command 89" in line


async def test_watch_shows_a_decision_published_on_the_broker(broker: LocalBroker) -> None:
    topics = Topics("edgegate/v1", "HAK-CBZ", "WATCH01")
    out = io.StringIO()
    view = GateView("HAK-CBZ/WATCH01", f"{broker.host}:{broker.port}")
    subscribed = asyncio.Event()
    task = asyncio.create_task(
        watch(
            BrokerAccess(broker.host, broker.port),
            topics,
            Console(file=out, width=140, color_system=None),
            view=view,
            subscribed=subscribed,
        )
    )
    try:
        async with asyncio.timeout(WAIT_S):
            await subscribed.wait()
        async with aiomqtt.Client(broker.host, broker.port) as publisher:
            await publisher.publish(topics.decision, json.dumps(HELD), qos=1)
        async with asyncio.timeout(WAIT_S):
            while not view.decisions:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert view.connection == "connected"
    assert view.decisions[0]["seq"] == 42
    screen = out.getvalue()  # the final screen, printed when the watch ends
    assert "HOLD" in screen
    assert "UNKNOWN_TAG" in screen


def test_the_watch_command_prints_the_gate_it_saw_and_exits_cleanly(
    broker: LocalBroker, tmp_path: Path
) -> None:
    topics = Topics("edgegate/v1", "HAK-CBZ", "WATCH02")
    config = tmp_path / "edgegate.toml"
    config.write_text(
        f'[gate]\nsite = "HAK-CBZ"\ngate_id = "WATCH02"\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        '[[readers]]\nname = "rfid-1"\nkind = "r2000"\nurl = "/dev/null"\n'
    )
    status = {"state": "online", "version": "0.1.0", "since": "2026-11-25T08:00:00.000Z"}
    asyncio.run(_publish_retained(broker, topics.status, status))
    result = subprocess.run(
        [sys.executable, "-m", "edgegate", "watch", "--config", str(config), "--duration", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "HAK-CBZ/WATCH02" in result.stdout
    assert "● online" in result.stdout


async def _publish_retained(broker: LocalBroker, topic: str, payload: object) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topic, json.dumps(payload), qos=1, retain=True)
