"""``edgegate watch``: a live terminal view of one gate, built from its MQTT topics.

Owns the view of a gate as an operator sees it: :class:`GateView` folds the messages of
``G/#`` into what the screen shows (the retained status and health, the latest passage, the
last decisions and alarms), :func:`render` turns that into a rich renderable, and
:func:`watch` connects the two to the broker and keeps the screen current.

Invariants:
- :class:`GateView` and :func:`render` are pure (payloads and an instant in, renderable
  out), so the screen is tested without a terminal or a broker;
- any payload is shown as far as it is understood: a missing or mistyped field is left out,
  a message that is not a JSON object is counted and skipped — the view never stops on
  input. Health is rendered from whatever fields the daemon publishes (DESIGN.md §9
  ``health``), so older and newer daemons can be watched alike;
- a lost broker connection is shown on screen and retried with capped backoff until the
  watch ends (Ctrl-C or ``--duration``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from edgegate.config import Config
from edgegate.mqtt.publisher import SubscriptionError, subscribe
from edgegate.mqtt.security import mqtt_password, tls_context
from edgegate.mqtt.topics import Topics

DECISIONS_SHOWN = 10
ALARMS_SHOWN = 5
TAGS_SHOWN = 8
REFRESH_S = 1.0
RETRY_BASE_S = 0.5
RETRY_CAP_S = 10.0

_STATE_STYLES = {"online": "bold green", "offline": "bold red", "stopped": "bold yellow"}
_SEVERITY_STYLES = {"info": "cyan", "warning": "yellow", "critical": "bold red"}
_VERDICT_STYLES = {"pass": "bold green", "hold": "bold red"}

Payload = Mapping[str, object]


@dataclass
class GateView:
    """What the screen shows, folded from the messages received so far."""

    gate: str
    broker: str
    connection: str = "connecting"
    status: Payload | None = None
    health: Payload | None = None
    health_received_s: float | None = None
    decisions: deque[Payload] = field(default_factory=lambda: deque(maxlen=DECISIONS_SHOWN))
    alarms: deque[Payload] = field(default_factory=lambda: deque(maxlen=ALARMS_SHOWN))
    messages: int = 0
    unreadable: int = 0

    def apply(self, subtopic: str, payload: bytes, received_s: float) -> None:
        """Fold one message of ``G/<subtopic>`` into the view."""
        self.messages += 1
        if subtopic not in {"status", "decision", "alarm", "health"}:
            return  # commands, replies, raw reads: not part of this view
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if not isinstance(data, dict):
            self.unreadable += 1
            return
        if subtopic == "status":
            self.status = data
        elif subtopic == "health":
            self.health, self.health_received_s = data, received_s
        elif subtopic == "decision":
            self.decisions.appendleft(data)
        else:
            self.alarms.appendleft(data)


def render(view: GateView, now_s: float) -> RenderableType:
    """The whole screen for ``view`` at wall-clock time ``now_s``."""
    parts: list[RenderableType] = [_header(view)]
    parts.append(_current_passage(view.decisions[0] if view.decisions else None))
    if view.decisions:
        parts.append(_decisions(view.decisions))
    parts.append(_health(view.health, view.health_received_s, now_s))
    if view.alarms:
        parts.append(_alarms(view.alarms))
    footer = f"{view.messages} messages"
    if view.unreadable:
        footer += f", {view.unreadable} unreadable"
    parts.append(Text(footer + " · Ctrl-C to quit", style="dim"))
    return Group(*parts)


def _header(view: GateView) -> Text:
    text = Text.assemble(("edgegate watch ", "bold"), (view.gate, "bold cyan"), "  ")
    status = view.status or {}
    state = _str(status, "state")
    if state:
        text.append(f"● {state}", style=_STATE_STYLES.get(state, "bold"))
        since = _clock_time(_str(status, "since"))
        if since:
            text.append(f" since {since}")
    else:
        text.append("● no status yet", style="dim")
    version = _str(status, "version")
    if version:
        text.append(f"  v{version}", style="dim")
    seq = _int(status, "whitelist_seq")
    if seq is not None:
        text.append(f"  whitelist seq {seq}")
    style = "green" if view.connection == "connected" else "yellow"
    text.append(f"   broker {view.broker}: {view.connection}", style=style)
    return text


def _current_passage(decision: Payload | None) -> Panel:
    if decision is None:
        return Panel(Text("no decision yet", style="dim"), title="latest passage")
    verdict = _str(decision, "decision") or "?"
    lines: list[RenderableType] = []
    headline = Text(f" {verdict.upper()} ", style=_VERDICT_STYLES.get(verdict, "bold"))
    headline.append(
        f"  seq {_int(decision, 'seq')}  direction {_str(decision, 'direction') or '?'}"
        f"  decided {_clock_time(_str(decision, 'decided_at')) or '?'}",
        style="default",
    )
    pass_no = _str(decision, "pass_no")
    if pass_no:
        headline.append(f"  pass {pass_no}")
    lines.append(headline)
    for reason in _dicts(decision.get("reasons")):
        line = Text(f"  {_str(reason, 'code') or '?'}", style="red")
        detail = _str(reason, "detail")
        if detail:
            line.append(f"  {detail}", style="default")
        epcs = [e for e in _list(reason.get("epcs")) if isinstance(e, str)]
        if epcs:
            line.append("  " + ", ".join(epcs), style="dim")
        lines.append(line)
    tags = _dicts(decision.get("tags"))
    if tags:
        table = Table(box=None, pad_edge=False, show_edge=False)
        for column in ("EPC", "SKU", "status", "reads", "RSSI"):
            table.add_column(column, style="dim" if column == "reads" else None)
        for tag in tags[:TAGS_SHOWN]:
            rssi = tag.get("rssi_max")
            table.add_row(
                _str(tag, "epc") or "?",
                _str(tag, "sku") or Text("unknown", style="red"),
                _str(tag, "status") or "—",
                str(_int(tag, "reads") or ""),
                f"{rssi:.0f}" if isinstance(rssi, int | float) else "",
            )
        lines.append(table)
        if len(tags) > TAGS_SHOWN:
            lines.append(Text(f"  … and {len(tags) - TAGS_SHOWN} more tags", style="dim"))
    passage = (_str(decision, "passage_id") or "")[:13]
    return Panel(Group(*lines), title=f"latest passage {passage}", title_align="left")


def _decisions(decisions: deque[Payload]) -> Table:
    table = Table(title="last decisions", title_justify="left")
    for column in ("time", "seq", "decision", "dir", "tags", "reasons"):
        table.add_column(column, no_wrap=column != "reasons")
    for decision in decisions:
        verdict = _str(decision, "decision") or "?"
        codes = [_str(reason, "code") or "?" for reason in _dicts(decision.get("reasons"))]
        table.add_row(
            _clock_time(_str(decision, "decided_at")) or "",
            str(_int(decision, "seq") or ""),
            Text(verdict.upper(), style=_VERDICT_STYLES.get(verdict, "bold")),
            _str(decision, "direction") or "",
            str(len(_list(decision.get("tags")))),
            Text(", ".join(codes), style="red"),
        )
    return table


def _health(health: Payload | None, received_s: float | None, now_s: float) -> Panel:
    if health is None or received_s is None:
        return Panel(Text("no health report yet", style="dim"), title="health", title_align="left")
    lines: list[RenderableType] = []
    readers = _dicts(health.get("readers"))
    if readers:
        table = Table(box=None, pad_edge=False, show_edge=False)
        for column in ("reader", "link", "frames", "errors", "last seen"):
            table.add_column(column)
        for reader in readers:
            connected = reader.get("connected")
            link = (
                Text("● up", style="green")
                if connected is True
                else Text("● down", style="bold red")
                if connected is False
                else Text("?", style="dim")
            )
            table.add_row(
                _str(reader, "name") or "?",
                link,
                _count(reader, "frames"),
                _count(reader, "errors"),
                _clock_time(_str(reader, "last_seen")) or "—",
            )
        lines.append(table)
    facts = Text()
    outbox = _dict(health.get("outbox"))
    if outbox is not None:
        depth = _int(outbox, "depth")
        facts.append("outbox ")
        facts.append(str(depth) if depth is not None else "?", style="bold" if depth else "green")
        oldest = _float(outbox, "oldest_age_s")
        if oldest is not None and depth:
            facts.append(f" (oldest {_duration(oldest)})", style="yellow")
        dropped = _int(outbox, "dropped")
        if dropped:
            facts.append(f", {dropped} dropped", style="bold red")
        facts.append("   ")
    whitelist = _dict(health.get("whitelist"))
    if whitelist is not None:
        seq = _int(whitelist, "seq")
        facts.append(f"whitelist seq {seq}" if seq is not None else "no whitelist")
        age = _float(whitelist, "age_s")
        if age is not None:
            facts.append(f", age {_duration(age)}")
        if whitelist.get("stale") is True:
            facts.append(" STALE", style="bold red")
        facts.append("   ")
    passages = _dict(health.get("passages"))
    if passages is not None:
        facts.append(
            f"passages {_count(passages, 'decided')} "
            f"({_count(passages, 'pass')} pass, {_count(passages, 'hold')} hold)   "
        )
    uptime = _float(health, "uptime_s")
    if uptime is not None:
        facts.append(f"up {_duration(uptime)}   ")
    facts.append(f"reported {_duration(max(0.0, now_s - received_s))} ago", style="dim")
    lines.append(facts)
    return Panel(Group(*lines), title="health", title_align="left")


def _alarms(alarms: deque[Payload]) -> Table:
    table = Table(title="last alarms", title_justify="left")
    for column in ("time", "severity", "kind", "detail"):
        table.add_column(column, no_wrap=column != "detail")
    for alarm in alarms:
        severity = _str(alarm, "severity") or "?"
        table.add_row(
            _clock_time(_str(alarm, "at")) or "",
            Text(severity, style=_SEVERITY_STYLES.get(severity, "bold")),
            _str(alarm, "kind") or "?",
            _str(alarm, "detail") or "",
        )
    return table


def _str(data: Payload, key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _int(data: Payload, key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(data: Payload, key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(data: Payload, key: str) -> str:
    value = _int(data, key)
    return "?" if value is None else str(value)


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _dict(value: object) -> Payload | None:
    return value if isinstance(value, dict) else None


def _dicts(value: object) -> list[Payload]:
    return [item for item in _list(value) if isinstance(item, dict)]


def _clock_time(instant: str | None) -> str | None:
    """``2026-11-25T08:00:01.250Z`` → ``08:00:01`` in local time; None if unparsable."""
    if instant is None:
        return None
    try:
        moment = datetime.fromisoformat(instant.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone().strftime("%H:%M:%S")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


@dataclass(frozen=True, slots=True)
class BrokerAccess:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls_context: ssl.SSLContext | None = None


async def watch(
    broker: BrokerAccess,
    topics: Topics,
    console: Console,
    *,
    view: GateView | None = None,
    duration_s: float | None = None,
    subscribed: asyncio.Event | None = None,
) -> GateView:
    """Show ``topics.gate`` live on ``console`` until cancelled or ``duration_s`` passes.

    Folds into ``view`` when given (a new one otherwise) and returns it. ``subscribed`` is
    set once the first subscription is in place.
    """
    if view is None:
        view = GateView(f"{topics.site}/{topics.gate_id}", f"{broker.host}:{broker.port}")
    prefix = f"{topics.gate}/"
    with Live(
        console=console, auto_refresh=False, get_renderable=lambda: render(view, time.time())
    ) as live:

        async def on_connect(connected: asyncio.Event) -> None:
            await connected.wait()
            view.connection = "connected"
            if subscribed is not None:
                subscribed.set()
            live.refresh()

        async def follow(group: asyncio.TaskGroup) -> None:
            attempt = 0
            while True:
                connected = asyncio.Event()
                waiter = group.create_task(on_connect(connected), name="watch-connected")
                try:
                    async for message in subscribe(
                        broker.host,
                        broker.port,
                        [f"{topics.gate}/#"],
                        ready=connected,
                        username=broker.username,
                        password=broker.password,
                        tls_context=broker.tls_context,
                    ):
                        view.apply(message.topic.removeprefix(prefix), message.payload, time.time())
                        live.refresh()
                except SubscriptionError as exc:
                    attempt = 0 if connected.is_set() else attempt + 1
                    view.connection = f"unavailable ({exc}), retrying"
                    live.refresh()
                finally:
                    waiter.cancel()
                await asyncio.sleep(min(RETRY_CAP_S, RETRY_BASE_S * 2**attempt))

        async def tick() -> None:
            # Ages ("reported 3 s ago") move on even when no message arrives.
            while True:
                await asyncio.sleep(REFRESH_S)
                live.refresh()

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration_s), asyncio.TaskGroup() as group:
                group.create_task(follow(group), name="watch-follow")
                group.create_task(tick(), name="watch-refresh")
    return view


def run_watch(config: Config, duration_s: float | None = None) -> int:
    """``edgegate watch``: until Ctrl-C (a normal way to leave, exit 0) or ``duration_s``.

    Connects as the config says (password, TLS); raises ConfigError when its secrets or key
    material cannot be read.
    """
    broker = BrokerAccess(
        host=config.mqtt.host,
        port=config.mqtt.port,
        username=config.mqtt.username or None,
        password=mqtt_password(config.mqtt),
        tls_context=tls_context(config.mqtt),
    )
    topics = Topics(config.mqtt.topic_prefix, config.gate.site, config.gate.gate_id)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch(broker, topics, Console(), duration_s=duration_s))
    return 0
