"""``edgegate demo``: a whole gate on one machine — reader simulator, broker, daemon, viewer.

Owns the demo's set-up and its script: the first thing a new user runs. Everything the demo
runs is the real thing: the R2000 simulator speaks the wire protocol on a pseudo-terminal,
the daemon opens that pty as its serial port, the whitelist is a signed bundle verified and
applied like any other, decisions go through the durable outbox to a real broker (mosquitto
when installed, else an embedded amqtt), and the screen shows what a subscriber of
``G/decision`` receives. The config is a real file in the state directory, so that
``edgegate watch --config`` (or ``whitelist show``) can look at the running demo gate.

Invariants: the demo touches nothing outside its own temporary state directory (unless
``--state-dir`` names one); Ctrl-C at any moment stops every part cleanly and exits 0; the
script is deterministic — every decision it expects is what the rules decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgegate.app import Daemon
from edgegate.config import Config, load_config
from edgegate.localbroker import LocalBroker
from edgegate.logs import configure_logging
from edgegate.mqtt.publisher import subscribe
from edgegate.mqtt.topics import Topics
from edgegate.whitelist.bundle import (
    TrustedKeys,
    generate_keypair,
    load_private_key,
    sign_body,
    verify_bundle,
)
from edgegate.whitelist.store import WhitelistStore
from simulators.r2000 import R2000Simulator

SITE, GATE = "HAK-CBZ", "G01"
OWNER = "91460000MA5T000001"  # an advanced-tier enterprise
BLACKLISTED_OWNER = "91460000MA5T000666"
DISCREDITED_OWNER = "91460000MA5T000777"  # severely discredited: inspected every time
OUTSIDE, INSIDE = 1, 2
DWELL_S = 0.6
DEPART_MS = 1200
DECISION_TIMEOUT_S = 15.0


def demo_epc(serial: int) -> str:
    """An SGTIN-96 of the PROTOCOLS.md §5 example item with another serial number."""
    return f"3074257BF7194E4{serial:09X}"


LANCOME = [demo_epc(0x1A85 + n) for n in range(4)]
PENDING = [demo_epc(0x2B00 + n) for n in range(2)]
SEIZED = demo_epc(0x3C00)
BLACKLISTED = [demo_epc(0x4D00 + n) for n in range(2)]
DISCREDITED = [demo_epc(0x5E00 + n) for n in range(3)]
RELEASED = [demo_epc(0x6F00 + n) for n in range(2)]
STRANGER = "E2003412DEADBEEF00000001"


@dataclass(frozen=True, slots=True)
class DemoPassage:
    title: str
    epcs: tuple[str, ...]
    inbound: bool
    expect: str


SCRIPT: tuple[DemoPassage, ...] = (
    DemoPassage("inbound pallet: 4 × Lancôme 50 ml, bonded", tuple(LANCOME), True, "pass"),
    DemoPassage("inbound pallet with a stranger tag", (*LANCOME[:2], STRANGER), True, "hold"),
    DemoPassage("inbound goods declared later (先入区后报关)", tuple(PENDING), True, "pass"),
    DemoPassage("the same goods going out before release", tuple(PENDING), False, "hold"),
    DemoPassage("outbound pallet with a seized item", (LANCOME[0], SEIZED), False, "hold"),
    DemoPassage("goods of a blacklisted enterprise", tuple(BLACKLISTED), True, "hold"),
    DemoPassage(
        "goods of a severely discredited enterprise: always inspected",
        tuple(DISCREDITED),
        True,
        "hold",
    ),
    DemoPassage("released goods leave the zone", tuple(RELEASED), False, "pass"),
)


def demo_records(now: datetime) -> list[dict[str, object]]:
    def item(epc: str, status: str, sku: str, owner: str = OWNER) -> dict[str, object]:
        return {
            "type": "item",
            "epc": epc,
            "sku": sku,
            "owner": owner,
            "status": status,
            "directions": ["in", "out"],
            "destinations": [],
            "conversion_ref": None,
            "declare_by": (now + timedelta(days=14)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "valid_until": None,
        }

    def enterprise(owner: str, tier: str, blacklisted: bool = False) -> dict[str, object]:
        return {"type": "enterprise", "owner": owner, "tier": tier, "blacklisted": blacklisted}

    return [
        *(item(epc, "bonded", "SKU-LANCOME-50ML") for epc in LANCOME),
        *(item(epc, "pending_declaration", "SKU-SK2-230ML") for epc in PENDING),
        item(SEIZED, "seized", "SKU-LANCOME-50ML"),
        *(item(epc, "bonded", "SKU-DIOR-100ML", BLACKLISTED_OWNER) for epc in BLACKLISTED),
        *(item(epc, "bonded", "SKU-SHISEIDO-75ML", DISCREDITED_OWNER) for epc in DISCREDITED),
        *(item(epc, "released", "SKU-ESTEE-30ML") for epc in RELEASED),
        enterprise(OWNER, "advanced"),
        enterprise(BLACKLISTED_OWNER, "regular", blacklisted=True),
        enterprise(DISCREDITED_OWNER, "severely_discredited"),
    ]


def signed_demo_bundle(now: datetime) -> tuple[bytes, str]:
    """A signed snapshot of the demo whitelist and the public key that verifies it."""
    private_b64, public_b64 = generate_keypair()
    records = demo_records(now)
    header = {
        "format": "edgegate.whitelist",
        "version": 1,
        "kind": "snapshot",
        "site": SITE,
        "seq": 1,
        "issued_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "issuer": "edgegate demo",
        "count": len(records),
    }
    body = "\n".join(json.dumps(line, ensure_ascii=False) for line in [header, *records])
    return sign_body(body.encode("utf-8"), load_private_key(private_b64)), public_b64


def demo_config_toml(
    state_dir: Path, broker: LocalBroker, port_path: str, public_key: str, seed_file: Path
) -> str:
    """The demo gate's config file (strings quoted as JSON, which TOML reads alike)."""

    def quoted(value: object) -> str:
        return json.dumps(str(value))

    return f"""# edgegate demo gate — written by `edgegate demo`, valid while it runs.
[gate]
site = {quoted(SITE)}
gate_id = {quoted(GATE)}
mode = "portal"
outside_antennas = [{OUTSIDE}]
inside_antennas = [{INSIDE}]

[mqtt]
host = {quoted(broker.host)}
port = {broker.port}

[storage]
state_dir = {quoted(state_dir)}

[whitelist]
trusted_keys = [{quoted(public_key)}]

[passage]
stable_set_ms = 700
depart_ms = {DEPART_MS}

[inspection]
seed_file = {quoted(seed_file)}

[inspection.rates]
# Deterministic for the demo: only the severely discredited enterprise is ever drawn.
advanced = 0.0
certified = 0.0
regular = 0.0
discredited = 0.0
severely_discredited = 1.0

[log]
level = "warning"

[[readers]]
name = "rfid-1"
kind = "r2000"
url = {quoted(port_path)}
antennas = [{OUTSIDE}, {INSIDE}]
"""


