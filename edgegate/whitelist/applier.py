"""Where bundles are verified and applied: on a worker thread, or in a process of their own.

Owns the seam between the sync (which decides *what* to apply, in order) and the store's
write path (verify the signature, apply in one transaction, rebuild the item index).

Why a process: verifying and applying a delta, and above all rebuilding the item index,
is Python work, and a thread doing it shares the GIL with the lookups of every passage.
Measured at 10M items on 2 cores: a 1,000-tag lookup takes twice as long while a delta
applies on a thread (p50 3.6 → 7.2 ms) and during the minutes of an index rebuild, which
itself takes three times as long (163 s instead of ~55 s) because it keeps giving way to
the lookups. In a child process (``python -m edgegate.whitelist.applier``) both run on the
other core: lookups keep their speed, and the daemon's store sees each commit through
SQLite (WAL lets the two processes share the file; see store.py).

Protocol between the daemon and the child, over the child's stdin and stdout: a frame is
an 8-byte header (JSON length, payload length; 32-bit big-endian each), the JSON, then the
payload (the bundle's bytes, or nothing). Requests: ``{"op": "apply", "sha256", "site",
"trusted_keys", "max_bundle_bytes", "now"}`` with the bundle as payload, and ``{"op":
"reindex", "now"}``. Exactly one response a request: ``applied`` or ``indexed`` with the
result, ``rejected`` (reason, message), ``store_error``, ``stopped`` or ``failed``.

Invariants:
- one request at a time, answered in order; the child holds no state between requests
  but its open store (keys, site and limits come with every apply, so a key rotation
  takes effect with the next bundle);
- the child never outlives the daemon: it exits at end of input, and on SIGTERM (sent when
  a request is cancelled, or by ``aclose``) stops an index build within 256 rows, rolls
  back and exits; what it was applying is either committed or not at all (SQLite);
- no bundle is lost to the child: a request it cannot take (it will not start, or dies
  with it) is served by the fallback, a :class:`ThreadApplier` (a bundle the child had
  committed before dying is then a silent duplicate), and the next request starts a new
  child; after ``GIVE_UP_AFTER`` such failures in a row, the fallback serves every request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import struct
import sys
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import BinaryIO, Literal, Protocol

import structlog

from edgegate.whitelist.bundle import BundleKind, TrustedKeys, verify_bundle
from edgegate.whitelist.errors import BundleError, RejectReason
from edgegate.whitelist.index import IndexBuildStoppedError
from edgegate.whitelist.records import RecordType
from edgegate.whitelist.store import (
    REINDEX_AFTER,
    ApplyResult,
    IndexState,
    StoreError,
    WhitelistStore,
)

_FRAME = struct.Struct(">II")  # JSON length, payload length
STOP_TIMEOUT_S = 10.0  # a child told to stop gets this long before it is killed
GIVE_UP_AFTER = 3  # requests in a row the child failed, after which it is not tried again

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ApplyRequest:
    """What an apply needs besides the bundle: the sync's settings as of now."""

    site: str
    trusted_keys: tuple[str, ...]
    max_bundle_bytes: int
    now: datetime


class BundleApplier(Protocol):
    """Verifies and applies bundles, and rebuilds the item index, for the sync."""

    async def apply(self, payload: bytes, sha256: str, request: ApplyRequest) -> ApplyResult:
        """Raises BundleError (refused), StoreError (retry later) or another error."""
        ...

    async def reindex(self, now: datetime) -> IndexState: ...

    async def aclose(self) -> None: ...

    @property
    def applied_in(self) -> Literal["process", "thread"]:
        """Where the next bundle will be applied (for health)."""
        ...

    @property
    def fallbacks(self) -> int:
        """Requests a thread served because the apply process could not (for health)."""
        ...


class WorkerDiedError(Exception):
    """The apply process would not start, or died while it had a request (killed, out of
    memory): the fallback serves that request."""


def verify_and_apply(
    store: WhitelistStore,
    payload: bytes,
    sha256: str,
    request: ApplyRequest,
    stop: threading.Event | None = None,
) -> ApplyResult:
    """Verify ``payload`` (signature first) and apply it: the one write path of both kinds."""
    keys = TrustedKeys.from_base64(request.trusted_keys)
    verified = verify_bundle(payload, keys, max_bytes=request.max_bundle_bytes)
    return store.apply(verified, site=request.site, sha256=sha256, now=request.now, stop=stop)


class ThreadApplier:
    """Applies on a worker thread of this process (tests, and ``apply_in = "thread"``)."""

    def __init__(self, store: WhitelistStore) -> None:
        self._store = store

    async def apply(self, payload: bytes, sha256: str, request: ApplyRequest) -> ApplyResult:
        stop = threading.Event()
        try:
            return await asyncio.to_thread(
                verify_and_apply, self._store, payload, sha256, request, stop
            )
        except asyncio.CancelledError:
            stop.set()  # a snapshot's index build ends within 256 rows; the apply rolls back
            raise

    async def reindex(self, now: datetime) -> IndexState:
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self._store.reindex, now=now, stop=stop)
        except asyncio.CancelledError:
            stop.set()
            raise

    async def aclose(self) -> None:
        return None

    @property
    def applied_in(self) -> Literal["process", "thread"]:
        return "thread"

    @property
    def fallbacks(self) -> int:
        return 0


