"""What ``edgegate whitelist keygen|sign|verify|import|show`` do (DESIGN.md §5), minus parsing.

Owns the file handling around bundles and keys for the command line: reading bundles, bodies
and key files, writing key pairs, and turning every fault a user can cause into an
:class:`AdminError`. The CLI maps arguments onto these functions and prints what they return.

Invariants:
- a user error (missing file, bad key, rejected bundle, busy database) is an
  :class:`AdminError` with a one-line message naming the file; never a traceback;
- ``import_bundle`` does exactly what the daemon does with a bundle: verify against the
  trusted keys, then apply to the store in ``state_dir`` (safe while the daemon runs);
- ``keygen`` never overwrites a file, and the private key file is created mode 0600.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TextIO

from edgegate.config import WhitelistConfig
from edgegate.whitelist.bundle import (
    DEFAULT_MAX_BYTES,
    BundleKind,
    TrustedKeys,
    VerifiedBundle,
    generate_keypair,
    key_id,
    load_private_key,
    public_key_base64,
    sign_body,
    verify_bundle,
)
from edgegate.whitelist.errors import BundleError, RejectReason
from edgegate.whitelist.freshness import format_age, freshness
from edgegate.whitelist.records import RecordType, format_timestamp, normalize_epc, to_json
from edgegate.whitelist.source import BundleFile, SourceError, open_bundle_file
from edgegate.whitelist.store import DB_NAME, IndexState, StoreError, WhitelistStore

# Bundle files may be far larger than MQTT payloads: they are mapped, not read (a 10M-item
# snapshot is ~3.5 GB). The bound stops a gzip bomb from filling the disk.
FILE_MAX_BYTES = 64 * 1024**3


class AdminError(Exception):
    """A user error, described in one line; ``reason`` is set when a bundle was refused."""

    def __init__(self, message: str, reason: RejectReason | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class Progress(Protocol):
    """Hears how a long import goes (``whitelist import`` draws it on the terminal)."""

    def stage(self, what: str) -> None: ...

    def records(self, done: int, total: int) -> None: ...

    def done(self) -> None: ...


class TerminalProgress:
    """One status line on a terminal, redrawn in place at most every ``interval_s``."""

    def __init__(self, stream: TextIO = sys.stderr, interval_s: float = 0.25) -> None:
        self._stream = stream
        self._interval_s = interval_s
        self._started = time.monotonic()
        self._drawn_at = 0.0
        self._width = 0

    def stage(self, what: str) -> None:
        self._draw(f"{what}...")

    def records(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._drawn_at < self._interval_s and done < total:
            return
        elapsed = now - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        percent = 100.0 * done / total if total else 100.0
        self._draw(f"applied {done:,} / {total:,} records ({percent:.0f}%, {rate:,.0f}/s)")

    def done(self) -> None:
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()

    def _draw(self, text: str) -> None:
        self._drawn_at = time.monotonic()
        line = f"edgegate: {text}"
        self._stream.write("\r" + line.ljust(self._width))
        self._stream.flush()
        self._width = max(self._width, len(line))


def keygen(out: Path) -> str:
    """Write ``OUT.key`` (base64 raw seed, mode 0600) and ``OUT.pub`` (base64 raw public key)."""
    private_path, public_path = Path(f"{out}.key"), Path(f"{out}.pub")
    for path in (private_path, public_path):
        if path.exists():
            raise AdminError(f"{path}: already exists; refusing to overwrite a key")
    private_b64, public_b64 = generate_keypair()
    _create(private_path, private_b64 + "\n", mode=0o600)
    try:
        _create(public_path, public_b64 + "\n", mode=0o644)
    except AdminError:
        private_path.unlink()  # no half a key pair left behind
        raise
    kid = key_id(base64.b64decode(public_b64))
    return f"wrote {private_path} and {public_path} (key_id {kid})"


def sign(body_path: Path, key_path: Path) -> bytes:
    """The signed bundle for a body file; only a body that parses whole is ever signed."""
    body = _read(body_path)
    try:
        private = load_private_key(_read(key_path).decode("utf-8", errors="replace"))
    except ValueError as exc:
        raise AdminError(f"{key_path}: {exc}") from None
    bundle = sign_body(body, private)
    try:
        _check_records(verify_bundle(bundle, TrustedKeys.from_base64([public_key_base64(private)])))
    except BundleError as exc:
        raise AdminError(f"{body_path}: not a valid bundle body: {exc}", exc.reason) from None
    return bundle


def verify(bundle_path: Path, keys: TrustedKeys) -> str:
    """A one-line summary of a bundle whose signature, header and every record are valid."""
    try:
        with _opened(bundle_path, spool_dir=None) as source:
            verified = verify_bundle(source.data, keys, max_bytes=FILE_MAX_BYTES)
            _check_records(verified)
            return f"ok: {_describe(verified)}"
    except BundleError as exc:
        raise AdminError(f"{bundle_path}: rejected: {exc}", exc.reason) from None


def import_bundle(
    bundle_path: Path,
    keys: TrustedKeys,
    site: str,
    state_dir: Path,
    progress: Progress | None = None,
) -> str:
    """Verify and apply a bundle to ``state_dir``'s whitelist, as the daemon would.

    The file is mapped, not read (see :mod:`edgegate.whitelist.source`), so a snapshot of
    millions of items imports in bounded memory; ``progress`` hears how far it got.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AdminError(f"{state_dir}: cannot create the directory: {exc.strerror}") from None
    try:
        with _opened(bundle_path, spool_dir=state_dir) as source:
            if progress is not None:
                progress.stage(f"verifying {source.size:,} bytes")
            verified = verify_bundle(source.data, keys, max_bytes=FILE_MAX_BYTES)
            total = verified.header.count
            with WhitelistStore.open(state_dir, bulk=True) as store:
                result = store.apply(
                    verified,
                    site=site,
                    sha256=source.sha256,
                    now=datetime.now(UTC),
                    progress=None if progress is None else lambda n: progress.records(n, total),
                )
                index_note = "; item index rebuilt" if result.index_built else ""
                if result.index_due:
                    if progress is not None:
                        progress.stage("building the item index")
                    index_note = _reindex_after_import(store)
                if progress is not None:
                    progress.stage("checkpointing")
                store.checkpoint()
    except BundleError as exc:
        raise AdminError(f"{bundle_path}: rejected: {exc}", exc.reason) from None
    except StoreError as exc:
        raise AdminError(str(exc)) from None
    finally:
        if progress is not None:
            progress.done()
    previous = "none" if result.previous_seq is None else str(result.previous_seq)
    counts = " ".join(f"{rtype}={result.counts[rtype]}" for rtype in RecordType)
    return (
        f"applied {result.kind} seq {result.seq} for site {result.site} "
        f"(was {previous}; {result.records} records): {counts}{index_note}"
    )


