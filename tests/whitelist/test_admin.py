"""``edgegate whitelist keygen|sign|verify|import|show`` behind the argument parser."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgegate.config import WhitelistConfig
from edgegate.gate.model import ItemRecord
from edgegate.whitelist import admin
from edgegate.whitelist.admin import AdminError
from edgegate.whitelist.bundle import key_id
from edgegate.whitelist.errors import RejectReason
from edgegate.whitelist.records import to_json
from edgegate.whitelist.store import DB_NAME

from .support import EPC, EXAMPLES, ITEM, SITE, Forge, epc, item


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_keygen_sign_verify_import_show_round_trip(tmp_path: Path, forge: Forge) -> None:
    message = admin.keygen(tmp_path / "gate")
    private, public = tmp_path / "gate.key", tmp_path / "gate.pub"
    public_raw = base64.b64decode(public.read_text())
    assert len(public_raw) == 32
    assert len(base64.b64decode(private.read_text())) == 32
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert key_id(public_raw) in message

    body = write(tmp_path / "body.jsonl", forge.body(EXAMPLES, seq=7))
    bundle = write(tmp_path / "bundle", admin.sign(body, private))
    keys = admin.keys_from_file(public)

    summary = admin.verify(bundle, keys)
    assert summary.startswith("ok: snapshot")
    assert all(
        part in summary for part in (f"site={SITE}", "seq=7", "records=5", key_id(public_raw))
    )
    assert "\n" not in summary

    state = tmp_path / "state"
    imported = admin.import_bundle(bundle, keys, SITE, state)
    assert "applied snapshot seq 7" in imported
    assert "item=1" in imported

    shown = admin.show(EPC.lower(), state)
    assert shown is not None
    expected = next(forge.snapshot([ITEM]).entries())
    assert isinstance(expected, ItemRecord)
    assert json.loads(shown) == to_json(expected)
    assert admin.show(epc(404), state) is None


@pytest.mark.parametrize("existing", ["gate.key", "gate.pub"])
def test_keygen_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious\n")

    with pytest.raises(AdminError, match="refusing to overwrite"):
        admin.keygen(tmp_path / "gate")
    assert (tmp_path / existing).read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]


def test_keygen_into_a_missing_directory_is_an_admin_error(tmp_path: Path) -> None:
    with pytest.raises(AdminError, match="cannot create"):
        admin.keygen(tmp_path / "nowhere" / "gate")


def test_sign_accepts_a_pem_key_and_refuses_an_invalid_body(tmp_path: Path, forge: Forge) -> None:
    pem = forge.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key = write(tmp_path / "k.pem", pem)
    good = write(tmp_path / "good", forge.body([ITEM]))
    bad = write(tmp_path / "bad", forge.body([ITEM, item(epc(1), status="lost")]))

    assert admin.sign(good, key) == forge.sign(good.read_bytes())
    with pytest.raises(AdminError, match="body line 3") as caught:
        admin.sign(bad, key)
    assert caught.value.reason is RejectReason.BAD_FIELD


def test_sign_with_a_bad_key_file_is_an_admin_error(tmp_path: Path, forge: Forge) -> None:
    body = write(tmp_path / "body", forge.body([ITEM]))

    with pytest.raises(AdminError, match=r"k\.key: not base64"):
        admin.sign(body, write(tmp_path / "k.key", b"garbage\n"))
    with pytest.raises(AdminError, match="no such file"):
        admin.sign(body, tmp_path / "absent.key")


def test_verify_names_the_reason_in_one_line(tmp_path: Path, forge: Forge) -> None:
    tampered = bytearray(forge.sign(forge.body([ITEM])))
    tampered[-5] ^= 0x20
    bundle = write(tmp_path / "b", bytes(tampered))

    with pytest.raises(AdminError) as caught:
        admin.verify(bundle, forge.keys)
    assert caught.value.reason is RejectReason.BAD_SIGNATURE
    assert str(caught.value).startswith(f"{bundle}: rejected: bad_signature")
    assert "\n" not in str(caught.value)


def test_verify_parses_every_record(tmp_path: Path, forge: Forge) -> None:
    body = forge.body([ITEM, item(epc(1))], count=3)
    bundle = write(tmp_path / "b", forge.sign(body))

    with pytest.raises(AdminError, match="count_mismatch"):
        admin.verify(bundle, forge.keys)


def test_import_refuses_a_gap_naming_both_seqs(tmp_path: Path, forge: Forge) -> None:
    state = tmp_path / "state"
    admin.import_bundle(
        write(tmp_path / "s", forge.sign(forge.body([ITEM], seq=3))), forge.keys, SITE, state
    )
    delta = write(tmp_path / "d", forge.sign(forge.body([], kind="delta", seq=9, base_seq=8)))

    with pytest.raises(AdminError, match=r"base_seq 8 .* seq 3") as caught:
        admin.import_bundle(delta, forge.keys, SITE, state)
    assert caught.value.reason is RejectReason.GAP


def test_import_refuses_another_site(tmp_path: Path, forge: Forge) -> None:
    bundle = write(tmp_path / "s", forge.sign(forge.body([ITEM])))

    with pytest.raises(AdminError, match="wrong_site"):
        admin.import_bundle(bundle, forge.keys, "OTHER-SITE", tmp_path / "state")


def test_show_without_a_whitelist_or_with_a_bad_epc(tmp_path: Path) -> None:
    with pytest.raises(AdminError, match="no whitelist yet"):
        admin.show(EPC, tmp_path)
    assert not (tmp_path / DB_NAME).exists()
    with pytest.raises(AdminError, match="not hex"):
        admin.show("XYZ", tmp_path)


def test_trusted_keys_from_files_and_config(tmp_path: Path, forge: Forge) -> None:
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    ours = forge.private.public_key().public_bytes_raw()
    both = "\n".join(base64.b64encode(k).decode() for k in (ours, other))

    from_file = admin.keys_from_file(write(tmp_path / "keys.pub", both.encode()))
    from_config = admin.keys_from_config(WhitelistConfig(trusted_keys=tuple(both.split())))
    assert set(from_file.by_id) == set(from_config.by_id) == {key_id(ours), key_id(other)}

    with pytest.raises(AdminError, match="no public key"):
        admin.keys_from_file(write(tmp_path / "empty.pub", b"\n"))
    with pytest.raises(AdminError, match="not base64"):
        admin.keys_from_file(write(tmp_path / "bad.pub", b"nope"))
    with pytest.raises(AdminError, match="no trusted keys"):
        admin.keys_from_config(WhitelistConfig())
    with pytest.raises(AdminError, match=r"\[whitelist\] trusted_keys"):
        admin.keys_from_config(WhitelistConfig(trusted_keys=("AAAA",)))
