"""``edgegate demo``: a whole gate on one machine — reader simulator, broker, daemon, viewer.

Owns the demo's set-up and its script. Everything the demo runs is the real thing: the R2000
simulator speaks the wire protocol on a pseudo-terminal, the daemon opens that pty as its
serial port, the whitelist is a signed bundle verified and applied like any other, decisions
go through the durable outbox to a real broker (mosquitto when installed, else an embedded
amqtt), and the screen shows what a subscriber of ``G/decision`` receives.

Invariants: the demo touches nothing outside its own temporary state directory (unless
``--state-dir`` names one); Ctrl-C at any moment stops every part cleanly and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

from edgegate.app import Daemon
from edgegate.config import Config, parse_config
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
OWNER = "91460000MA5T000001"
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
STRANGER = "E2003412DEADBEEF00000001"


@dataclass(frozen=True, slots=True)
class DemoPassage:
    title: str
    epcs: tuple[str, ...]
    inbound: bool
    expect: str


SCRIPT: tuple[DemoPassage, ...] = (
    DemoPassage("inbound pallet: 4 x Lancôme 50 ml, bonded", tuple(LANCOME), True, "pass"),
    DemoPassage("inbound pallet with a stranger tag", (*LANCOME[:2], STRANGER), True, "hold"),
    DemoPassage("inbound goods declared later (先入区后报关)", tuple(PENDING), True, "pass"),
    DemoPassage("the same goods going out before release", tuple(PENDING), False, "hold"),
    DemoPassage("outbound pallet with a seized item", (LANCOME[0], SEIZED), False, "hold"),
)


def demo_records(now: datetime) -> list[dict[str, object]]:
    def item(epc: str, status: str, sku: str) -> dict[str, object]:
        return {
            "type": "item",
            "epc": epc,
            "sku": sku,
            "owner": OWNER,
            "status": status,
            "directions": ["in", "out"],
            "destinations": [],
            "conversion_ref": None,
            "declare_by": (now + timedelta(days=14)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "valid_until": None,
        }

    return [
        *(item(epc, "bonded", "SKU-LANCOME-50ML") for epc in LANCOME),
        *(item(epc, "pending_declaration", "SKU-SK2-230ML") for epc in PENDING),
        item(SEIZED, "seized", "SKU-LANCOME-50ML"),
        {"type": "enterprise", "owner": OWNER, "tier": "advanced", "blacklisted": False},
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


def demo_config(state_dir: Path, broker: LocalBroker, port_path: str, public_key: str) -> Config:
    return parse_config(
        {
            "gate": {
                "site": SITE,
                "gate_id": GATE,
                "mode": "portal",
                "outside_antennas": [OUTSIDE],
                "inside_antennas": [INSIDE],
            },
            "mqtt": {"host": broker.host, "port": broker.port},
            "storage": {"state_dir": str(state_dir)},
            "whitelist": {"trusted_keys": [public_key]},
            "passage": {"stable_set_ms": 700, "depart_ms": DEPART_MS},
            "log": {"level": "warning"},
            "readers": [
                {"name": "rfid-1", "kind": "r2000", "url": port_path, "antennas": [OUTSIDE, INSIDE]}
            ],
        },
        environ={},
        source="demo config",
    )


class DemoView:
    """Prints the script and the decisions as a subscriber receives them."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.decisions: asyncio.Queue[dict[str, object]] = asyncio.Queue()

    def step(self, number: int, passage: DemoPassage) -> None:
        arrow = "→ in " if passage.inbound else "← out"
        self.console.print(
            f"\n[bold]{number}. {passage.title}[/]  [dim]{arrow}, {len(passage.epcs)} tags, "
            f"expect {passage.expect}[/]"
        )

    def decision(self, event: dict[str, object]) -> None:
        verdict = str(event["decision"])
        style = "bold green" if verdict == "pass" else "bold red"
        tags = event.get("tags")
        count = len(tags) if isinstance(tags, list) else 0
        self.console.print(
            f"   [{style}]{verdict.upper():4}[/]  seq {event['seq']}  direction "
            f"{event['direction']}  {count} tags  passage {str(event['passage_id'])[:13]}…"
        )
        reasons = event.get("reasons")
        for reason in reasons if isinstance(reasons, list) else []:
            epcs = ", ".join(reason.get("epcs", []))
            self.console.print(f"         [red]{reason['code']}[/] {epcs}")


async def drive(simulator: R2000Simulator, view: DemoView, passages: Sequence[DemoPassage]) -> int:
    """Move each pallet past the antennas and wait for its decision; returns mismatches."""
    mismatches = 0
    for number, passage in enumerate(passages, start=1):
        if number > 1:
            # The last pallet moves away: its tags count again only once they have been out
            # of the field for depart_ms (one pallet = one decision, DESIGN.md §8).
            await asyncio.sleep(DEPART_MS / 1000 + 0.3)
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
        try:
            async with asyncio.timeout(DECISION_TIMEOUT_S):
                event = await view.decisions.get()
        except TimeoutError:
            view.console.print(f"   [bold red]no decision within {DECISION_TIMEOUT_S:.0f} s[/]")
            return mismatches + 1
        view.decision(event)
        mismatches += event["decision"] != passage.expect
    return mismatches


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
    with LocalBroker() as broker:
        config = demo_config(state_dir, broker, endpoint.path, public_key)
        topics = Topics(config.mqtt.topic_prefix, SITE, GATE)
        console.print(
            f"[bold]edgegate demo[/] — gate {SITE}/{GATE}\n"
            f"  reader  R2000 simulator on {endpoint.path} (antenna 1 outside, 2 inside)\n"
            f"  broker  {broker.kind} on {broker.host}:{broker.port}\n"
            f"  state   {state_dir}\n"
            f"  watch   mosquitto_sub -p {broker.port} -t '{topics.gate}/#' -v"
        )
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

        async def script() -> int:
            await daemon.ready.wait()
            await listening.wait()
            try:
                return await drive(simulator, view, passages)
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
            console.print("\n[yellow]stopped[/]")
            return 0
        mismatches = scripted.result()
        console.print(
            "\n[bold]done[/]: every decision as expected."
            if not mismatches
            else f"\n[bold red]{mismatches} decision(s) differed from the script[/]"
        )
        return 1 if mismatches else 0


def run_demo(passages: int = 0, keep_state: str | None = None) -> int:
    configure_logging("warning")
    console = Console()
    script = SCRIPT if passages <= 0 else tuple(SCRIPT[i % len(SCRIPT)] for i in range(passages))
    with contextlib.ExitStack() as stack:
        state_dir = (
            Path(keep_state)
            if keep_state
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgegate-demo-")))
        )
        code = asyncio.run(_demo(state_dir, console, script))
    return code
