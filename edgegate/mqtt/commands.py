"""Commands on ``G/cmd`` and their replies on ``G/cmd/reply`` (DESIGN.md §9).

Owns parsing, authorisation and de-duplication of inbound commands, the reply for every
command, and the audit event for every accepted command. What a command
*does* is up to the :class:`CommandTarget` the daemon supplies.

Commands are JSON objects::

    {"command_id": "c-1", "name": "release", "args": {"passage_id": "…"},
     "operator": "officer-07", "issued_at": "2026-11-25T08:00:00Z", "sig": "<base64>"}

``release`` and ``customs`` change the gate's state and must be signed: ``sig`` is the
Ed25519 signature, by the key configured for ``operator`` in ``[commands] operator_keys``,
over the command's canonical form — the JSON object without ``sig``, keys sorted,
separators ``,`` and ``:``, UTF-8, non-ASCII unescaped. ``issued_at`` must be within
``MAX_SKEW_S`` of the gate's clock and a ``command_id`` is accepted once, so a captured
command cannot be replayed. ``ping`` and ``resync`` change nothing and need no signature.

Invariants: every well-formed command gets exactly one reply (``ok`` true or false, with
the reason); nothing a sender puts on ``G/cmd`` can raise out of :meth:`Commands.on_message`;
a rejected command changes nothing; every accepted command is recorded as an audit event
on ``G/audit`` before it takes effect.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgegate.ids import uuid7
from edgegate.mqtt.outbox import AsyncOutbox
from edgegate.mqtt.payloads import AuditEvent, CommandReply, instant
from edgegate.mqtt.topics import Topics

log = structlog.get_logger(__name__)

MAX_COMMAND_BYTES = 16 * 1024
MAX_SKEW_S = 300.0
REMEMBERED_COMMAND_IDS = 10_000
SIGNED_COMMANDS = frozenset({"release", "customs"})


class CommandError(Exception):
    """A command refused; the message is the reply's ``error``."""