def write_demo_config(
    state_dir: Path, broker: LocalBroker, port_path: str, public_key: str
) -> tuple[Path, Config]:
    seed_file = state_dir / "inspection-seed"
    seed_file.write_text(secrets.token_hex(32), encoding="utf-8")
    path = state_dir / "edgegate.toml"
    path.write_text(
        demo_config_toml(state_dir, broker, port_path, public_key, seed_file), encoding="utf-8"
    )
    return path, load_config(path, environ={})


class DemoView:
    """Prints the script and the decisions as a subscriber receives them."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.decisions: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        self.results: list[tuple[DemoPassage, dict[str, object] | None]] = []

    def step(self, number: int, passage: DemoPassage) -> None:
        arrow = "→ in" if passage.inbound else "← out"
        self.console.print(
            f"\n[bold]{number}. {passage.title}[/]  [dim]{arrow}, {len(passage.epcs)} tags, "
            f"expect {passage.expect.upper()}[/]"
        )

    def decision(self, passage: DemoPassage, event: dict[str, object] | None) -> None:
        self.results.append((passage, event))
        if event is None:
            self.console.print(f"   [bold red]no decision within {DECISION_TIMEOUT_S:.0f} s[/]")
            return
        verdict = str(event["decision"])
        tags = event.get("tags")
        count = len(tags) if isinstance(tags, list) else 0
        self.console.print(
            f"   [{_style(verdict)}]{verdict.upper():4}[/]  seq {event['seq']}  direction "
            f"{event['direction']}  {count} tags  passage {str(event['passage_id'])[:13]}…"
        )
        for reason in _reasons(event):
            detail = ", ".join(reason.get("epcs", [])) or reason.get("detail", "")
            self.console.print(f"         [red]{reason['code']}[/] {detail}")

    def summary(self) -> int:
        """The scorecard; returns how many decisions differed from the script."""
        table = Table(title="\nwhat the gate decided", title_justify="left")
        for column in ("#", "pallet", "expected", "decided", "reasons"):
            table.add_column(column)
        mismatches = 0
        for number, (passage, event) in enumerate(self.results, start=1):
            verdict = str(event["decision"]) if event else "none"
            mismatches += verdict != passage.expect
            table.add_row(
                str(number),
                passage.title,
                passage.expect.upper(),
                f"[{_style(verdict)}]{verdict.upper()}[/]",
                ", ".join(reason["code"] for reason in _reasons(event)) if event else "",
            )
        self.console.print(table)
        passed = sum(1 for _, event in self.results if event and event["decision"] == "pass")
        held = sum(1 for _, event in self.results if event and event["decision"] == "hold")
        counts = f"{len(self.results)} pallets, {passed} passed, {held} held"
        self.console.print(
            f"\n[bold]done[/]: {counts} — every decision as expected."
            if not mismatches
            else f"\n[bold red]{mismatches} decision(s) differed from the script[/] ({counts})"
        )
        self.console.print(
            "[dim]Next: `edgegate demo --passages 40` runs long enough to follow with "
            "`edgegate watch`;\ndocs/deployment.md installs a real gate.[/]"
        )
        return mismatches


def _style(verdict: str) -> str:
    return {"pass": "bold green", "hold": "bold red"}.get(verdict, "bold yellow")


def _reasons(event: dict[str, object]) -> list[dict[str, str]]:
    reasons = event.get("reasons")
    return [r for r in reasons if isinstance(r, dict)] if isinstance(reasons, list) else []


async def drive(simulator: R2000Simulator, view: DemoView, passages: Sequence[DemoPassage]) -> None:
    """Move each pallet past the antennas (outside then inside = in) and show its decision."""
    loop = asyncio.get_running_loop()
    left_field: dict[str, float] = {}  # EPC -> when its pallet moved away
    for number, passage in enumerate(passages, start=1):
        # A pallet's tags count again only once they have been out of the field for
        # depart_ms (one pallet = one decision, DESIGN.md §8): wait only when needed.
        back_at = max((left_field.get(epc, 0.0) for epc in passage.epcs), default=0.0)
        await asyncio.sleep(max(0.0, back_at + DEPART_MS / 1000 + 0.3 - loop.time()))
        view.step(number, passage)
        first, second = (OUTSIDE, INSIDE) if passage.inbound else (INSIDE, OUTSIDE)
        for epc in passage.epcs:
            simulator.add_tag(epc, antenna_port=first, rssi_dbm=-58)
        await asyncio.sleep(DWELL_S)
        for epc in passage.epcs:
            simulator.remove_tag(epc)
            simulator.add_tag(epc, antenna_port=second, rssi_dbm=-52)
        await asyncio.sleep(DWELL_S)
        simulator.clear()
        left_field.update((epc, loop.time()) for epc in passage.epcs)
        try:
            async with asyncio.timeout(DECISION_TIMEOUT_S):
                event: dict[str, object] | None = await view.decisions.get()
        except TimeoutError:
            event = None
        view.decision(passage, event)


def _introduce(
    console: Console, endpoint_path: str, broker: LocalBroker, config_path: Path, topics: Topics
) -> None:
    console.print(
        f"[bold]edgegate demo[/] — the customs smart gate {SITE}/{GATE}, on this machine\n"
        "[dim]A dock-door portal with two antennas reads the RFID tags of each pallet that "
        "passes. edgegate\nchecks every item against a signed customs whitelist and decides "
        "PASS or HOLD, with reasons.\nEach decision is committed to a durable outbox, then "
        "published over MQTT: below is what a\nback-office subscriber receives.[/]\n"
    )
    table = Table.grid(padding=(0, 2))
    table.add_row("reader", f"R2000 simulator on {endpoint_path} (antenna 1 outside, 2 inside)")
    table.add_row("broker", f"{broker.kind} on {broker.host}:{broker.port}")
    table.add_row("state", f"{config_path.parent} (config, whitelist, outbox)")
    table.add_row("watch", f"edgegate watch --config {config_path}")
    if broker.kind == "mosquitto":
        table.add_row("", f"mosquitto_sub -p {broker.port} -t '{topics.gate}/#' -v")
    console.print(table)


def _has_broker() -> bool:
    return shutil.which("mosquitto") is not None or importlib.util.find_spec("amqtt") is not None


async def _demo(state_dir: Path, console: Console, passages: Sequence[DemoPassage]) -> int:
    now = datetime.now(UTC)
    bundle, public_key = signed_demo_bundle(now)
    with WhitelistStore.open(state_dir) as store:
        store.apply(
            verify_bundle(bundle, TrustedKeys.from_base64([public_key])),
            site=SITE,
            sha256=hashlib.sha256(bundle).hexdigest(),
            now=now,
        )
    simulator = R2000Simulator()
    endpoint = simulator.open_pty()
    with LocalBroker() as broker, contextlib.closing(endpoint):
        config_path, config = write_demo_config(state_dir, broker, endpoint.path, public_key)
        topics = Topics(config.mqtt.topic_prefix, SITE, GATE)
        _introduce(console, endpoint.path, broker, config_path, topics)
        view = DemoView(console)
        daemon = Daemon(config)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, daemon.request_stop)
        listening = asyncio.Event()

        async def listen() -> None:
            async for message in subscribe(
                broker.host, broker.port, [topics.decision], ready=listening
            ):
                await view.decisions.put(json.loads(message.payload))

        async def script() -> None:
            await daemon.ready.wait()
            await listening.wait()
            try:
                await drive(simulator, view, passages)
            finally:
                daemon.request_stop()

        try:
            async with asyncio.TaskGroup() as group:
                parts = [
                    group.create_task(endpoint.run(), name="r2000-simulator"),
                    group.create_task(listen(), name="viewer"),
                    scripted := group.create_task(script(), name="script"),
                ]
                await daemon.run()
                for task in parts:
                    task.cancel()
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        if scripted.cancelled():
            console.print("\n[yellow]stopped[/]: every part shut down cleanly.")
            return 0
        return 1 if view.summary() else 0


def run_demo(passages: int = 0, keep_state: str | None = None) -> int:
    console = Console()
    if not _has_broker():
        print(
            "edgegate: the demo needs an MQTT broker: install mosquitto "
            "(apt install mosquitto) or the demo extra (pip install 'edgegate[demo]')",
            file=sys.stderr,
        )
        return 2
    configure_logging("warning")
    script = SCRIPT if passages <= 0 else tuple(SCRIPT[i % len(SCRIPT)] for i in range(passages))
    with contextlib.ExitStack() as stack:
        state_dir = (
            Path(keep_state)
            if keep_state
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgegate-demo-")))
        )
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            return asyncio.run(_demo(state_dir, console, script))
        except KeyboardInterrupt:
            # Ctrl-C before the daemon took over SIGINT (while the broker was starting).
            console.print("\n[yellow]stopped[/]")
            return 0
