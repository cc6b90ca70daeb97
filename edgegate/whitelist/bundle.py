"""Signed whitelist bundles (DESIGN.md §7): keys, signing, and verification before parsing.

Owns the byte format of a bundle — an optional gzip wrapper, the signature line, the signed
body (header line, then one JSON record per line) — and the Ed25519 keys around it. Pure:
bytes in, values or :class:`BundleError` out; no files, no clock, no logging.

Key files (``edgegate whitelist keygen OUT``): ``OUT.pub`` holds the base64 of the raw 32-byte
public key (the contract's trusted-key form); ``OUT.key`` holds the base64 of the raw 32-byte
private seed on one line — the same shape as the public key, so either pastes into a secret
store or an environment variable unchanged. :func:`load_private_key` also reads an
unencrypted PKCS#8 PEM key, so a back office can sign with a key made by ``openssl genpkey``.

Invariants:
- nothing of a bundle beyond its (length-bounded) signature line is parsed before the
  Ed25519 signature over the body verifies against a trusted key;
- the work done on untrusted input is bounded: at most ``max_bytes`` are accepted or
  inflated from gzip, and the signature line is at most ``SIGNATURE_LINE_MAX`` bytes;
- a :class:`VerifiedBundle` has a trusted signature and a valid header; its records are
  parsed lazily (a snapshot may hold millions) and the iterator raises
  ``count_mismatch`` or a record fault at the point it finds it, so a consumer that applies
  records inside a transaction rolls back instead of committing a partial bundle;
- every failure is a :class:`BundleError`; no other exception escapes for any input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from mmap import mmap
from typing import TypeVar

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgegate.whitelist.errors import BundleError, RejectReason
from edgegate.whitelist.records import (
    Entry,
    ItemRow,
    clean_item_row,
    parse_record,
    parse_timestamp,
)

FORMAT = "edgegate.whitelist"
VERSION = 1
# Bounds what a bundle may occupy in memory once inflated. Ed25519 signs the whole body, so
# the body must be held at once; 512 MiB is about 1.5M full item records.
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
# A signature line is ~140 bytes; anything far longer is refused before JSON parsing.
SIGNATURE_LINE_MAX = 1024
_GZIP_MAGIC = b"\x1f\x8b"
# Inflated output is produced in pieces of at most this size.
INFLATE_STEP = 1024 * 1024

_T = TypeVar("_T")
# What a bundle is read from: bytes (an MQTT payload) or a read-only map of a file.
Buffer = bytes | mmap


class BundleKind(StrEnum):
    SNAPSHOT = "snapshot"
    DELTA = "delta"


def key_id(public_raw: bytes) -> str:
    """The contract's key id: the first 16 lower-case hex digits of SHA-256(raw key)."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class TrustedKeys:
    """The public keys a bundle may be signed with, by key id (several during a rotation)."""

    by_id: Mapping[str, Ed25519PublicKey]

    @staticmethod
    def from_base64(keys: Iterable[str]) -> TrustedKeys:
        """Keys in the contract's form (base64 of the raw 32 bytes); raises on a malformed one."""
        by_id: dict[str, Ed25519PublicKey] = {}
        for text in keys:
            raw = _b64decode(text.strip())
            try:
                public = Ed25519PublicKey.from_public_bytes(raw or b"")
            except ValueError:
                raise BundleError(
                    RejectReason.BAD_TRUSTED_KEY,
                    f"trusted key {text[:12]!r}... is not base64 of a raw 32-byte Ed25519 key",
                ) from None
            by_id[key_id(_public_raw(public))] = public
        return TrustedKeys(by_id)


def generate_keypair() -> tuple[str, str]:
    """A fresh key pair as ``(private seed base64, public key base64)``, each 32 raw bytes."""
    private = Ed25519PrivateKey.generate()
    return _b64(_private_raw(private)), _b64(_public_raw(private.public_key()))