class CommandIn(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: str = Field(min_length=1, max_length=128)
    name: Literal["release", "customs", "resync", "ping"]
    args: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    operator: str | None = Field(default=None, max_length=128)
    issued_at: str | None = None
    sig: str | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    """An authorised command, handed to the target."""

    command_id: str
    name: str
    args: Mapping[str, str | int | float | bool | None]
    operator: str | None


class CommandTarget(Protocol):
    """What the daemon does for each command; raise :class:`CommandError` to refuse."""

    async def release(self, command: Accepted) -> dict[str, object]: ...

    async def customs(self, command: Accepted) -> dict[str, object]: ...

    async def resync(self, command: Accepted) -> dict[str, object]: ...


def canonical_bytes(command: Mapping[str, object]) -> bytes:
    """The bytes an operator signs: the command without ``sig``, canonically serialised."""
    unsigned = {key: value for key, value in command.items() if key != "sig"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


class Authority:
    """Operator keys (``[commands] operator_keys``) and the replay window."""

    def __init__(self, operator_keys: Mapping[str, str], clock: Callable[[], float]) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for operator, key_b64 in operator_keys.items():
            try:
                self._keys[operator] = Ed25519PublicKey.from_public_bytes(
                    base64.b64decode(key_b64, validate=True)
                )
            except (binascii.Error, ValueError) as exc:
                raise ValueError(f"operator_keys.{operator}: not a base64 Ed25519 key") from exc
        self._clock = clock

    def check(self, raw: Mapping[str, object], command: CommandIn) -> None:
        if command.name not in SIGNED_COMMANDS:
            return
        if not command.operator or not command.sig:
            raise CommandError(f"{command.name} must be signed by an operator")
        key = self._keys.get(command.operator)
        if key is None:
            raise CommandError(f"unknown operator {command.operator!r}")
        try:
            signature = base64.b64decode(command.sig, validate=True)
            key.verify(signature, canonical_bytes(raw))
        except (binascii.Error, ValueError, InvalidSignature):
            raise CommandError("bad signature") from None
        if command.issued_at is None:
            raise CommandError("issued_at is required on a signed command")
        try:
            issued = datetime.fromisoformat(command.issued_at.replace("Z", "+00:00"))
        except ValueError:
            raise CommandError("issued_at is not an RFC 3339 instant") from None
        if issued.tzinfo is None:
            raise CommandError("issued_at must carry a time zone")
        skew_s = abs(self._clock() - issued.astimezone(UTC).timestamp())
        if skew_s > MAX_SKEW_S:
            raise CommandError(f"issued_at is {skew_s:.0f} s away from the gate's clock")


class Commands:
    """The ``G/cmd`` handler: parse, authorise, de-duplicate, execute, reply, audit."""

    def __init__(
        self,
        authority: Authority,
        target: CommandTarget,
        outbox: AsyncOutbox,
        topics: Topics,
        clock: Callable[[], float],
    ) -> None:
        self._authority = authority
        self._target = target
        self._outbox = outbox
        self._topics = topics
        self._clock = clock
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.accepted = 0
        self.rejected = 0

    async def on_message(self, _topic: str, payload: bytes) -> None:
        command_id: str | None = None
        try:
            raw = _load(payload)
            identified = raw.get("command_id")
            command_id = identified if isinstance(identified, str) and identified else None
            command = _validate(raw)
            result = await self._execute(raw, command)
        except CommandError as exc:
            self.rejected += 1
            log.warning("command.rejected", command_id=command_id, reason=str(exc))
            # A command that cannot be identified cannot be answered; it is only counted.
            if command_id is not None:
                await self._reply(command_id, ok=False, error=str(exc))
            return
        self.accepted += 1
        await self._reply(command.command_id, ok=True, result=result)

    async def _execute(self, raw: Mapping[str, object], command: CommandIn) -> dict[str, object]:
        if command.command_id in self._seen:
            raise CommandError("duplicate command_id")
        self._authority.check(raw, command)
        self._remember(command.command_id)
        accepted = Accepted(command.command_id, command.name, command.args, command.operator)
        # Every accepted command is an event (DESIGN.md §8), recorded before it takes effect.
        await self._audit(accepted)
        if command.name == "ping":
            return {"pong": instant(self._clock())}
        if command.name == "resync":
            return await self._target.resync(accepted)
        if command.name == "release":
            return await self._target.release(accepted)
        return await self._target.customs(accepted)

    def _remember(self, command_id: str) -> None:
        self._seen[command_id] = None
        while len(self._seen) > REMEMBERED_COMMAND_IDS:
            self._seen.popitem(last=False)

    async def _audit(self, command: Accepted) -> None:
        event_id = uuid7()
        event = AuditEvent(
            event_id=event_id,
            command_id=command.command_id,
            name=command.name,
            operator=command.operator,
            args=dict(command.args),
            at=instant(self._clock()),
        )
        body = event.to_bytes()
        await self._outbox.append(self._topics.audit, event_id, lambda _seq: body, counter="audit")
        log.info(
            "command.accepted",
            command_id=command.command_id,
            name=command.name,
            operator=command.operator,
            event_id=event_id,
        )

    async def _reply(
        self,
        command_id: str,
        *,
        ok: bool,
        error: str | None = None,
        result: dict[str, object] | None = None,
    ) -> None:
        event_id = uuid7()
        body = CommandReply(
            event_id=event_id, command_id=command_id, ok=ok, error=error, result=result
        ).to_bytes()
        await self._outbox.append(
            self._topics.cmd_reply, event_id, lambda _seq: body, counter="cmd_reply"
        )


def _load(payload: bytes) -> dict[str, object]:
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"command larger than {MAX_COMMAND_BYTES} bytes")
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CommandError("not JSON") from None
    if not isinstance(raw, dict):
        raise CommandError("a command is a JSON object")
    return raw


def _validate(raw: dict[str, object]) -> CommandIn:
    try:
        return CommandIn.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "command"
        raise CommandError(f"{where}: {first['msg']}") from None
