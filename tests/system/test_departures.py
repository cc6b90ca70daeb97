"""The departure history through the daemon's decision path (CLONED_TAG, DESIGN.md §8).

The daemon runs in this process against a real whitelist file and a real broker; passages
are handed to it as closed (as the tracker would) and the decisions read back over MQTT.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

from edgegate.app import Daemon
from edgegate.config import parse_config
from edgegate.gate.model import ClosedPassage, Direction, TagSummary
from edgegate.localbroker import LocalBroker
from edgegate.mqtt.topics import Topics

from .support import KNOWN, SITE, WAIT_S, install_snapshot, next_json

TOPICS = Topics("edgegate/v1", SITE, "SYS-DEPART")


def released_goods(state_dir: Path) -> str:
    """A whitelist of the KNOWN items, released (free to leave); returns its trusted key."""
    records = [{"type": "item", "epc": e, "sku": "SKU-1", "status": "released"} for e in KNOWN]
    return install_snapshot(state_dir, records, issued_at=datetime.now(UTC))


def crossing(n: int, direction: Direction, epcs: list[str]) -> ClosedPassage:
    now = time.monotonic()
    return ClosedPassage(
        passage_id=f"crossing-{n}",
        opened_at_mono_s=now - 1,
        closed_at_mono_s=now,
        close_cause="beams_clear",
        direction=direction,
        tags=tuple(TagSummary(epc, 3, -55.0, (1,), now - 1, now) for epc in epcs),
    )


async def test_goods_may_leave_again_after_coming_back_but_never_twice_in_a_row(
    tmp_path: Path, broker: LocalBroker
) -> None:
    state_dir = tmp_path / "state"
    key = released_goods(state_dir)
    config = parse_config(
        {
            "gate": {"site": SITE, "gate_id": TOPICS.gate_id, "mode": "portal"},
            "mqtt": {"host": broker.host, "port": broker.port},
            "storage": {"state_dir": str(state_dir)},
            "whitelist": {"trusted_keys": [key]},
            "inspection": {"enabled": False},
            "readers": [],
        },
        environ={},
    )
    daemon = Daemon(config)
    first, second = KNOWN
    crossings = [
        (Direction.OUT, [first, second]),  # both leave
        (Direction.OUT, [first]),  # a second tag with the same EPC: a clone
        (Direction.IN, [first]),  # the goods come back
        (Direction.OUT, [first]),  # and may leave again
        (Direction.OUT, [second]),  # the other one never came back
    ]
    outcomes = []
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(TOPICS.decision, qos=1)
        running = asyncio.create_task(daemon.run())
        try:
            async with asyncio.timeout(WAIT_S):
                await daemon.ready.wait()
            for n, (direction, epcs) in enumerate(crossings):
                await daemon.decide_and_act(crossing(n, direction, epcs))
                decision = await next_json(client.messages, TOPICS.decision)
                reasons = decision["reasons"]
                assert isinstance(reasons, list)
                outcomes.append((decision["decision"], [r["code"] for r in reasons]))
        finally:
            daemon.request_stop()
            async with asyncio.timeout(WAIT_S):
                await running

    assert outcomes == [
        ("pass", []),
        ("hold", ["CLONED_TAG"]),
        ("pass", []),
        ("pass", []),
        ("hold", ["CLONED_TAG"]),
    ]
