"""The publisher against a real broker (mosquitto on a free port, see conftest)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from edgegate.localbroker import LocalBroker
from edgegate.mqtt.outbox import AsyncOutbox
from edgegate.mqtt.publisher import Publisher, PublisherSettings, Subscription
from edgegate.mqtt.topics import Topics


@pytest.fixture
def topics(request: pytest.FixtureRequest) -> Topics:
    # The session broker is shared: each test gets a gate of its own so that a status
    # retained by one test is never mistaken for another's.
    return Topics("edgegate/v1", "HAK-CBZ", request.node.name[-60:])


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[AsyncOutbox]:
    box = await AsyncOutbox.open(tmp_path / "outbox.db")
    yield box
    await box.close()


def publisher(broker: LocalBroker, outbox: AsyncOutbox, topics: Topics) -> Publisher:
    settings = PublisherSettings(
        host=broker.host,
        port=broker.port,
        client_id=topics.gate_id,
        backoff_base_s=0.05,
        backoff_cap_s=0.3,
    )
    return Publisher(settings, topics, outbox, version="test", whitelist_seq=lambda: 7)


async def append(outbox: AsyncOutbox, topics: Topics, n: int) -> None:
    await outbox.append(
        topics.decision, f"e{n}", lambda seq: json.dumps({"n": n}).encode(), counter="decision"
    )


async def collect(client: aiomqtt.Client, count: int, timeout_s: float = 20) -> list[bytes]:
    received: list[bytes] = []
    async with asyncio.timeout(timeout_s):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            received.append(message.payload)
            if len(received) == count:
                return received
    raise AssertionError("unreachable")


async def wait_until_empty(outbox: AsyncOutbox, timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while (await outbox.stats()).depth:
            await asyncio.sleep(0.02)


async def test_outbox_rows_reach_the_broker_in_order_and_are_retired(
    broker: LocalBroker, outbox: AsyncOutbox, topics: Topics
) -> None:
    for n in range(5):
        await append(outbox, topics, n)
    async with aiomqtt.Client(broker.host, broker.port) as sub:
        await sub.subscribe(topics.decision, qos=1)
        pub = publisher(broker, outbox, topics)
        async with asyncio.TaskGroup() as group:
            task = group.create_task(pub.run())
            payloads = await collect(sub, 5)
            await wait_until_empty(outbox)
            pub.shutdown()
        assert task.done()
    assert sorted(json.loads(p)["n"] for p in payloads) == [0, 1, 2, 3, 4]


async def test_status_is_retained_online_then_stopped_on_clean_shutdown(
    broker: LocalBroker, outbox: AsyncOutbox, topics: Topics
) -> None:
    pub = publisher(broker, outbox, topics)
    async with asyncio.TaskGroup() as group:
        group.create_task(pub.run())
        async with aiomqtt.Client(broker.host, broker.port) as sub:
            await sub.subscribe(topics.status, qos=1)
            states = []
            async with asyncio.timeout(10):
                async for message in sub.messages:
                    assert isinstance(message.payload, bytes)
                    status = json.loads(message.payload)
                    states.append(status["state"])
                    if status["state"] == "online":
                        assert status["whitelist_seq"] == 7
                        assert status["version"] == "test"
                        pub.shutdown()
                    if status["state"] == "stopped":
                        break
    assert states[-2:] == ["online", "stopped"]
    async with aiomqtt.Client(broker.host, broker.port) as late:
        await late.subscribe(topics.status, qos=1)
        [retained] = await collect(late, 1)
    assert json.loads(retained)["state"] == "stopped"


async def test_events_committed_while_the_broker_is_dead_arrive_after_it_restarts(
    fresh_broker: LocalBroker, outbox: AsyncOutbox, topics: Topics
) -> None:
    pub = publisher(fresh_broker, outbox, topics)
    async with asyncio.TaskGroup() as group:
        group.create_task(pub.run())
        await append(outbox, topics, 0)
        await wait_until_empty(outbox)
        fresh_broker.kill()
        for n in range(1, 4):
            await append(outbox, topics, n)
        assert (await outbox.stats()).depth == 3
        fresh_broker.start()
        async with aiomqtt.Client(fresh_broker.host, fresh_broker.port) as sub:
            # The broker has no persistence: subscribe before the backlog can be replayed.
            await sub.subscribe(topics.decision, qos=1)
            await wait_until_empty(outbox)
        pub.shutdown()
    assert pub.connects >= 2
    assert pub.published == 4


async def test_inbound_messages_reach_their_handler_and_a_failing_handler_is_contained(
    broker: LocalBroker, outbox: AsyncOutbox, topics: Topics
) -> None:
    received: list[tuple[str, bytes]] = []

    async def on_cmd(topic: str, payload: bytes) -> None:
        if payload == b"boom":
            raise ValueError("malformed command")
        received.append((topic, payload))

    settings = PublisherSettings(host=broker.host, port=broker.port, client_id=topics.gate_id)
    pub = Publisher(
        settings,
        topics,
        outbox,
        version="test",
        whitelist_seq=lambda: None,
        subscriptions=[Subscription(topics.cmd, on_cmd)],
    )
    async with asyncio.TaskGroup() as group:
        group.create_task(pub.run())
        async with aiomqtt.Client(broker.host, broker.port) as sender:
            await sender.subscribe(topics.status, qos=1)
            async with asyncio.timeout(10):
                async for message in sender.messages:
                    if json.loads(message.payload)["state"] == "online":  # type: ignore[arg-type]
                        break
            for payload in (b"boom", b"ping-1", b"ping-2"):
                await sender.publish(topics.cmd, payload, qos=1)
            async with asyncio.timeout(10):
                while len(received) < 2:
                    await asyncio.sleep(0.02)
        assert await pub.publish_now(topics.health, b"{}", qos=0, retain=True)
        pub.shutdown()
    assert received == [(topics.cmd, b"ping-1"), (topics.cmd, b"ping-2")]
    assert pub.handler_errors == 1
    assert pub.connects == 1
