"""The publisher: the only module that speaks MQTT (aiomqtt). Drains the outbox to the broker.

Owns the broker connection: connect (optionally over mutual TLS) with a Last Will
(``G/status`` = offline, retained), subscribe and announce ``online`` (retained) on every
connect, publish outbox rows oldest first at QoS 1 through a sliding in-flight window, and
reconnect with capped exponential backoff plus jitter. On :meth:`Publisher.shutdown` it
drains what it can within a deadline and announces ``stopped`` (retained) before
disconnecting.

Delivery (DESIGN.md §10): with ``ack = "puback"`` a row is deleted once the broker's PUBACK
for it is in; with ``ack = "app"`` the PUBACK only marks it sent, and it is deleted when the
back office names its ``event_id`` on ``G/ack`` — a sent row still unacknowledged after
``ack_timeout_s``, or at the next connect, is published again. The backlog found at connect
(after an outage or a restart) is replayed at ``replay_rate_per_s``; events committed after
the connect follow at once.

Invariants:
- a row is retired only after the broker acknowledged it (at-least-once; consumers
  de-duplicate by ``event_id``); a row is never in flight twice at once;
- after every (re)connect every unretired row is published again, oldest first;
- publishing and message iteration share one TaskGroup, so a lost connection aborts the
  publishes in flight at once instead of letting them wait for a timeout;
- input from the network (acks, commands) never takes the connection down.

:func:`subscribe` is the read side for tools that watch a gate (``edgegate demo``,
``edgegate watch``); it lives here so that this stays the one module that imports aiomqtt.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiomqtt
import structlog
from pydantic import ValidationError

from edgegate.mqtt.outbox import AsyncOutbox, OutboxRow
from edgegate.mqtt.payloads import AckIn, StatusPayload, instant
from edgegate.mqtt.topics import Topics

log = structlog.get_logger(__name__)

PUBLISH_TIMEOUT_S = 10.0
SHUTDOWN_DRAIN_S = 3.0
MAX_ACK_BYTES = 2 * 1024 * 1024
# paho leaves Nagle's algorithm on. A decision published while an earlier small packet
# (a QoS 0 heartbeat, which the broker does not answer) still awaits its TCP ACK would then
# wait for the broker's delayed ACK, up to ~40 ms on Linux.
NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


@dataclass(frozen=True, slots=True)
class PublisherSettings:
    host: str
    port: int
    client_id: str
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_context: ssl.SSLContext | None = None
    window: int = 64
    backoff_base_s: float = 0.2
    backoff_cap_s: float = 10.0
    ack: Literal["puback", "app"] = "puback"
    ack_timeout_s: float = 60.0
    # 0 = no limit.
    replay_rate_per_s: float = 0.0


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


class TokenBucket:
    """Paces :meth:`take` to ``rate_per_s`` on average, in bursts of at most ``burst``."""

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._rate = rate_per_s
        self._burst = max(1.0, burst)
        self._tokens = self._burst
        self._clock = clock
        self._sleep = sleep
        self._last = clock()

    async def take(self) -> None:
        if self._rate <= 0:
            return
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        # Take on credit and wait the debt off: one sleep per take, however the clock rounds.
        self._tokens -= 1
        if self._tokens < 0:
            await self._sleep(-self._tokens / self._rate)


class _ShutdownRequestedError(Exception):
    """Raised inside the connection's TaskGroup to leave it cleanly on shutdown."""


