"""What authorised commands do to the gate: officer releases and customs dispositions.

Owns the gate's memory of recent decisions (which passages are held, released, waiting for
customs) and the effects of ``release`` and ``customs`` commands (DESIGN.md §8, §9). The
commands themselves are parsed and authorised in :mod:`edgegate.mqtt.commands`.

Invariants:
- only a held passage can be released, and only once; a release opens the barrier only while
  that passage's vehicle is still in the lane (the passage has not ended);
- a customs disposition is remembered by passage id and by pass number, so it applies
  whether it arrives before the decision or during the ``customs_wait_ms`` window;
- memory is bounded: the oldest passages are forgotten first.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edgegate.devices.actions import GateDriver
from edgegate.gate.actions import ActionSettings, plan_for_release
from edgegate.gate.model import Verdict
from edgegate.mqtt.commands import Accepted, CommandError

REMEMBERED_PASSAGES = 1000
DISPOSITIONS = frozenset({"release", "reject", "manual"})


@dataclass(slots=True)
class _Passage:
    verdict: Verdict
    pass_no: str | None
    ended: bool = False
    released_by: str | None = None


class GateControl:
    def __init__(
        self,
        gate: GateDriver,
        actions: ActionSettings,
        request_resync: Callable[[], Awaitable[dict[str, object]]] | None = None,
    ) -> None:
        self._gate = gate
        self._actions = actions
        self._request_resync = request_resync
        self._passages: OrderedDict[str, _Passage] = OrderedDict()
        self._dispositions: dict[str, str] = {}
        self._disposition_arrived = asyncio.Event()

    def decided(self, passage_id: str, verdict: Verdict, pass_no: str | None) -> None:
        self._passages[passage_id] = _Passage(verdict=verdict, pass_no=pass_no)
        while len(self._passages) > REMEMBERED_PASSAGES:
            forgotten, record = self._passages.popitem(last=False)
            self._dispositions.pop(forgotten, None)
            if record.pass_no:
                self._dispositions.pop(record.pass_no, None)

    def ended(self, passage_id: str) -> None:
        record = self._passages.get(passage_id)
        if record is not None:
            record.ended = True

    def disposition(self, passage_id: str, pass_no: str | None) -> str | None:
        return self._dispositions.get(passage_id) or (
            self._dispositions.get(pass_no) if pass_no else None
        )

    async def wait_disposition(
        self, passage_id: str, pass_no: str | None, timeout_s: float
    ) -> str | None:
        """The customs disposition for a passage, waiting up to ``timeout_s`` for one."""
        try:
            async with asyncio.timeout(timeout_s):
                while (found := self.disposition(passage_id, pass_no)) is None:
                    self._disposition_arrived.clear()
                    await self._disposition_arrived.wait()
                return found
        except TimeoutError:
            return None

    async def release(self, command: Accepted) -> dict[str, object]:
        passage_id = _text_arg(command, "passage_id")
        record = self._passages.get(passage_id)
        if record is None:
            raise CommandError(f"passage {passage_id} is not known to this gate")
        if record.verdict is not Verdict.HOLD:
            raise CommandError(f"passage {passage_id} is not held")
        if record.released_by is not None:
            raise CommandError(f"passage {passage_id} was already released by {record.released_by}")
        record.released_by = command.operator or "?"
        opened = not record.ended
        if opened:
            self._gate.follow(plan_for_release(self._actions))
        return {"passage_id": passage_id, "released": True, "gate_opened": opened}

    async def customs(self, command: Accepted) -> dict[str, object]:
        disposition = _text_arg(command, "disposition")
        if disposition not in DISPOSITIONS:
            raise CommandError(f"disposition must be one of {', '.join(sorted(DISPOSITIONS))}")
        keys = [
            str(command.args[key])
            for key in ("passage_id", "pass_no")
            if isinstance(command.args.get(key), str) and command.args[key]
        ]
        if not keys:
            raise CommandError("customs needs a passage_id or a pass_no")
        for key in keys:
            self._dispositions[key] = disposition
        self._disposition_arrived.set()
        return {"recorded": disposition, "for": keys}

    async def resync(self, command: Accepted) -> dict[str, object]:
        if self._request_resync is None:
            raise CommandError("whitelist sync is not running on this gate")
        return await self._request_resync()


def _text_arg(command: Accepted, name: str) -> str:
    value = command.args.get(name)
    if not isinstance(value, str) or not value:
        raise CommandError(f"{command.name} needs args.{name}")
    return value
