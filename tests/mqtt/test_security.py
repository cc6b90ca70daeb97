"""Broker credentials: where the password comes from, and TLS key material, failing clearly."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from edgegate.config import ConfigError, MqttConfig
from edgegate.mqtt.security import mqtt_password, tls_context
from tests.mqtt.certs import write_pki

SECRET = "s3cret with spaces "


def test_the_password_comes_from_the_config_then_the_file_then_systemd(tmp_path: Path) -> None:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "mqtt-password").write_text("from-systemd\n")
    (tmp_path / "pw").write_text(SECRET + "\r\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}

    assert mqtt_password(MqttConfig.model_validate({"password": "inline"}), env) == "inline"
    # Only the line ending is removed: spaces belong to the password.
    assert mqtt_password(MqttConfig(password_file=str(tmp_path / "pw")), env) == SECRET
    assert mqtt_password(MqttConfig(), env) == "from-systemd"
    assert mqtt_password(MqttConfig(), {}) is None
    assert mqtt_password(MqttConfig(), {"CREDENTIALS_DIRECTORY": str(tmp_path)}) is None


def test_an_unreadable_password_file_is_a_one_line_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as caught:
        mqtt_password(MqttConfig(password_file=str(missing)))
    assert (
        str(caught.value) == f"mqtt.password_file: cannot read {missing}: No such file or directory"
    )


def test_tls_off_means_no_context_and_on_means_a_verifying_tls12_context(tmp_path: Path) -> None:
    pki = write_pki(tmp_path, client_cn="edgegate-HAK-CBZ-G01")
    assert tls_context(MqttConfig(ca_file=str(pki.ca))) is None
    context = tls_context(
        MqttConfig(tls=True, ca_file=str(pki.ca), cert_file=str(pki.cert), key_file=str(pki.key))
    )
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"ca_file": "{dir}/absent.pem"}, "mqtt.ca_file: cannot read {dir}/absent.pem"),
        ({"ca_file": "{key}"}, "mqtt.ca_file: {key}: not usable key material"),
        ({"cert_file": "{key}", "key_file": "{cert}"}, "mqtt.cert_file / mqtt.key_file: {key}"),
        ({"key_file": "{key}"}, "mqtt.key_file: set mqtt.cert_file too"),
        ({"cert_file": "{cert}", "key_file": "{encrypted}"}, "mqtt.key_file: the key is encrypted"),
    ],
)
def test_bad_key_material_is_a_config_error_naming_the_key(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    pki = write_pki(tmp_path, client_cn="gate")
    names = {
        "dir": str(tmp_path),
        "key": str(pki.key),
        "cert": str(pki.cert),
        "encrypted": str(pki.encrypted_key),
    }
    config = MqttConfig(tls=True, **{k: v.format(**names) for k, v in files.items()})
    with pytest.raises(ConfigError) as caught:
        tls_context(config)
    assert str(caught.value).startswith(message.format(**names))
