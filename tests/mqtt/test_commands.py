"""Commands on G/cmd: authorisation, replies, audit and their effect on the gate.

The handler is exercised with the real outbox (SQLite) and the real gate control and
driver; the end-to-end path through the broker is in tests/system.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgegate.control import GateControl
from edgegate.devices.actions import GateDriver
from edgegate.gate.actions import ActionSettings
from edgegate.gate.model import GateOutputs, Verdict
from edgegate.mqtt.commands import Authority, Commands, canonical_bytes
from edgegate.mqtt.outbox import AsyncOutbox
from edgegate.mqtt.payloads import instant
from edgegate.mqtt.topics import Topics

TOPICS = Topics("edgegate/v1", "HAK-CBZ", "G01")
OFFICER = Ed25519PrivateKey.generate()
OFFICER_PUB = base64.b64encode(
    OFFICER.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
).decode()


class Coils:
    def __init__(self) -> None:
        self.applied: list[GateOutputs] = []

    async def apply(self, outputs: GateOutputs) -> None:
        self.applied.append(outputs)


class Rig:
    def __init__(self, outbox: AsyncOutbox) -> None:
        self.coils = Coils()
        self.driver = GateDriver(self.coils)
        self.control = GateControl(self.driver, ActionSettings(barrier_mode=True))
        self.outbox = outbox
        self.commands = Commands(
            Authority({"officer-07": OFFICER_PUB}, time.time),
            self.control,
            outbox,
            TOPICS,
            time.time,
        )

    async def send(self, command: dict[str, object]) -> None:
        await self.commands.on_message(TOPICS.cmd, json.dumps(command).encode())

    async def published(self, topic: str) -> list[dict[str, object]]:
        """What was stored for ``topic``; a reply's ``event_id`` is checked to be its row's
        (the id a back office acknowledges) and then left out of the comparison."""
        bodies = []
        for row in await self.outbox.pending(1000):
            if row.topic == topic:
                body = json.loads(row.payload)
                if topic == TOPICS.cmd_reply:
                    assert body.pop("event_id") == row.event_id
                bodies.append(body)
        return bodies


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    outbox = await AsyncOutbox.open(tmp_path / "outbox.db")
    yield Rig(outbox)
    await outbox.close()


def signed(
    name: str,
    args: dict[str, object],
    command_id: str = "c-1",
    issued_at: float | None = None,
    key: Ed25519PrivateKey = OFFICER,
) -> dict[str, object]:
    command: dict[str, object] = {
        "command_id": command_id,
        "name": name,
        "args": args,
        "operator": "officer-07",
        "issued_at": instant(time.time() if issued_at is None else issued_at),
    }
    command["sig"] = base64.b64encode(key.sign(canonical_bytes(command))).decode()
    return command


async def test_a_signed_release_of_a_held_passage_opens_the_barrier_and_is_audited(
    rig: Rig,
) -> None:
    rig.control.decided("p-1", Verdict.HOLD, None)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(rig.driver.run())
        await rig.send(signed("release", {"passage_id": "p-1"}))
        async with asyncio.timeout(5):
            while not rig.coils.applied:
                await asyncio.sleep(0.01)
        task.cancel()
    assert rig.coils.applied[0] == GateOutputs(barrier_open=True, green=True)
    [reply] = await rig.published(TOPICS.cmd_reply)
    assert reply == {
        "command_id": "c-1",
        "ok": True,
        "result": {"passage_id": "p-1", "released": True, "gate_opened": True},
    }
    [audit] = await rig.published(TOPICS.audit)
    assert (audit["name"], audit["operator"], audit["args"]) == (
        "release",
        "officer-07",
        {"passage_id": "p-1"},
    )


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda c: c.pop("sig"), "release must be signed by an operator"),
        (lambda c: c.update(operator="officer-99"), "unknown operator 'officer-99'"),
        (lambda c: c.update(args={"passage_id": "p-2"}), "bad signature"),
        (lambda c: c.update(sig="AAAA"), "bad signature"),
        (lambda c: c.update(sig="not base64!"), "bad signature"),
    ],
    ids=["unsigned", "unknown operator", "tampered args", "wrong signature", "garbage sig"],
)
async def test_a_release_that_is_not_properly_signed_is_rejected_with_a_reason(
    rig: Rig, mutate: object, error: str
) -> None:
    rig.control.decided("p-1", Verdict.HOLD, None)
    command = signed("release", {"passage_id": "p-1"})
    mutate(command)  # type: ignore[operator]
    await rig.send(command)
    assert await rig.published(TOPICS.cmd_reply) == [
        {"command_id": "c-1", "ok": False, "error": error}
    ]
    assert await rig.published(TOPICS.audit) == []
    assert rig.commands.rejected == 1


async def test_a_command_signed_by_another_key_is_rejected(rig: Rig) -> None:
    rig.control.decided("p-1", Verdict.HOLD, None)
    await rig.send(signed("release", {"passage_id": "p-1"}, key=Ed25519PrivateKey.generate()))
    [reply] = await rig.published(TOPICS.cmd_reply)
    assert reply["error"] == "bad signature"


async def test_a_replayed_or_stale_command_is_rejected(rig: Rig) -> None:
    rig.control.decided("p-1", Verdict.HOLD, None)
    rig.control.decided("p-2", Verdict.HOLD, None)
    command = signed("release", {"passage_id": "p-1"})
    await rig.send(command)
    await rig.send(command)
    await rig.send(
        signed("release", {"passage_id": "p-2"}, command_id="c-2", issued_at=time.time() - 3600)
    )
    replies = await rig.published(TOPICS.cmd_reply)
    assert [r["ok"] for r in replies] == [True, False, False]
    assert replies[1]["error"] == "duplicate command_id"
    assert "away from the gate's clock" in str(replies[2]["error"])


async def test_only_a_held_passage_can_be_released_and_only_once(rig: Rig) -> None:
    rig.control.decided("p-ok", Verdict.PASS, None)
    rig.control.decided("p-held", Verdict.HOLD, None)
    await rig.send(signed("release", {"passage_id": "p-ok"}, command_id="c-1"))
    await rig.send(signed("release", {"passage_id": "p-nope"}, command_id="c-2"))
    await rig.send(signed("release", {"passage_id": "p-held"}, command_id="c-3"))
    await rig.send(signed("release", {"passage_id": "p-held"}, command_id="c-4"))
    errors = [r.get("error") for r in await rig.published(TOPICS.cmd_reply)]
    assert errors == [
        "passage p-ok is not held",
        "passage p-nope is not known to this gate",
        None,
        "passage p-held was already released by officer-07",
    ]


async def test_a_release_after_the_vehicle_left_records_but_does_not_open(rig: Rig) -> None:
    rig.control.decided("p-1", Verdict.HOLD, None)
    rig.control.ended("p-1")
    await rig.send(signed("release", {"passage_id": "p-1"}))
    [reply] = await rig.published(TOPICS.cmd_reply)
    assert reply["result"] == {"passage_id": "p-1", "released": True, "gate_opened": False}


async def test_a_customs_disposition_is_waited_for_by_pass_number(rig: Rig) -> None:
    async with asyncio.TaskGroup() as group:
        waiting = group.create_task(
            rig.control.wait_disposition("p-9", "HP4601202611250001", timeout_s=10)
        )
        await asyncio.sleep(0)
        await rig.send(
            signed("customs", {"pass_no": "HP4601202611250001", "disposition": "reject"})
        )
    assert waiting.result() == "reject"
    assert await rig.control.wait_disposition("p-10", None, timeout_s=0.01) is None


@pytest.mark.parametrize(
    ("payload", "reply"),
    [
        (b"\xff\xfe not json", None),
        (b"[1, 2]", None),
        (b'{"name": "ping"}', None),
        (b'{"command_id": "c-1", "name": "reboot"}', "name: Input should be"),
        (b'{"command_id": "c-1", "name": "ping", "extra": 1}', "extra: Extra inputs"),
        (
            b'{"command_id": "c-1", "name": "customs", "args": {"disposition": "x"}}',
            "customs must be signed",
        ),
    ],
)
async def test_malformed_commands_are_counted_and_answered_when_identifiable(
    rig: Rig, payload: bytes, reply: str | None
) -> None:
    await rig.commands.on_message(TOPICS.cmd, payload)
    replies = await rig.published(TOPICS.cmd_reply)
    assert rig.commands.rejected == 1
    if reply is None:
        assert replies == []
    else:
        [answer] = replies
        assert answer["ok"] is False
        assert str(answer["error"]).startswith(reply)


async def test_ping_needs_no_signature_and_is_audited_too(rig: Rig) -> None:
    await rig.send({"command_id": "c-1", "name": "ping"})
    [reply] = await rig.published(TOPICS.cmd_reply)
    [audit] = await rig.published(TOPICS.audit)
    assert (audit["name"], audit["command_id"], audit["operator"]) == ("ping", "c-1", None)
    assert reply["ok"] is True
    assert str(reply["result"]["pong"]).endswith("Z")  # type: ignore[index]
