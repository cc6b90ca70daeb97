"""MQTT topic names — contract, DESIGN.md §9.

Owns the spelling of every topic. Invariant: ``P`` = ``mqtt.topic_prefix`` and
``G`` = ``P/<site>/<gate_id>``; no other module builds a topic string by hand.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    site: str
    gate_id: str

    @property
    def gate(self) -> str:
        return f"{self.prefix}/{self.site}/{self.gate_id}"

    @property
    def status(self) -> str:
        return f"{self.gate}/status"

    @property
    def decision(self) -> str:
        return f"{self.gate}/decision"

    @property
    def alarm(self) -> str:
        return f"{self.gate}/alarm"

    @property
    def health(self) -> str:
        return f"{self.gate}/health"

    @property
    def reads(self) -> str:
        return f"{self.gate}/reads"

    @property
    def epcis(self) -> str:
        """One EPCIS 2.0 document per decided passage — an extension of §9 (opt-in)."""
        return f"{self.gate}/epcis"

    @property
    def cmd(self) -> str:
        return f"{self.gate}/cmd"

    @property
    def cmd_reply(self) -> str:
        return f"{self.gate}/cmd/reply"

    @property
    def ack(self) -> str:
        return f"{self.gate}/ack"

    @property
    def audit(self) -> str:
        """Accepted state-changing commands (release, customs) — an extension of §9."""
        return f"{self.gate}/audit"

    @property
    def whitelist(self) -> str:
        return f"{self.prefix}/{self.site}/whitelist"

    @property
    def whitelist_resync(self) -> str:
        return f"{self.gate}/whitelist/resync"