class ProcessApplier:
    """Applies in a child process, started at the first request and after one died;
    ``fallback`` serves what the child cannot (see the invariants)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        fallback: BundleApplier,
        reindex_after: int = REINDEX_AFTER,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        python: str = sys.executable,
    ) -> None:
        self._fallback = fallback
        self._failures = 0  # requests in a row the child failed
        self._fallbacks = 0  # requests the fallback served
        self._command = [
            python,
            "-m",
            "edgegate.whitelist.applier",
            "--state-dir",
            str(state_dir),
            "--reindex-after",
            str(reindex_after),
        ]
        self._stop_timeout_s = stop_timeout_s
        self._child: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.started = 0  # children started so far

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    @property
    def alive(self) -> bool:
        """Whether a child is running (it is started again by the next request if not)."""
        return self._child is not None and self._child.returncode is None

    @property
    def fallbacks(self) -> int:
        """Requests the fallback served because the child could not (for health)."""
        return self._fallbacks

    @property
    def applied_in(self) -> Literal["process", "thread"]:
        return "thread" if self.gave_up else "process"

    @property
    def gave_up(self) -> bool:
        """Whether the child failed GIVE_UP_AFTER requests in a row: the fallback serves all."""
        return self._failures >= GIVE_UP_AFTER

    async def apply(self, payload: bytes, sha256: str, request: ApplyRequest) -> ApplyResult:
        header = {
            "op": "apply",
            "sha256": sha256,
            "site": request.site,
            "trusted_keys": list(request.trusted_keys),
            "max_bundle_bytes": request.max_bundle_bytes,
            "now": request.now.isoformat(),
        }
        answer = await self._child_answer(header, payload)
        if answer is None:
            return await self._fallback.apply(payload, sha256, request)
        return _result_from_json(_unwrapped(answer, "applied"))

    async def reindex(self, now: datetime) -> IndexState:
        answer = await self._child_answer({"op": "reindex", "now": now.isoformat()})
        if answer is None:
            return await self._fallback.reindex(now)
        return _index_from_json(_unwrapped(answer, "indexed"))

    async def _child_answer(
        self, header: Mapping[str, object], payload: bytes = b""
    ) -> dict[str, object] | None:
        """The child's answer, or None when the fallback must serve the request."""
        if not self.gave_up:
            try:
                answer = await self._call(header, payload)
            except WorkerDiedError as exc:
                self._failures += 1
                log.error(
                    "whitelist.apply_process_failed",
                    error=str(exc),
                    failures_in_a_row=self._failures,
                    from_now_on="in the daemon" if self.gave_up else "a new process",
                )
            else:
                self._failures = 0
                return answer
        self._fallbacks += 1
        return None

    async def aclose(self) -> None:
        """Stop the child (if any) and wait for it: SIGTERM, then SIGKILL after the timeout."""
        child, self._child = self._child, None
        if child is None or child.returncode is not None:
            return
        if child.stdin is not None:
            child.stdin.close()  # an idle child exits at end of input
        child.terminate()
        try:
            async with asyncio.timeout(self._stop_timeout_s):
                await child.wait()
        except TimeoutError:
            child.kill()
            await child.wait()

    async def _call(self, header: Mapping[str, object], payload: bytes = b"") -> dict[str, object]:
        async with self._lock:
            child = await self._running()
            assert child.stdin is not None
            assert child.stdout is not None
            data = json.dumps(header).encode()
            try:
                child.stdin.write(_FRAME.pack(len(data), len(payload)) + data)
                child.stdin.write(payload)  # not concatenated: a bundle may be 64 MiB
                await child.stdin.drain()
                raw = await _read_frame(child.stdout)
            except asyncio.CancelledError:
                # Mid-request: the child stops what it is doing and exits (aclose, or the
                # next request, waits for it); its closed stdin marks it as stopping.
                child.stdin.close()
                child.terminate()
                raise
            except (ConnectionError, asyncio.IncompleteReadError):
                code = await child.wait()
                self._child = None
                raise WorkerDiedError(
                    f"the whitelist apply process exited with code {code} during {header['op']}"
                ) from None
        answer: dict[str, object] = json.loads(raw)
        return answer

    async def _running(self) -> asyncio.subprocess.Process:
        child = self._child
        if child is not None and child.returncode is None and not _terminating(child):
            return child
        if child is not None:
            await self.aclose()
        try:
            self._child = await asyncio.create_subprocess_exec(
                *self._command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                # stderr inherited: the child's tracebacks go where the daemon's logs go.
            )
        except OSError as exc:
            raise WorkerDiedError(f"cannot start {self._command[0]}: {exc}") from None
        self.started += 1
        return self._child


def _terminating(child: asyncio.subprocess.Process) -> bool:
    # asyncio keeps no "terminate() was called" state; a closed stdin marks it (see _call).
    return child.stdin is None or child.stdin.is_closing()