def load_private_key(text: str) -> Ed25519PrivateKey:
    """A private key from a key file: base64 of the raw 32-byte seed, or PKCS#8 PEM."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(stripped.encode(), password=None)
        except (ValueError, TypeError):
            raise ValueError("not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the PEM key is not an Ed25519 key")
        return key
    raw = _b64decode(stripped)
    if raw is None or len(raw) != 32:
        raise ValueError("not base64 of a raw 32-byte Ed25519 private key")
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_key_base64(private: Ed25519PrivateKey) -> str:
    """The trusted-key form (base64 of the raw 32 bytes) of a private key's public half."""
    return _b64(_public_raw(private.public_key()))


def sign_body(body: bytes, private: Ed25519PrivateKey) -> bytes:
    """A bundle: the signature line, ``\\n``, then ``body`` byte for byte."""
    signature = {
        "alg": "ed25519",
        "key_id": key_id(_public_raw(private.public_key())),
        "sig": _b64(private.sign(body)),
    }
    return json.dumps(signature, separators=(",", ":")).encode() + b"\n" + body


@dataclass(frozen=True, slots=True)
class BundleHeader:
    """Body line 1. ``base_seq`` is set exactly for deltas, and then ``seq > base_seq``."""

    kind: BundleKind
    site: str
    seq: int
    base_seq: int | None
    issued_at: datetime
    issuer: str
    count: int


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """A bundle whose signature verified and whose header is valid; records not yet parsed.

    ``data`` is the whole (inflated) bundle; the records start at offset ``records_start``,
    which is body line ``records_line``. Offsets instead of a slice avoid copying a body of
    hundreds of megabytes.
    """

    header: BundleHeader
    key_id: str
    data: Buffer = field(repr=False)
    records_start: int = field(repr=False)
    records_line: int = field(repr=False)

    def entries(self) -> Iterator[Entry]:
        """Parse the records in order (each call starts afresh).

        Raises :class:`BundleError` at the first bad record, as soon as there are more
        records than the header's ``count``, or at the end if there are fewer.
        """
        return self._parsed(_parse_entry)

    def changes(self) -> Iterator[Entry | ItemRow]:
        """Like :meth:`entries`, but clean item upserts come as rows (the import's hot path)."""
        return self._parsed(_parse_change)

    def _parsed(self, parse: Callable[[object, bool], _T]) -> Iterator[_T]:
        delta = self.header.kind is BundleKind.DELTA
        expected = self.header.count
        seen = 0
        decode = _DECODER.decode
        for number, line, _ in _lines(self.data, self.records_start, self.records_line):
            seen += 1
            if seen > expected:
                raise BundleError(
                    RejectReason.COUNT_MISMATCH,
                    f"body line {number}: more records than the header's count {expected}",
                )
            try:
                obj = decode(line)
            except _DECODE_ERRORS as exc:
                raise _malformed(number, exc) from None
            try:
                yield parse(obj, delta)
            except BundleError as exc:
                raise BundleError(exc.reason, f"body line {number}: {exc.message}") from None
        if seen != expected:
            raise BundleError(
                RejectReason.COUNT_MISMATCH,
                f"the body has {seen} records but the header's count is {expected}",
            )


def _parse_entry(obj: object, delta: bool) -> Entry:
    return parse_record(obj, delta=delta)


def _parse_change(obj: object, delta: bool) -> Entry | ItemRow:
    row = clean_item_row(obj, delta=delta) if type(obj) is dict else None
    return row if row is not None else parse_record(obj, delta=delta)