def _reindex_after_import(store: WhitelistStore) -> str:
    """Rebuild the index a delta made due; the delta stays applied if that fails."""
    try:
        store.reindex(now=datetime.now(UTC))
    except (StoreError, OSError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return (
            f"; item index NOT rebuilt ({why}): lookups read the database until the next "
            "bundle or `edgegate whitelist reindex`"
        )
    return "; item index rebuilt"


def show(epc: str, state_dir: Path) -> str | None:
    """The item record the gate would use for ``epc``, as JSON; None when it is unknown."""
    key = normalize_epc(epc.strip())
    if key is None:
        raise AdminError(f"EPC {epc!r} is not hex of whole 16-bit words")
    if not (state_dir / DB_NAME).exists():
        raise AdminError(f"{state_dir / DB_NAME}: no whitelist yet (import a bundle first)")
    try:
        with WhitelistStore.open(state_dir) as store:
            item = store.item(key)
    except StoreError as exc:
        raise AdminError(str(exc)) from None
    return None if item is None else json.dumps(to_json(item), indent=2, ensure_ascii=False)


def reindex(state_dir: Path) -> str:
    """``whitelist reindex``: write a new item index of the items as they stand."""
    if not (state_dir / DB_NAME).exists():
        raise AdminError(f"{state_dir / DB_NAME}: no whitelist yet (import a bundle first)")
    started = time.monotonic()
    try:
        with WhitelistStore.open(state_dir, bulk=True) as store:
            index = store.reindex(now=datetime.now(UTC))
    except StoreError as exc:
        raise AdminError(str(exc)) from None
    return f"item index rebuilt in {time.monotonic() - started:.1f} s: {_index_line(index)}"


def stats(config: WhitelistConfig, state_dir: Path) -> str:
    """``whitelist stats``: what is loaded, how old it is, and counts per type and status."""
    if not (state_dir / DB_NAME).exists():
        raise AdminError(f"{state_dir / DB_NAME}: no whitelist yet (import a bundle first)")
    try:
        with WhitelistStore.open(state_dir) as store:
            state = store.state()
            statuses = store.item_status_counts()
            history = store.history(limit=5)
            index = store.index_state()
    except StoreError as exc:
        raise AdminError(str(exc)) from None
    fresh = freshness(state.issued_at, datetime.now(UTC), config.max_age_s)

    def when(at: datetime | None) -> str:
        return "-" if at is None else format_timestamp(at)

    verdict = "STALE" if fresh.stale else "fresh"
    lines = [
        f"site        {state.site or '-'}",
        f"seq         {'-' if state.seq is None else state.seq}",
        f"issued_at   {when(state.issued_at)}",
        f"applied_at  {when(state.applied_at)}",
        f"age         {format_age(fresh.age_s)} ({verdict}; max_age_s {config.max_age_s}, "
        f"stale_policy {config.stale_policy})",
        "records     " + "  ".join(f"{rtype}={state.counts[rtype]:,}" for rtype in RecordType),
        "items by status  "
        + ("  ".join(f"{status}={n:,}" for status, n in sorted(statuses.items())) or "-"),
        f"item index  {_index_line(index)}",
    ]
    if history:
        lines.append("recent bundles (newest first):")
        lines += [
            f"  seq {h.seq:<8} {h.kind:<8} {h.records:>10,} records  "
            f"applied {format_timestamp(h.applied_at)}  sha256 {h.sha256[:16]}  key {h.key_id}"
            for h in history
        ]
    return "\n".join(lines)


def _index_line(index: IndexState) -> str:
    if index.file is None:
        return "none yet: lookups read the database until the next apply builds one"
    if not index.usable:
        return (
            f"{index.file} is MISSING or DAMAGED: lookups read the database until the next "
            "apply rebuilds it"
        )
    built = (
        "-" if index.built_at is None else format_timestamp(index.built_at.replace(microsecond=0))
    )
    items = "item" if index.records == 1 else "items"
    return (
        f"{index.records:,} {items} in {index.file}, built {built}; "
        f"{index.unindexed:,} changed since (found in an index of their own)"
    )


def keys_from_file(path: Path) -> TrustedKeys:
    """Trusted keys from a ``.pub`` file (one or more base64 raw public keys)."""
    keys = _read(path).decode("utf-8", errors="replace").split()
    if not keys:
        raise AdminError(f"{path}: no public key in the file")
    try:
        return TrustedKeys.from_base64(keys)
    except BundleError as exc:
        raise AdminError(f"{path}: {exc.message}") from None


def keys_from_config(config: WhitelistConfig) -> TrustedKeys:
    """Trusted keys from ``[whitelist] trusted_keys``."""
    if not config.trusted_keys:
        raise AdminError("no trusted keys: set [whitelist] trusted_keys or pass --key")
    try:
        return TrustedKeys.from_base64(config.trusted_keys)
    except BundleError as exc:
        raise AdminError(f"[whitelist] trusted_keys: {exc.message}") from None


def _check_records(bundle: VerifiedBundle) -> None:
    """Parse every record, which is where record faults and a wrong count surface."""
    for _ in bundle.entries():
        pass


def _describe(bundle: VerifiedBundle) -> str:
    h = bundle.header
    base = f" base_seq={h.base_seq}" if h.kind is BundleKind.DELTA else ""
    return (
        f"{h.kind} site={h.site} seq={h.seq}{base} records={h.count} "
        f"issued_at={format_timestamp(h.issued_at)} "
        f"issuer={h.issuer!r} key_id={bundle.key_id}"
    )


@contextmanager
def _opened(path: Path, *, spool_dir: Path | None) -> Iterator[BundleFile]:
    try:
        with open_bundle_file(path, max_bytes=FILE_MAX_BYTES, spool_dir=spool_dir) as source:
            yield source
    except SourceError as exc:
        raise AdminError(str(exc)) from None


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            # One byte beyond the limit tells "too big" without reading a huge file whole.
            data = f.read(DEFAULT_MAX_BYTES + 1)
    except FileNotFoundError:
        raise AdminError(f"{path}: no such file") from None
    except OSError as exc:
        raise AdminError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > DEFAULT_MAX_BYTES:
        raise AdminError(f"{path}: larger than the {DEFAULT_MAX_BYTES}-byte bundle limit")
    return data


def _create(path: Path, text: str, *, mode: int) -> None:
    try:
        # O_EXCL: refuse to overwrite even if the file appeared after the existence check.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise AdminError(f"{path}: already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise AdminError(f"{path}: cannot create: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
