"""The configuration contract (DESIGN.md §6): TOML file + environment overrides -> frozen models.

Owns parsing and validation of everything an operator can configure. The file is read once,
at the edge; every part of the daemon receives only its own frozen sub-model.

Invariants:
- every model forbids unknown keys, so a typo is an error, never a silently ignored setting;
- every key has a default except ``gate.site``, ``gate.gate_id`` and ``[[readers]]``;
- ``EDGEGATE_<SECTION>__<KEY>`` overrides ``[section] key`` (the value is read as a TOML
  value when it parses as one, e.g. ``1883``, ``true``, ``[1, 2]``; otherwise as a string);
- secrets are ``SecretStr`` and never rendered by :func:`render_effective`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "EDGEGATE_"
DEFAULT_CONFIG_PATH = Path("/etc/edgegate/edgegate.toml")


class ConfigError(Exception):
    """A configuration problem, described in one line fit for an operator."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GateConfig(_Frozen):
    site: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    gate_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    mode: Literal["barrier", "portal"] = "barrier"
    direction: Literal["auto", "in", "out"] = "auto"
    outside_antennas: tuple[int, ...] = ()
    inside_antennas: tuple[int, ...] = ()


class MqttConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    topic_prefix: str = "edgegate/v1"
    client_id: str = ""
    username: str = ""
    password: SecretStr | None = None
    password_file: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    ack: Literal["puback", "app"] = "puback"
    keepalive_s: int = Field(default=30, ge=5, le=3600)


class StorageConfig(_Frozen):
    state_dir: Path = Path("/var/lib/edgegate")


