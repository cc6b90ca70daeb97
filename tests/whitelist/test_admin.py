"""``edgegate whitelist keygen|sign|verify|import|show`` behind the argument parser."""

from __future__ import annotations

import base64
import gzip
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edgegate.config import WhitelistConfig
from edgegate.gate.model import ItemRecord
from edgegate.whitelist import admin
from edgegate.whitelist.admin import AdminError
from edgegate.whitelist.bundle import key_id, public_key_base64
from edgegate.whitelist.errors import RejectReason
from edgegate.whitelist.index import INDEX_PREFIX
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
    with pytest.raises(ValidationError, match="not the base64 of a raw 32-byte Ed25519 key"):
        WhitelistConfig(trusted_keys=("AAAA",))  # refused when the config is loaded


class RecordingProgress:
    def __init__(self) -> None:
        self.stages: list[str] = []
        self.counts: list[tuple[int, int]] = []
        self.finished = False

    def stage(self, what: str) -> None:
        self.stages.append(what)

    def records(self, done: int, total: int) -> None:
        self.counts.append((done, total))

    def done(self) -> None:
        self.finished = True


def test_a_gzip_bundle_file_is_inflated_aside_and_imported_with_progress(
    tmp_path: Path, forge: Forge
) -> None:
    records = [item(epc(n)) for n in range(1200)]
    bundle = write(tmp_path / "s.bundle.gz", gzip.compress(forge.sign(forge.body(records, seq=3))))
    state = tmp_path / "state"
    progress = RecordingProgress()

    message = admin.import_bundle(bundle, forge.keys, SITE, state, progress=progress)

    assert "applied snapshot seq 3" in message
    assert message.endswith("item index rebuilt")
    assert "item=1200" in message
    assert progress.counts[-1] == (1200, 1200)
    assert [done for done, _ in progress.counts] == sorted(done for done, _ in progress.counts)
    assert progress.finished
    # The inflated copy is gone: only the database and its item index are left.
    left = [p.name for p in state.iterdir() if not p.name.startswith("whitelist.db")]
    assert [name.startswith(INDEX_PREFIX) for name in left] == [True]
    assert admin.verify(bundle, forge.keys).startswith("ok: snapshot")


def test_a_gzip_bomb_file_is_refused_without_filling_the_disk(
    tmp_path: Path, forge: Forge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "FILE_MAX_BYTES", 1 << 20)
    bomb = write(
        tmp_path / "bomb.gz", gzip.compress(forge.sign(forge.body([ITEM])) + bytes(4 << 20))
    )

    with pytest.raises(AdminError, match="oversized") as caught:
        admin.import_bundle(bomb, forge.keys, SITE, tmp_path / "state")
    assert caught.value.reason is RejectReason.OVERSIZED


def test_an_empty_or_missing_bundle_file_is_a_one_line_error(tmp_path: Path, forge: Forge) -> None:
    with pytest.raises(AdminError, match="malformed_signature_line"):
        admin.verify(write(tmp_path / "empty", b""), forge.keys)
    with pytest.raises(AdminError, match="no such file"):
        admin.import_bundle(tmp_path / "absent", forge.keys, SITE, tmp_path / "state")


def test_stats_reports_seq_age_and_counts_per_type_and_status(tmp_path: Path, forge: Forge) -> None:
    state = tmp_path / "state"
    records = [*EXAMPLES, item(epc(1), status="seized"), item(epc(2), status="seized")]
    admin.import_bundle(
        write(tmp_path / "s", forge.sign(forge.body(records, seq=9))), forge.keys, SITE, state
    )

    text = admin.stats(WhitelistConfig(max_age_s=60), state)

    assert "seq         9" in text
    assert "issued_at   2026-11-25T08:00:00Z" in text
    assert "STALE" in text  # issued in the example's past, far beyond 60 s
    assert "item=3" in text
    assert "pass=1" in text
    assert "bonded=1" in text
    assert "seized=2" in text
    assert "snapshot" in text
    assert "item index  3 items in whitelist.items-" in text
    assert "0 changed since" in text


def test_stats_without_a_whitelist_is_an_admin_error(tmp_path: Path) -> None:
    with pytest.raises(AdminError, match="no whitelist yet"):
        admin.stats(WhitelistConfig(), tmp_path)


def test_reindex_without_a_whitelist_is_an_admin_error(tmp_path: Path) -> None:
    with pytest.raises(AdminError, match="no whitelist yet"):
        admin.reindex(tmp_path)
    assert not (tmp_path / "whitelist.db").exists()


def test_the_cli_imports_with_progress_and_prints_stats(tmp_path: Path, forge: Forge) -> None:
    config = tmp_path / "gate.toml"
    config.write_text(
        f'[gate]\nsite = "{SITE}"\ngate_id = "G01"\n'
        f'[storage]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[whitelist]\ntrusted_keys = ["{public_key_base64(forge.private)}"]\n'
        '[[readers]]\nname = "r"\nkind = "r2000"\nurl = "socket://127.0.0.1:9"\n'
    )
    bundle = write(tmp_path / "s", forge.sign(forge.body(EXAMPLES, seq=4)))

    def edgegate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgegate", "whitelist", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    imported = edgegate("import", str(bundle), "--progress")
    assert imported.returncode == 0, imported.stderr
    assert "applied snapshot seq 4" in imported.stdout
    assert "applied 5 / 5 records" in imported.stderr
    stats = edgegate("stats")
    assert stats.returncode == 0, stats.stderr
    assert "seq         4" in stats.stdout
    assert edgegate("import", str(bundle)).returncode == 1  # the same again: a duplicate
    before = sorted((tmp_path / "state").glob(f"{INDEX_PREFIX}*"))
    reindexed = edgegate("reindex")
    assert reindexed.returncode == 0, reindexed.stderr
    assert reindexed.stdout.startswith("item index rebuilt in ")
    after = sorted((tmp_path / "state").glob(f"{INDEX_PREFIX}*"))
    assert len(after) == 1
    assert after != before  # a new build, the old file gone
    assert f": 1 item in {after[0].name}, built " in reindexed.stdout
