"""The publisher: the only module that speaks MQTT (aiomqtt). Drains the outbox to the broker.

Owns the broker connection: connect with a Last Will (``G/status`` = offline, retained),
announce ``online`` (retained) on every connect, publish outbox rows oldest first at QoS 1
with a bounded in-flight window, retire each row only after its PUBACK, and reconnect with
capped exponential backoff plus jitter. On :meth:`Publisher.shutdown` it drains what it can
within a deadline and announces ``stopped`` (retained) before disconnecting.

Invariants:
- a row is retired only after the broker acknowledged it (at-least-once; consumers
  de-duplicate by ``event_id``);
- after every (re)connect every unretired row is published again, oldest first;
- publishing and message iteration share one TaskGroup, so a lost connection aborts the
  publishes in flight at once instead of letting them wait for a timeout.

:func:`subscribe` is the read side for tools that watch a gate (``edgegate demo``); it lives
here so that this stays the one module that imports aiomqtt.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiomqtt
import structlog

from edgegate.mqtt.outbox import AsyncOutbox, OutboxRow
from edgegate.mqtt.payloads import StatusPayload, instant
from edgegate.mqtt.topics import Topics

log = structlog.get_logger(__name__)

PUBLISH_TIMEOUT_S = 10.0
SHUTDOWN_DRAIN_S = 3.0


@dataclass(frozen=True, slots=True)
class PublisherSettings:
    host: str
    port: int
    client_id: str
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = None
    tls_context: ssl.SSLContext | None = None
    window: int = 64
    backoff_base_s: float = 0.2
    backoff_cap_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Subscription:
    """An inbound topic filter and its handler (whitelist bundles, commands, acks).

    Handlers run inline in the message loop, in arrival order: they must be quick (validate,
    enqueue) and hand slow work to a task of their own. A handler that raises is logged and
    counted; the message is dropped and the connection stays up — input from the network
    never takes the publisher down.
    """

    topic_filter: str
    handler: Callable[[str, bytes], Awaitable[None]]
    qos: int = 1


class _ShutdownRequestedError(Exception):
    """Raised inside the connection's TaskGroup to leave it cleanly on shutdown."""


