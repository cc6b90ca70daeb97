"""The publisher against a real broker (mosquitto on a free port, see conftest)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiomqtt
import pytest

from edgegate.localbroker import LocalBroker
from edgegate.mqtt.outbox import AsyncOutbox
from edgegate.mqtt.publisher import Publisher, PublisherSettings, Subscription, TokenBucket
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


def app_publisher(
    broker: LocalBroker, outbox: AsyncOutbox, topics: Topics, ack_timeout_s: float
) -> Publisher:
    settings = PublisherSettings(
        host=broker.host,
        port=broker.port,
        client_id=topics.gate_id,
        backoff_base_s=0.05,
        backoff_cap_s=0.3,
        ack="app",
        ack_timeout_s=ack_timeout_s,
    )
    return Publisher(settings, topics, outbox, version="test", whitelist_seq=lambda: None)


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while not await condition():
            await asyncio.sleep(0.02)


async def test_no_more_than_a_window_of_rows_is_in_flight_while_the_broker_stalls(
    fresh_broker: LocalBroker, outbox: AsyncOutbox, topics: Topics
) -> None:
    settings = PublisherSettings(
        host=fresh_broker.host, port=fresh_broker.port, client_id=topics.gate_id, window=4
    )
    pub = Publisher(settings, topics, outbox, version="test", whitelist_seq=lambda: None)
    async with asyncio.TaskGroup() as group:
        group.create_task(pub.run())
        await until(lambda: _true(pub.connected))
        fresh_broker.pause()
        for n in range(10):
            await append(outbox, topics, n)
        await until(lambda: _true(pub.in_flight == 4))
        # Give an unbounded drain every chance to start more.
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert pub.in_flight == 4
        assert (await outbox.stats()).depth == 10
        fresh_broker.resume()
        await wait_until_empty(outbox)
        pub.shutdown()
    assert pub.published == 10


async def test_with_app_acks_rows_stay_until_acked_and_the_unacked_come_again(
    broker: LocalBroker, outbox: AsyncOutbox, topics: Topics
) -> None:
    for n in range(3):
        await append(outbox, topics, n)
    pub = app_publisher(broker, outbox, topics, ack_timeout_s=0.5)
    async with aiomqtt.Client(broker.host, broker.port) as back_office:
        await back_office.subscribe(topics.decision, qos=1)
        async with asyncio.TaskGroup() as group:
            group.create_task(pub.run())
            first = await collect(back_office, 3)
            await until(lambda: _stat(outbox, awaiting_ack=3))
            assert (await outbox.stats()).depth == 3
            for bad in (b"not json", b'{"event_ids": []}', b'{"event_ids": "e0"}', b"[1]"):
                await back_office.publish(topics.ack, bad, qos=1)
            await back_office.publish(topics.ack, b'{"event_ids": ["e0", "e2"]}', qos=1)
            await until(lambda: _stat(outbox, depth=1))
            # e1 was never acknowledged: after ack_timeout_s it is published again.
            [again] = await collect(back_office, 1)
            await back_office.publish(topics.ack, b'{"event_ids": ["e1"], "by": "bo-1"}', qos=1)
            await wait_until_empty(outbox)
            pub.shutdown()
    assert sorted(json.loads(p)["n"] for p in first) == [0, 1, 2]
    assert json.loads(again)["n"] == 1
    assert pub.acks_rejected == 4
    assert pub.acked == 3
    assert pub.connects == 1


async def test_with_app_acks_a_reconnect_publishes_every_unacked_row_again(
    outbox: AsyncOutbox, topics: Topics
) -> None:
    # A back office with a persistent session on a broker that keeps sessions across a
    # restart: whatever the gate publishes after the restart is queued for it.
    back_office = {"identifier": f"bo-{topics.gate_id}", "clean_session": False}
    with LocalBroker(persistence=True) as broker:
        pub = app_publisher(broker, outbox, topics, ack_timeout_s=3600)
        async with asyncio.TaskGroup() as group:
            group.create_task(pub.run())
            async with aiomqtt.Client(broker.host, broker.port, **back_office) as sub:
                await sub.subscribe(topics.decision, qos=1)
                for n in range(2):
                    await append(outbox, topics, n)
                await collect(sub, 2)
                await until(lambda: _stat(outbox, awaiting_ack=2))
            broker.restart()
            async with aiomqtt.Client(broker.host, broker.port, **back_office) as sub:
                again = await collect(sub, 2)
            pub.shutdown()
    assert sorted(json.loads(p)["n"] for p in again) == [0, 1]
    assert pub.connects == 2
    assert (await outbox.stats()).depth == 2


async def test_status_and_subscriptions_are_renewed_on_every_connect(
    fresh_broker: LocalBroker, outbox: AsyncOutbox, topics: Topics
) -> None:
    received: list[bytes] = []

    async def on_cmd(topic: str, payload: bytes) -> None:
        received.append(payload)

    settings = PublisherSettings(
        host=fresh_broker.host,
        port=fresh_broker.port,
        client_id=topics.gate_id,
        backoff_base_s=0.05,
        backoff_cap_s=0.3,
    )
    pub = Publisher(
        settings,
        topics,
        outbox,
        version="test",
        whitelist_seq=lambda: 9,
        subscriptions=[Subscription(topics.cmd, on_cmd)],
    )
    async with asyncio.TaskGroup() as group:
        group.create_task(pub.run())
        await until(lambda: _true(pub.connects == 1))
        # No persistence: the restarted broker forgot the retained status and the session.
        fresh_broker.kill()
        fresh_broker.start()
        await until(lambda: _true(pub.connects == 2 and pub.connected))
        async with aiomqtt.Client(fresh_broker.host, fresh_broker.port) as late:
            await late.subscribe(topics.status, qos=1)
            [retained] = await collect(late, 1)
            await late.publish(topics.cmd, b"ping", qos=1)
            await until(lambda: _true(received == [b"ping"]))
        pub.shutdown()
    assert json.loads(retained)["state"] == "online"


async def test_the_replay_bucket_paces_takes_to_its_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(delay_s: float) -> None:
        slept.append(delay_s)
        now[0] += delay_s

    bucket = TokenBucket(10.0, burst=2, clock=lambda: now[0], sleep=sleep)
    for _ in range(12):
        await bucket.take()
    # Two from the burst, then one every 0.1 s: 10 more takes need 1 s of waiting.
    assert sum(slept) == pytest.approx(1.0)
    assert now[0] == pytest.approx(1.0)


async def test_an_unlimited_bucket_never_waits() -> None:
    async def sleep(delay_s: float) -> None:
        raise AssertionError("an unlimited bucket slept")

    bucket = TokenBucket(0.0, burst=1, clock=lambda: 0.0, sleep=sleep)
    for _ in range(1000):
        await bucket.take()


def test_the_password_never_shows_in_the_settings_repr() -> None:
    settings = PublisherSettings(host="h", port=1, client_id="c", password="s3cret-pw")
    assert "s3cret-pw" not in repr(settings)


async def _true(value: bool) -> bool:
    return value


async def _stat(outbox: AsyncOutbox, **expected: int) -> bool:
    stats = await outbox.stats()
    return all(getattr(stats, key) == value for key, value in expected.items())