def verify_bundle(
    data: Buffer, keys: TrustedKeys, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> VerifiedBundle:
    """Inflate if gzip, verify the signature over the body, then validate the header.

    ``data`` may be a memory map of a file (see :mod:`edgegate.whitelist.source`); it is
    only ever read, and the returned bundle refers to it rather than copying it.
    """
    if len(data) > max_bytes:
        raise BundleError(
            RejectReason.OVERSIZED, f"bundle of {len(data)} bytes exceeds {max_bytes}"
        )
    if is_gzip(data):
        data = b"".join(inflate([data], max_bytes))
    newline = data.find(b"\n", 0, SIGNATURE_LINE_MAX + 1)
    if newline < 0:
        raise BundleError(
            RejectReason.MALFORMED_SIGNATURE_LINE,
            f"no signature line: no newline in the first {SIGNATURE_LINE_MAX} bytes",
        )
    kid, signature = _signature_line(data[:newline])
    public = keys.by_id.get(kid)
    if public is None:
        raise BundleError(RejectReason.UNKNOWN_KEY, f"key_id {kid[:32]!r} is not a trusted key")
    body_start = newline + 1
    # A memoryview: the signed body is verified in place, never copied. Released at once,
    # so that a memory-mapped bundle can be closed afterwards.
    with memoryview(data) as whole, whole[body_start:] as body:
        try:
            public.verify(signature, body)
        except InvalidSignature:
            raise BundleError(
                RejectReason.BAD_SIGNATURE, f"the body does not match its signature (key {kid})"
            ) from None
    first = next(_lines(data, body_start, 1), None)
    if first is None:
        raise BundleError(RejectReason.BAD_HEADER, "the body is empty: no header line")
    number, line, records_start = first
    header = _header(_json_line(line, number))
    return VerifiedBundle(header, kid, data, records_start, number + 1)


def is_gzip(data: Buffer) -> bool:
    return data[:2] == _GZIP_MAGIC


def inflate(chunks: Iterable[Buffer], max_bytes: int) -> Iterator[bytes]:
    """Inflate a gzip stream of one or more members, fed in chunks, in bounded pieces.

    Refuses (``oversized``) to produce more than ``max_bytes`` in all, and never holds more
    than ``INFLATE_STEP`` bytes of output at once, however well a bomb compresses;
    ``bad_gzip`` for a corrupt or truncated stream, or bytes after it that are no member.
    """
    inflater = zlib.decompressobj(wbits=31)  # 31: gzip wrapper, max window
    fresh = True  # nothing fed to this member's inflater yet
    size = 0
    try:
        for chunk in chunks:
            data = bytes(chunk)
            while data:
                fresh = False
                out = inflater.decompress(data, INFLATE_STEP)
                while True:
                    size += len(out)
                    if size > max_bytes:
                        raise BundleError(
                            RejectReason.OVERSIZED,
                            f"bundle inflates to more than {max_bytes} bytes",
                        )
                    if out:
                        yield out
                    # A full piece may leave output buffered though all input was taken.
                    if len(out) < INFLATE_STEP or inflater.eof or inflater.unconsumed_tail:
                        break
                    out = inflater.decompress(b"", INFLATE_STEP)
                if inflater.eof:  # another member may follow
                    data = inflater.unused_data
                    inflater = zlib.decompressobj(wbits=31)
                    fresh = True
                else:
                    data = inflater.unconsumed_tail
    except zlib.error as exc:
        raise BundleError(RejectReason.BAD_GZIP, f"corrupt gzip stream: {exc}") from None
    if not fresh:
        raise BundleError(RejectReason.BAD_GZIP, "gzip stream is truncated")


def _signature_line(line: bytes) -> tuple[str, bytes]:
    try:
        obj = _DECODER.decode(line)
    except _DECODE_ERRORS:
        obj = None
    if not isinstance(obj, dict):
        raise BundleError(
            RejectReason.MALFORMED_SIGNATURE_LINE, "line 1 is not a JSON signature object"
        )
    alg, kid, sig = obj.get("alg"), obj.get("key_id"), obj.get("sig")
    if alg != "ed25519":
        raise BundleError(RejectReason.MALFORMED_SIGNATURE_LINE, f'alg {alg!r} is not "ed25519"')
    if not isinstance(kid, str) or not isinstance(sig, str):
        raise BundleError(RejectReason.MALFORMED_SIGNATURE_LINE, "key_id and sig must be strings")
    signature = _b64decode(sig)
    if signature is None or len(signature) != 64:
        raise BundleError(
            RejectReason.MALFORMED_SIGNATURE_LINE, "sig is not base64 of a 64-byte signature"
        )
    return kid, signature


def _header(obj: object) -> BundleHeader:
    def bad(why: str) -> BundleError:
        return BundleError(RejectReason.BAD_HEADER, why)

    if not isinstance(obj, dict):
        raise bad("the header is not a JSON object")
    if obj.get("format") != FORMAT:
        raise bad(f"format {obj.get('format')!r} is not {FORMAT!r}")
    version = obj.get("version")
    if _natural(version) != VERSION:
        raise bad(f"version {version!r} is not supported (only {VERSION})")
    raw_kind = obj.get("kind")
    if raw_kind not in (BundleKind.SNAPSHOT, BundleKind.DELTA):
        raise bad(f'kind {raw_kind!r} is not "snapshot" or "delta"')
    kind = BundleKind(raw_kind)
    site = obj.get("site")
    if not isinstance(site, str) or not site:
        raise bad("site must be a non-empty string")
    seq = _natural(obj.get("seq"))
    if seq is None:
        raise bad(f"seq {obj.get('seq')!r} must be an integer >= 0")
    base_seq = _natural(obj.get("base_seq"))
    if kind is BundleKind.DELTA:
        if base_seq is None:
            raise bad(f"a delta needs base_seq >= 0 (got {obj.get('base_seq')!r})")
        if seq <= base_seq:
            raise bad(f"a delta's seq {seq} must be greater than its base_seq {base_seq}")
    elif obj.get("base_seq") is not None:
        raise bad("a snapshot has no base_seq")
    raw_issued = obj.get("issued_at")
    issued_at = parse_timestamp(raw_issued) if isinstance(raw_issued, str) else None
    if issued_at is None:
        raise bad(f"issued_at {raw_issued!r} is not an RFC 3339 UTC time ending in Z")
    issuer = obj.get("issuer")
    if not isinstance(issuer, str):
        raise bad("issuer must be a string")
    count = _natural(obj.get("count"))
    if count is None:
        raise bad(f"count {obj.get('count')!r} must be an integer >= 0")
    return BundleHeader(kind, site, seq, base_seq, issued_at, issuer, count)


def _lines(data: Buffer, start: int, first_number: int) -> Iterator[tuple[int, bytes, int]]:
    """Non-blank lines of ``data[start:]``: (line number, line, offset after the line)."""
    number = first_number
    end = len(data)
    while start < end:
        stop = data.find(b"\n", start)
        if stop < 0:
            stop = end  # the final newline is optional
        line = data[start:stop]
        if line.strip():
            yield number, line, stop + 1
        number += 1
        start = stop + 1


def _json_line(line: bytes, number: int) -> object:
    try:
        return _DECODER.decode(line)
    except _DECODE_ERRORS as exc:
        raise _malformed(number, exc) from None


def _malformed(number: int, exc: Exception) -> BundleError:
    return BundleError(
        RejectReason.MALFORMED_JSON, f"body line {number}: not a UTF-8 JSON value ({exc})"
    )


# Strict RFC 8259 JSON from UTF-8 bytes: no NaN or Infinity, no number that overflows to
# infinity, no lone surrogate (which no UTF-8 store could hold). One decoder for every line,
# and msgspec's rather than the json module's: decoding is most of the cost of parsing a
# multi-million-record snapshot, and msgspec's is about five times faster.
_DECODER = msgspec.json.Decoder()
# Invalid UTF-8 inside a string is a UnicodeDecodeError (a ValueError); very deep nesting
# is a RecursionError.
_DECODE_ERRORS = (msgspec.MsgspecError, ValueError, RecursionError)


def _natural(value: object) -> int | None:
    """``value`` if it is a JSON integer >= 0 (``true`` is not 1 here), else None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        return None


def _private_raw(private: Ed25519PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _public_raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