class Publisher:
    def __init__(
        self,
        settings: PublisherSettings,
        topics: Topics,
        outbox: AsyncOutbox,
        version: str,
        whitelist_seq: Callable[[], int | None],
        subscriptions: Sequence[Subscription] = (),
    ) -> None:
        self._settings = settings
        self._topics = topics
        self._outbox = outbox
        self._version = version
        self._whitelist_seq = whitelist_seq
        self._subscriptions = tuple(subscriptions)
        self._client: aiomqtt.Client | None = None
        self.handler_errors = 0
        self._since = instant(time.time())
        self._stopping = asyncio.Event()
        self.connected = False
        self.published = 0
        self.connects = 0

    def shutdown(self) -> None:
        """Ask :meth:`run` to drain, announce ``stopped`` and return."""
        self._stopping.set()
        # The drain loop sleeps on the outbox's wake event; ring it so it sees the request.
        self._outbox.appended.set()

    async def run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            error: aiomqtt.MqttError | None = None
            try:
                await self._session()
            except* aiomqtt.MqttError as group:
                error = group.exceptions[0]  # type: ignore[assignment]
            if error is None:
                return
            self.connected = False
            attempt += 1
            delay = _backoff(attempt, self._settings.backoff_base_s, self._settings.backoff_cap_s)
            log.warning("mqtt.disconnected", error=str(error), retry_in_s=round(delay, 2))
            if await _wait_or_timeout(self._stopping, delay):
                return

    def _status(self, state: str) -> bytes:
        payload = StatusPayload.model_validate(
            {
                "state": state,
                "version": self._version,
                "since": self._since,
                "whitelist_seq": self._whitelist_seq(),
            }
        )
        return payload.to_bytes()

    async def _session(self) -> None:
        s = self._settings
        client = aiomqtt.Client(
            s.host,
            s.port,
            identifier=s.client_id,
            username=s.username,
            password=s.password,
            keepalive=s.keepalive_s,
            tls_context=s.tls_context,
            timeout=PUBLISH_TIMEOUT_S,
            # A persistent session: the broker queues QoS 1 messages for our subscriptions
            # (whitelist deltas, commands) while the gate is offline.
            clean_session=False,
            will=aiomqtt.Will(self._topics.status, self._status("offline"), qos=1, retain=True),
        )
        async with client:
            self.connected = True
            self.connects += 1
            log.info("mqtt.connected", host=s.host, port=s.port, client_id=s.client_id)
            for subscription in self._subscriptions:
                await client.subscribe(subscription.topic_filter, qos=subscription.qos)
            await client.publish(self._topics.status, self._status("online"), qos=1, retain=True)
            self._client = client
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._dispatch(client), name="mqtt-messages")
                    group.create_task(self._drain_forever(client), name="mqtt-drain")
            except* _ShutdownRequestedError:
                pass
            finally:
                self._client = None
            await self._drain_once(client, deadline_s=SHUTDOWN_DRAIN_S)
            await client.publish(self._topics.status, self._status("stopped"), qos=1, retain=True)
            self.connected = False
            log.info("mqtt.stopped")

    async def publish_now(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> bool:
        """Best effort, not durable (health heartbeats): publish if connected right now."""
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError:
            return False
        return True

    async def _dispatch(self, client: aiomqtt.Client) -> None:
        # Iterating messages raises MqttError as soon as paho sees the connection drop,
        # which cancels the drain task and its in-flight publishes with it.
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            for subscription in self._subscriptions:
                if not message.topic.matches(subscription.topic_filter):
                    continue
                try:
                    await subscription.handler(str(message.topic), payload)
                except Exception as exc:
                    self.handler_errors += 1
                    log.error(
                        "mqtt.handler_failed",
                        topic=str(message.topic),
                        error=f"{type(exc).__name__}: {exc}",
                    )

    async def _drain_forever(self, client: aiomqtt.Client) -> None:
        wake = self._outbox.appended
        while True:
            wake.clear()
            if await self._publish_batch(client):
                continue
            if self._stopping.is_set():
                raise _ShutdownRequestedError
            await wake.wait()

    async def _drain_once(self, client: aiomqtt.Client, deadline_s: float) -> None:
        try:
            async with asyncio.timeout(deadline_s):
                while await self._publish_batch(client):
                    pass
        except TimeoutError:
            log.warning("mqtt.shutdown_drain_incomplete", deadline_s=deadline_s)

    async def _publish_batch(self, client: aiomqtt.Client) -> bool:
        """Publish up to one window of rows; returns whether there were any."""
        rows = await self._outbox.pending(self._settings.window)
        if not rows:
            return False
        async with asyncio.TaskGroup() as group:
            for row in rows:
                group.create_task(self._publish(client, row), name=f"publish-{row.id}")
        await self._outbox.retire([row.id for row in rows])
        self.published += len(rows)
        return True

    async def _publish(self, client: aiomqtt.Client, row: OutboxRow) -> None:
        await client.publish(row.topic, row.payload, qos=row.qos)


def _backoff(attempt: int, base_s: float, cap_s: float) -> float:
    """Capped exponential backoff with full jitter."""
    return random.uniform(0, min(cap_s, base_s * 2 ** min(attempt, 16)))


async def _wait_or_timeout(event: asyncio.Event, timeout_s: float) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes


async def subscribe(
    host: str, port: int, topic_filters: list[str], ready: asyncio.Event | None = None
) -> AsyncIterator[Received]:
    """Messages on ``topic_filters`` for tools that watch a gate (demo, watch), QoS 1."""
    async with aiomqtt.Client(host, port) as client:
        for topic_filter in topic_filters:
            await client.subscribe(topic_filter, qos=1)
        if ready is not None:
            ready.set()
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            yield Received(topic=str(message.topic), payload=payload)
