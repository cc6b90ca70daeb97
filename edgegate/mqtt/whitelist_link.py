"""The whitelist sync's way out: its ``whitelist_rejected`` alarm and its resync requests.

Owns how :class:`edgegate.whitelist.sync.WhitelistSync` reaches the back office. The sync
knows no MQTT (whitelist/ never imports mqtt/); this adapter satisfies its two protocols
with the durable outbox, so a rejection alarm or a resync request made while the broker is
unreachable is published as soon as it is reachable again, like any decision.
"""

from __future__ import annotations

from edgegate.ids import uuid7
from edgegate.mqtt.alarms import AlarmKind, Alarms
from edgegate.mqtt.outbox import AsyncOutbox
from edgegate.mqtt.payloads import WhitelistResync
from edgegate.mqtt.topics import Topics

RESYNC_COUNTER = "resync"


class WhitelistLink:
    def __init__(self, alarms: Alarms, outbox: AsyncOutbox, topics: Topics) -> None:
        self._alarms = alarms
        self._outbox = outbox
        self._topics = topics

    async def whitelist_rejected(self, detail: str) -> None:
        await self._alarms.raise_alarm(AlarmKind.WHITELIST_REJECTED, "warning", detail)

    async def request_resync(self, have_seq: int | None, reason: str) -> None:
        event_id = uuid7()
        payload = WhitelistResync(event_id=event_id, have_seq=have_seq, reason=reason).to_bytes()
        await self._outbox.append(
            self._topics.whitelist_resync, event_id, lambda _seq: payload, counter=RESYNC_COUNTER
        )
