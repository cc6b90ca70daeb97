"""Shared fixtures: a real MQTT broker for the whole test session.

The broker is ``mosquitto`` on a free loopback port (amqtt in-process only where no
mosquitto binary exists, see edgegate.localbroker). Tests that kill or restart a broker take
their own ``fresh_broker`` so they never disturb the others.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgegate.localbroker import LocalBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as running:
        yield running


@pytest.fixture
def fresh_broker() -> Iterator[LocalBroker]:
    with LocalBroker() as running:
        yield running