@dataclass(slots=True)
class _Flight:
    """One connection's rows between publish and retirement."""

    window: asyncio.Semaphore
    in_flight: set[int] = field(default_factory=set)
    acked: list[int] = field(default_factory=list)
    acked_ready: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self, row_id: int) -> None:
        self.in_flight.add(row_id)
        self.settled.clear()

    def done(self, row_ids: Sequence[int]) -> None:
        self.in_flight.difference_update(row_ids)
        if not self.in_flight:
            self.settled.set()


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
        own = (Subscription(topics.ack, self._on_ack),) if settings.ack == "app" else ()
        self._subscriptions = (*subscriptions, *own)
        self._client: aiomqtt.Client | None = None
        self._flight: _Flight | None = None
        self._since = instant(time.time())
        self._stopping = asyncio.Event()
        self.connected = False
        self.connects = 0
        self.published = 0
        self.handler_errors = 0
        self.acked = 0
        self.acks_rejected = 0

    @property
    def in_flight(self) -> int:
        """Rows published on the current connection whose PUBACK is not yet settled."""
        flight = self._flight
        return len(flight.in_flight) if flight is not None and self.connected else 0

    def shutdown(self) -> None:
        """Ask :meth:`run` to drain, announce ``stopped`` and return."""
        self._stopping.set()
        # The drain loop sleeps on the outbox's wake event; ring it so it sees the request.
        self._outbox.appended.set()

    async def run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            connects = self.connects
            error: aiomqtt.MqttError | None = None
            try:
                await self._session()
            except* aiomqtt.MqttError as group:
                error = group.exceptions[0]  # type: ignore[assignment]
            if error is None:
                return
            # A connection that came up starts the backoff afresh.
            attempt = 1 if self.connects != connects else attempt + 1
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
            # paho's own limit is 20; ours is the window, so that it means what it says.
            max_inflight_messages=s.window,
            will=aiomqtt.Will(self._topics.status, self._status("offline"), qos=1, retain=True),
            socket_options=NO_DELAY,
        )
        # aiomqtt warns past 10 calls awaiting their ack; a full window is the normal case.
        client.pending_calls_threshold = s.window + len(self._subscriptions) + 2
        flight = self._flight = _Flight(asyncio.Semaphore(s.window))
        flight.settled.set()
        async with client:
            self.connected = True
            self.connects += 1
            log.info("mqtt.connected", host=s.host, port=s.port, client_id=s.client_id)
            try:
                await self._announce(client)
                replay_until = await self._outbox.last_id()
                self._client = client
                try:
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._dispatch(client), name="mqtt-messages")
                        group.create_task(
                            self._drain(client, flight, replay_until, group), name="mqtt-drain"
                        )
                        group.create_task(self._settle_forever(flight), name="mqtt-settle")
                        group.create_task(self._shutdown_deadline(), name="mqtt-deadline")
                except* _ShutdownRequestedError:
                    pass
                finally:
                    # PUBACKs already in are not wasted on a lost connection: settle them now.
                    await self._settle(flight)
            finally:
                self._client = None
                self.connected = False
            await client.publish(
                self._topics.status,
                self._status("stopped"),
                qos=1,
                retain=True,
                timeout=SHUTDOWN_DRAIN_S,
            )
            log.info("mqtt.stopped")

    async def _announce(self, client: aiomqtt.Client) -> None:
        """Subscribe, say ``online`` (retained) and, with app acks, make every sent row due."""
        for subscription in self._subscriptions:
            await client.subscribe(subscription.topic_filter, qos=subscription.qos)
        await client.publish(self._topics.status, self._status("online"), qos=1, retain=True)
        if self._settings.ack == "app":
            await self._outbox.unsend_all()

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
        # which cancels the drain and its in-flight publishes with it.
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

    async def _drain(
        self,
        client: aiomqtt.Client,
        flight: _Flight,
        replay_until: int,
        group: asyncio.TaskGroup,
    ) -> None:
        """Feed rows into the window, oldest first; the backlog at ``replay_rate_per_s``."""
        s = self._settings
        wake = self._outbox.appended
        replay = TokenBucket(s.replay_rate_per_s, burst=min(s.window, s.replay_rate_per_s))
        idle_check_s = max(0.05, min(1.0, s.ack_timeout_s / 4)) if s.ack == "app" else None
        cursor = 0
        while True:
            wake.clear()
            rows = await self._outbox.pending(s.window, after_id=cursor)
            resend = False
            if rows:
                cursor = rows[-1].id
            elif s.ack == "app":
                overdue = await self._outbox.overdue(
                    time.time() - s.ack_timeout_s, s.window + len(flight.in_flight)
                )
                rows = [row for row in overdue if row.id not in flight.in_flight]
                resend = True
            if not rows:
                if self._stopping.is_set():
                    await flight.settled.wait()
                    raise _ShutdownRequestedError
                await _wait_or_timeout(wake, idle_check_s)
                continue
            for row in rows:
                await flight.window.acquire()
                if resend or row.id <= replay_until:
                    await replay.take()
                flight.start(row.id)
                group.create_task(self._publish(client, row, flight), name=f"publish-{row.id}")

    async def _publish(self, client: aiomqtt.Client, row: OutboxRow, flight: _Flight) -> None:
        await client.publish(row.topic, row.payload, qos=row.qos)
        flight.window.release()
        flight.acked.append(row.id)
        flight.acked_ready.set()

    async def _settle_forever(self, flight: _Flight) -> None:
        while True:
            await flight.acked_ready.wait()
            await self._settle(flight)

    async def _settle(self, flight: _Flight) -> None:
        """Retire (or mark sent) every PUBACK'd row in one transaction."""
        flight.acked_ready.clear()
        ids, flight.acked = flight.acked, []
        if not ids:
            return
        if self._settings.ack == "app":
            await self._outbox.mark_sent(ids)
        else:
            await self._outbox.retire(ids)
        flight.done(ids)
        self.published += len(ids)

    async def _shutdown_deadline(self) -> None:
        await self._stopping.wait()
        await asyncio.sleep(SHUTDOWN_DRAIN_S)
        log.warning("mqtt.shutdown_drain_incomplete", deadline_s=SHUTDOWN_DRAIN_S)
        raise _ShutdownRequestedError

    async def _on_ack(self, topic: str, payload: bytes) -> None:
        """``G/ack``: delete what the back office has; a malformed ack is counted, ignored."""
        try:
            if len(payload) > MAX_ACK_BYTES:
                raise ValueError(f"ack of {len(payload)} bytes exceeds {MAX_ACK_BYTES}")
            ack = AckIn.model_validate_json(payload)
        except (ValueError, ValidationError) as exc:
            self.acks_rejected += 1
            log.warning("mqtt.ack_rejected", topic=topic, error=_one_line(exc))
            return
        self.acked += await self._outbox.acknowledge(ack.event_ids)


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "payload"
        return f"{where}: {first['msg']}"
    return str(exc)


def _backoff(attempt: int, base_s: float, cap_s: float) -> float:
    """Capped exponential backoff with full jitter."""
    return random.uniform(0, min(cap_s, base_s * 2 ** min(attempt, 16)))


async def _wait_or_timeout(event: asyncio.Event, timeout_s: float | None) -> bool:
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


class SubscriptionError(Exception):
    """A watching tool's connection failed or was lost; the message says why."""


async def subscribe(
    host: str,
    port: int,
    topic_filters: list[str],
    ready: asyncio.Event | None = None,
    *,
    username: str | None = None,
    password: str | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Received]:
    """Messages on ``topic_filters`` for tools that watch a gate (demo, watch), QoS 1.

    Raises :class:`SubscriptionError` when the broker cannot be reached or goes away, so
    that callers never need to know the MQTT client library.
    """
    try:
        async with aiomqtt.Client(
            host, port, username=username, password=password, tls_context=tls_context
        ) as client:
            for topic_filter in topic_filters:
                await client.subscribe(topic_filter, qos=1)
            if ready is not None:
                ready.set()
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                yield Received(topic=str(message.topic), payload=payload)
    except aiomqtt.MqttError as exc:
        raise SubscriptionError(str(exc) or type(exc).__name__) from exc
