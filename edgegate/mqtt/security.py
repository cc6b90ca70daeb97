"""The broker credentials: the MQTT password and the TLS context (mutual TLS).

Owns reading secrets and key material named by ``[mqtt]``, once, at start-up. The password
comes from ``mqtt.password``, else ``mqtt.password_file``, else systemd's
``$CREDENTIALS_DIRECTORY/mqtt-password`` (``LoadCredential=mqtt-password:…``).

Invariants:
- a secret is returned to the caller and never logged, printed or put in an error message;
- a missing or unreadable file, or key material ssl refuses, is a :class:`ConfigError` naming
  the config key and the path — one line for the operator, raised before anything starts;
- TLS verifies the broker (certificate chain and host name) and never goes below TLS 1.2.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path

from edgegate.config import ConfigError, MqttConfig
from edgegate.systemd import credential

PASSWORD_CREDENTIAL = "mqtt-password"


def mqtt_password(config: MqttConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """The broker password, or None when none is configured."""
    if config.password is not None:
        return config.password.get_secret_value()
    key, path = "mqtt.password_file", config.password_file
    if not path:
        provisioned = credential(PASSWORD_CREDENTIAL, environ)
        if provisioned is None:
            return None
        key, path = "$CREDENTIALS_DIRECTORY", str(provisioned)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8") from None
    # Only the line ending goes: a password may begin or end with a space.
    return text.rstrip("\r\n")


def tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    """The client side of (mutual) TLS, or None when ``mqtt.tls`` is off."""
    if not config.tls:
        return None
    if config.key_file and not config.cert_file:
        raise ConfigError("mqtt.key_file: set mqtt.cert_file too (the client certificate)")
    try:
        # No ca_file: trust the system's CA store, as for any public broker.
        context = ssl.create_default_context(cafile=config.ca_file or None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(_load_error("mqtt.ca_file", config.ca_file, exc)) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.cert_file:
        try:
            context.load_cert_chain(
                config.cert_file, config.key_file or None, password=_no_key_password
            )
        except (ssl.SSLError, OSError) as exc:
            key = "mqtt.cert_file / mqtt.key_file"
            raise ConfigError(_load_error(key, config.cert_file, exc)) from None
    return context


def _no_key_password() -> str:
    # Without a callback OpenSSL would prompt for the pass phrase on the terminal and block.
    raise ConfigError(
        "mqtt.key_file: the key is encrypted; give an unencrypted key protected by file "
        "permissions or a systemd credential"
    )


def _load_error(key: str, path: str, exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"{key}: {path}: not usable key material ({exc.reason or exc.strerror})"
    if isinstance(exc, OSError):
        return f"{key}: cannot read {path}: {exc.strerror}"
    return f"{key}: {path}: {exc}"