class WhitelistConfig(_Frozen):
    trusted_keys: tuple[str, ...] = ()
    max_age_s: int = Field(default=86400, gt=0)
    stale_policy: Literal["hold", "pass"] = "hold"
    # Bundles from MQTT are held in memory: larger ones (raw or inflated) are rejected as
    # oversized. Bigger snapshots go through `edgegate whitelist import`, which maps files.
    max_bundle_mib: int = Field(default=64, gt=0, le=256)
    # Where bundles are verified and applied and the item index rebuilt (whitelist/applier.py):
    # a child process keeps that work off the GIL the decisions' lookups need.
    apply_in: Literal["process", "thread"] = "process"

    @field_validator("trusted_keys")
    @classmethod
    def _ed25519_keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for key in keys:
            try:
                raw = base64.b64decode(key.strip(), validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 32:
                raise ValueError(f"{key[:12]!r}... is not the base64 of a raw 32-byte Ed25519 key")
        return keys


class PassageConfig(_Frozen):
    stable_set_ms: int = Field(default=800, gt=0)
    max_open_s: float = Field(default=30, gt=0)
    min_rssi_dbm: float = -90
    depart_ms: int = Field(default=2000, ge=0)
    pass_wait_ms: int = Field(default=5000, ge=0)


class InspectionConfig(_Frozen):
    enabled: bool = True
    seed_file: str = ""
    seed_id: str = "s1"
    rates: dict[str, float] = Field(
        default_factory=lambda: {
            "advanced": 0.005,
            "certified": 0.015,
            "regular": 0.025,
            "discredited": 0.80,
            "severely_discredited": 1.0,
        }
    )


class CommandsConfig(_Frozen):
    operator_keys: dict[str, str] = Field(default_factory=dict)
    customs_wait_ms: int = Field(default=0, ge=0)

    @field_validator("operator_keys")
    @classmethod
    def _ed25519_keys(cls, keys: dict[str, str]) -> dict[str, str]:
        for operator, key in keys.items():
            try:
                raw = base64.b64decode(key, validate=True)
            except binascii.Error:
                raw = b""
            if len(raw) != 32:
                raise ValueError(f"{operator}: not the base64 of a raw 32-byte Ed25519 key")
        return keys


class HealthConfig(_Frozen):
    interval_s: float = Field(default=30, gt=0)


class OutboxConfig(_Frozen):
    """The durable outbox's bounds and how its backlog is published (DESIGN.md §10)."""

    max_rows: int = Field(default=200_000, ge=100)
    max_age_s: float = Field(default=30 * 86400, gt=0)
    high_water: int = Field(default=10_000, ge=1)
    replay_rate_per_s: float = Field(default=500, ge=0)
    window: int = Field(default=64, ge=1, le=1024)
    ack_timeout_s: float = Field(default=60, gt=0)


class OutputsConfig(_Frozen):
    """Optional publications: raw reads (debugging) and EPCIS 2.0 events per passage."""

    reads: bool = False
    epcis: bool = False
    read_point: str = ""
    biz_location: str = ""

    @model_validator(mode="after")
    def _epcis_needs_a_read_point(self) -> OutputsConfig:
        if self.epcis and not self.read_point:
            raise ValueError("epcis = true needs read_point (e.g. an SGLN URI for this gate)")
        return self


class LogConfig(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"


class _ReaderBase(_Frozen):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str = Field(min_length=1)
    record: str = ""


class R2000ReaderConfig(_ReaderBase):
    kind: Literal["r2000"]
    baudrate: int = 115200
    antennas: tuple[int, ...] = (1,)
    address: int = Field(default=0xFF, ge=0, le=0xFF)
    # "89" real-time, "8b" session, "8a" fast-switch antenna inventory (PROTOCOLS.md §1).
    # Default: "8b" when `session` is set (how 8B was chosen before this key), else "89".
    inventory: Literal["89", "8b", "8a"] = "89"
    session: int | None = Field(default=None, ge=0, le=3)
    target: Literal["A", "B"] = "A"
    repeat: int = Field(default=1, ge=1, le=255)
    stay: int = Field(default=1, ge=1, le=255)
    switch_interval_ms: int = Field(default=0, ge=0, le=255)
    rf_power_dbm: int | None = Field(default=None, ge=0, le=33)
    antenna_fault: Literal["down", "degrade"] = "down"
    reply_timeout_s: float = Field(default=2.0, gt=0)

    @field_validator("antennas")
    @classmethod
    def _ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(not 1 <= port <= 8 for port in value):
            raise ValueError("antennas must be 1-based ports between 1 and 8")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_inventory(cls, data: object) -> object:
        if isinstance(data, dict) and "inventory" not in data and data.get("session") is not None:
            return {**data, "inventory": "8b"}
        if isinstance(data, dict) and isinstance(data.get("inventory"), str | int):
            return {**data, "inventory": str(data["inventory"]).lower()}  # "8B", 89
        return data

    @model_validator(mode="after")
    def _inventory_fits(self) -> R2000ReaderConfig:
        if self.inventory == "8b" and self.session is None:
            raise ValueError('inventory = "8b" needs session = 0-3')
        if self.inventory != "8b" and self.session is not None:
            raise ValueError(f'session applies only to inventory = "8b", not "{self.inventory}"')
        # 8A names its antennas in four slots of 0-3 (§1); ports 5-8 need 74 + 89 / 8B.
        if self.inventory == "8a" and (
            len(self.antennas) > 4 or any(port > 4 for port in self.antennas)
        ):
            raise ValueError('inventory = "8a" reads at most 4 antennas, ports 1-4')
        return self


class ThingMagicReaderConfig(_ReaderBase):
    kind: Literal["thingmagic"]
    baudrate: int = 115200
    antennas: tuple[int, ...] = (1,)
    region: int | None = Field(default=None, ge=1, le=0xFF)  # None: keep the module's
    read_power_cdbm: int | None = Field(default=None, ge=0, le=0xFFFF)  # None: keep
    on_time_ms: int = Field(default=1000, ge=1, le=0xFFFF)
    read_tid: bool = False
    tid_words: int = Field(default=6, ge=1, le=32)
    reply_timeout_s: float = Field(default=2.0, gt=0)
    keepalive_timeout_s: float = Field(default=3.0, gt=0)

    @field_validator("antennas")
    @classmethod
    def _ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        # The antenna byte of a tag record holds a port per nibble (PROTOCOLS.md §2).
        if not value or any(not 1 <= port <= 15 for port in value):
            raise ValueError("antennas must be 1-based ports between 1 and 15")
        return value

    @model_validator(mode="after")
    def _keepalive_outlasts_a_search_cycle(self) -> ThingMagicReaderConfig:
        # An idle module speaks once per search cycle (a 0400 keep-alive, §2).
        if self.keepalive_timeout_s * 1000 <= self.on_time_ms:
            raise ValueError(
                f"keepalive_timeout_s ({self.keepalive_timeout_s}) must exceed one search"
                f" cycle, on_time_ms = {self.on_time_ms}"
            )
        return self


class ScannerReaderConfig(_ReaderBase):
    kind: Literal["scanner"]
    baudrate: int = 9600
    suffix: Literal["\r", "\r\n", "\n"] = "\r"


_MODBUS_ADDRESS = Field(ge=0, le=0xFFFF)


class GateIoReaderConfig(_ReaderBase):
    kind: Literal["gate-io"]
    baudrate: int = 9600
    # Unit 0 is the Modbus broadcast address, which no device answers: it cannot be polled.
    unit: int = Field(default=1, ge=1, le=247)
    poll_ms: int = Field(default=50, gt=0)
    reply_timeout_s: float = Field(default=0.5, gt=0)
    beam_a: Annotated[int, _MODBUS_ADDRESS] = 0
    beam_b: Annotated[int, _MODBUS_ADDRESS] = 1
    loop: Annotated[int, _MODBUS_ADDRESS] | None = None
    barrier: Annotated[int, _MODBUS_ADDRESS] = 0
    green: Annotated[int, _MODBUS_ADDRESS] = 1
    red: Annotated[int, _MODBUS_ADDRESS] = 2
    buzzer: Annotated[int, _MODBUS_ADDRESS] = 3

    @model_validator(mode="after")
    def _distinct_addresses(self) -> GateIoReaderConfig:
        _require_distinct("input", beam_a=self.beam_a, beam_b=self.beam_b, loop=self.loop)
        _require_distinct(
            "coil", barrier=self.barrier, green=self.green, red=self.red, buzzer=self.buzzer
        )
        return self


class LcusReaderConfig(_ReaderBase):
    """An LCUS USB relay board driving the gate outputs (PROTOCOLS.md §4); channels 1-based."""

    kind: Literal["lcus"]
    baudrate: int = 9600
    barrier: Annotated[int, Field(ge=1, le=255)] | None = None
    green: Annotated[int, Field(ge=1, le=255)] | None = None
    red: Annotated[int, Field(ge=1, le=255)] | None = None
    buzzer: Annotated[int, Field(ge=1, le=255)] | None = None

    @model_validator(mode="after")
    def _distinct_channels(self) -> LcusReaderConfig:
        channels = {
            "barrier": self.barrier,
            "green": self.green,
            "red": self.red,
            "buzzer": self.buzzer,
        }
        if all(channel is None for channel in channels.values()):
            raise ValueError("an lcus board drives at least one of barrier, green, red, buzzer")
        _require_distinct("channel", **channels)
        return self


def _require_distinct(what: str, **wired: int | None) -> None:
    """Two outputs on one coil (or two inputs on one address) is a wiring typo, not a choice."""
    seen: dict[int, str] = {}
    for name, address in wired.items():
        if address is None:
            continue
        if address in seen:
            raise ValueError(f"{seen[address]} and {name} are both {what} {address}")
        seen[address] = name


ReaderConfig = Annotated[
    R2000ReaderConfig
    | ThingMagicReaderConfig
    | ScannerReaderConfig
    | GateIoReaderConfig
    | LcusReaderConfig,
    Field(discriminator="kind"),
]


class Config(_Frozen):
    gate: GateConfig
    mqtt: MqttConfig = MqttConfig()
    storage: StorageConfig = StorageConfig()
    whitelist: WhitelistConfig = WhitelistConfig()
    passage: PassageConfig = PassageConfig()
    inspection: InspectionConfig = InspectionConfig()
    commands: CommandsConfig = CommandsConfig()
    health: HealthConfig = HealthConfig()
    outbox: OutboxConfig = OutboxConfig()
    outputs: OutputsConfig = OutputsConfig()
    log: LogConfig = LogConfig()
    readers: tuple[ReaderConfig, ...]

    @field_validator("readers")
    @classmethod
    def _unique_names(cls, readers: tuple[ReaderConfig, ...]) -> tuple[ReaderConfig, ...]:
        names = [r.name for r in readers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"reader names must be unique (repeated: {', '.join(duplicates)})")
        return readers

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edgegate-{self.gate.site}-{self.gate.gate_id}"


def default_config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$EDGEGATE_CONFIG``, else ``/etc/edgegate/edgegate.toml`` (DESIGN.md §5)."""
    return Path(environ.get("EDGEGATE_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: Path, environ: Mapping[str, str] = os.environ) -> Config:
    """Read, overlay the environment, validate. Raises :class:`ConfigError` with one line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    return parse_config(data, environ, source=str(path))


def parse_config(
    data: dict[str, object], environ: Mapping[str, str] = os.environ, source: str = "config"
) -> Config:
    """Validate an already-parsed TOML document after applying environment overrides."""
    merged = _apply_env(data, environ)
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_error(exc)}") from None


def _apply_env(data: dict[str, object], environ: Mapping[str, str]) -> dict[str, object]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if not section or not key or "__" in key:
            continue
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{name}: [{section}] is not a table and cannot take a key")
        target[key] = _env_value(raw)
    return merged


def _env_value(raw: str) -> object:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    location = ".".join(str(part) for part in first["loc"])
    kind = first["type"]
    if kind == "missing":
        message = f"missing required key {location}"
    elif kind == "extra_forbidden":
        message = f"unknown key {location}"
    else:
        message = f"{location}: {first['msg']} (got {first.get('input')!r})"
    more = len(errors) - 1
    return message + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def render_effective(config: Config) -> str:
    """The effective config as pretty JSON with every secret masked."""
    return json.dumps(config.model_dump(mode="json"), indent=2, ensure_ascii=False)
