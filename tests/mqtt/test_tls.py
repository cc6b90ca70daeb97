"""Mutual TLS and an ACL on a real mosquitto: the gate gets in with its certificate and can
publish under its own topics only.

The broker requires a client certificate, takes the certificate's CN as the user name and
applies an ACL file: the gate ``edgegate-HAK-CBZ-G01`` may write only under
``edgegate/v1/HAK-CBZ/G01/#``; the back office may read everything. The certificates are made
by the test (tests/mqtt/certs.py).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest

from edgegate.config import MqttConfig
from edgegate.localbroker import LocalBroker
from edgegate.mqtt.outbox import AsyncOutbox
from edgegate.mqtt.publisher import Publisher, PublisherSettings
from edgegate.mqtt.security import tls_context
from edgegate.mqtt.topics import Topics
from tests.mqtt.certs import Pki, write_pki

GATE_CN = "edgegate-HAK-CBZ-G01"
TOPICS = Topics("edgegate/v1", "HAK-CBZ", "G01")
NEIGHBOUR = Topics("edgegate/v1", "HAK-CBZ", "G02")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return write_pki(tmp_path / "pki", client_cn=GATE_CN)


@pytest.fixture
def tls_broker(pki: Pki, tmp_path: Path) -> Iterator[LocalBroker]:
    acl = tmp_path / "acl"
    acl.write_text(
        f"user {GATE_CN}\n"
        f"topic write {TOPICS.gate}/#\n"
        f"topic read {TOPICS.gate}/#\n"
        f"topic read {TOPICS.whitelist}\n"
        "\n"
        "user back-office\n"
        "topic read edgegate/v1/#\n"
    )
    options = [
        f"cafile {pki.ca}",
        f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}",
        "require_certificate true",
        "use_identity_as_username true",
        f"acl_file {acl}",
    ]
    with LocalBroker(options=options) as broker:
        yield broker


def client_context(pki: Pki, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


@pytest.fixture
async def back_office(tls_broker: LocalBroker, pki: Pki) -> AsyncIterator[aiomqtt.Client]:
    cert, key = pki.client("back-office", "back-office")
    async with aiomqtt.Client(
        tls_broker.host, tls_broker.port, tls_context=client_context(pki, cert, key)
    ) as client:
        await client.subscribe("edgegate/v1/#", qos=1)
        yield client


async def next_message(client: aiomqtt.Client, topic_filter: str) -> aiomqtt.Message:
    async with asyncio.timeout(20):
        async for message in client.messages:
            if message.topic.matches(topic_filter):
                return message
    raise AssertionError("subscription ended")


async def test_the_gate_connects_with_its_certificate_and_its_decision_arrives(
    tls_broker: LocalBroker, pki: Pki, back_office: aiomqtt.Client, tmp_path: Path
) -> None:
    config = MqttConfig(
        host=tls_broker.host,
        port=tls_broker.port,
        tls=True,
        ca_file=str(pki.ca),
        cert_file=str(pki.cert),
        key_file=str(pki.key),
    )
    outbox = await AsyncOutbox.open(tmp_path / "outbox.db")
    settings = PublisherSettings(
        host=config.host, port=config.port, client_id=GATE_CN, tls_context=tls_context(config)
    )
    pub = Publisher(settings, TOPICS, outbox, version="test", whitelist_seq=lambda: None)
    async with asyncio.TaskGroup() as group:
        group.create_task(pub.run())
        online = await next_message(back_office, TOPICS.status)
        await outbox.append(TOPICS.decision, "e1", lambda seq: b'{"seq":%d}' % seq, counter="d")
        decision = await next_message(back_office, TOPICS.decision)
        pub.shutdown()
    await outbox.close()
    assert isinstance(online.payload, bytes)
    assert json.loads(online.payload)["state"] == "online"
    assert decision.payload == b'{"seq":1}'


async def test_the_gate_cannot_publish_outside_its_own_topics(
    tls_broker: LocalBroker, pki: Pki, back_office: aiomqtt.Client
) -> None:
    gate = client_context(pki, pki.cert, pki.key)
    async with aiomqtt.Client(
        tls_broker.host, tls_broker.port, identifier="rogue", tls_context=gate
    ) as client:
        await client.publish(NEIGHBOUR.decision, b"forged", qos=1)
        await client.publish(TOPICS.decision, b"marker", qos=1)
    # The broker handles one client's publishes in order: had the forged one been delivered,
    # it would have arrived before the marker.
    first = await next_message(back_office, "edgegate/v1/#")
    assert (str(first.topic), first.payload) == (TOPICS.decision, b"marker")


async def test_a_client_without_a_certificate_is_refused(tls_broker: LocalBroker, pki: Pki) -> None:
    anonymous = client_context(pki, None, None)
    # In TLS 1.2 the broker refuses inside the handshake; in 1.3 only after it, which the
    # client would notice as a CONNACK that never comes.
    anonymous.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(aiomqtt.MqttError, match=r"certificate|handshake|alert"):
        async with aiomqtt.Client(
            tls_broker.host, tls_broker.port, tls_context=anonymous
        ) as client:
            await client.publish(TOPICS.decision, b"anonymous", qos=1)
