"""Bundles from files, for ``edgegate whitelist verify|import``: mapped, never read whole.

Owns turning a bundle file into the buffer :func:`bundle.verify_bundle` checks. A snapshot
of ten million items is several gigabytes and Ed25519 signs the body as one message, so the
body must be addressable at once: the file is memory-mapped read-only (the kernel pages it
in from the page cache; nothing is copied onto the heap). A gzip file is first inflated, in
bounded pieces, into an unlinked temporary file, and that file is mapped.

Invariants:
- the inflated size is bounded (``max_bytes``), so a gzip bomb fills neither memory nor
  the disk; the temporary file disappears however the block ends;
- ``sha256`` is the digest of the file as received (compressed, if it was), the value
  ``history`` keeps and the daemon computes for the same bytes from MQTT;
- the map is closed when the block ends; nothing may keep a view of it beyond that.
"""

from __future__ import annotations

import hashlib
import mmap
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edgegate.whitelist.bundle import Buffer, inflate, is_gzip

# Files are read in pieces of this size (hashing, inflating).
READ_STEP = 4 * 1024 * 1024


class SourceError(Exception):
    """The file cannot be read (one line naming it)."""


@dataclass(frozen=True, slots=True)
class BundleFile:
    data: Buffer  # the bundle, inflated if it was gzip
    sha256: str  # of the file as received
    size: int  # of the file as received


@contextmanager
def open_bundle_file(path: Path, *, max_bytes: int, spool_dir: Path | None) -> Iterator[BundleFile]:
    """Map ``path`` (inflating a gzip file into ``spool_dir`` first) for the block's length.

    Raises :class:`SourceError` for an unreadable file and
    :class:`~edgegate.whitelist.errors.BundleError` (``oversized``, ``bad_gzip``) for one
    that can be no bundle.
    """
    with ExitStack() as stack:
        try:
            raw = stack.enter_context(path.open("rb"))
            size = _size(raw)
            data = stack.enter_context(_mapped(raw, size))
            digest = hashlib.sha256(data).hexdigest()  # releases the GIL; no copy
        except FileNotFoundError:
            raise SourceError(f"{path}: no such file") from None
        except OSError as exc:
            raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if is_gzip(data):
            where = spool_dir or Path(tempfile.gettempdir())
            try:
                spool = stack.enter_context(tempfile.TemporaryFile(dir=where))
                pieces = (data[at : at + READ_STEP] for at in range(0, size, READ_STEP))
                for piece in inflate(pieces, max_bytes):
                    spool.write(piece)
                spool.flush()
                data = stack.enter_context(_mapped(spool, spool.tell()))
            except OSError as exc:
                raise SourceError(
                    f"{path}: cannot inflate into {where}: {exc.strerror or exc}"
                ) from None
        yield BundleFile(data=data, sha256=digest, size=size)


def _size(handle: BinaryIO) -> int:
    handle.seek(0, 2)
    return handle.tell()


@contextmanager
def _mapped(handle: BinaryIO, size: int) -> Iterator[Buffer]:
    if size == 0:  # an empty file cannot be mapped; it is simply no bundle
        yield b""
        return
    mapped = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ)
    try:
        # Read once from start to end: let the kernel read ahead and drop pages behind.
        mapped.madvise(mmap.MADV_SEQUENTIAL)
        yield mapped
    finally:
        mapped.close()