async def _read_frame(stream: asyncio.StreamReader) -> bytes:
    json_len, payload_len = _FRAME.unpack(await stream.readexactly(_FRAME.size))
    data = await stream.readexactly(json_len)
    await stream.readexactly(payload_len)  # responses carry none
    return data


def _unwrapped(answer: Mapping[str, object], expected: str) -> Mapping[str, object]:
    """The result in ``answer``, or the error it names, raised as the in-process path would."""
    body = answer.get(expected)
    if isinstance(body, dict):
        return body
    rejected = answer.get("rejected")
    if isinstance(rejected, dict):
        raise BundleError(RejectReason(str(rejected["reason"])), str(rejected["message"]))
    if "store_error" in answer:
        raise StoreError(str(answer["store_error"]))
    if "stopped" in answer:
        raise IndexBuildStoppedError(str(answer["stopped"]))
    raise RuntimeError(f"the whitelist apply process failed: {answer.get('failed', answer)}")


def _result_to_json(result: ApplyResult) -> dict[str, object]:
    return {
        "kind": result.kind.value,
        "site": result.site,
        "seq": result.seq,
        "previous_seq": result.previous_seq,
        "records": result.records,
        "counts": {rtype.value: n for rtype, n in result.counts.items()},
        "index_built": result.index_built,
        "index_due": result.index_due,
    }


def _result_from_json(body: Mapping[str, object]) -> ApplyResult:
    counts = body["counts"]
    previous = body["previous_seq"]
    assert isinstance(counts, dict)
    return ApplyResult(
        kind=BundleKind(str(body["kind"])),
        site=str(body["site"]),
        seq=_int(body["seq"]),
        previous_seq=None if previous is None else _int(previous),
        records=_int(body["records"]),
        counts={RecordType(rtype): _int(n) for rtype, n in counts.items()},
        index_built=bool(body["index_built"]),
        index_due=bool(body["index_due"]),
    )


def _index_to_json(state: IndexState) -> dict[str, object]:
    built = None if state.built_at is None else state.built_at.isoformat()
    return {
        "file": state.file,
        "usable": state.usable,
        "records": state.records,
        "built_at": built,
        "unindexed": state.unindexed,
    }


def _index_from_json(body: Mapping[str, object]) -> IndexState:
    built = body["built_at"]
    return IndexState(
        file=None if body["file"] is None else str(body["file"]),
        usable=bool(body["usable"]),
        records=_int(body["records"]),
        built_at=None if built is None else datetime.fromisoformat(str(built)),
        unindexed=_int(body["unindexed"]),
    )


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


# -- the child -------------------------------------------------------------------------------


def _serve(
    store: WhitelistStore, header: Mapping[str, object], payload: bytes, stop: threading.Event
) -> dict[str, object]:
    try:
        now = datetime.fromisoformat(str(header["now"]))
        if header["op"] == "apply":
            keys = header["trusted_keys"]
            assert isinstance(keys, list)
            request = ApplyRequest(
                site=str(header["site"]),
                trusted_keys=tuple(str(key) for key in keys),
                max_bundle_bytes=_int(header["max_bundle_bytes"]),
                now=now,
            )
            result = verify_and_apply(store, payload, str(header["sha256"]), request, stop)
            return {"applied": _result_to_json(result)}
        if header["op"] == "reindex":
            return {"indexed": _index_to_json(store.reindex(now=now, stop=stop))}
        return {"failed": f"unknown request {header['op']!r}"}
    except BundleError as exc:
        return {"rejected": {"reason": exc.reason.value, "message": exc.message}}
    except StoreError as exc:
        return {"store_error": str(exc)}
    except IndexBuildStoppedError as exc:
        return {"stopped": str(exc)}
    except Exception as exc:
        traceback.print_exc()  # to the daemon's stderr
        return {"failed": f"{type(exc).__name__}: {exc}"}


def _read_request(stream: BinaryIO) -> tuple[dict[str, object], bytes] | None:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None  # end of input: the daemon is gone or done
    json_len, payload_len = _FRAME.unpack(head)
    data = stream.read(json_len)
    payload = stream.read(payload_len)
    if len(data) < json_len or len(payload) < payload_len:
        return None
    header: dict[str, object] = json.loads(data)
    return header, payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgegate.whitelist.applier")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--reindex-after", type=int, default=REINDEX_AFTER)
    args = parser.parse_args(argv)
    # The protocol owns stdout; anything else printed goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    stop = threading.Event()
    busy = False

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stop.set()  # a build in progress ends within 256 rows and rolls back
        if not busy:
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when this stops
    with WhitelistStore.open(args.state_dir, reindex_after=args.reindex_after) as store:
        while not stop.is_set():
            request = _read_request(sys.stdin.buffer)
            if request is None:
                return 0
            busy = True
            answer = json.dumps(_serve(store, *request, stop)).encode()
            out.write(_FRAME.pack(len(answer), 0) + answer)
            out.flush()
            busy = False
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
