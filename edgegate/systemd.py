"""Talking to systemd: sd_notify(3) messages and service credentials, in pure Python.

Owns the notification protocol (sd_notify(3)): one ``AF_UNIX`` datagram of newline-separated
``KEY=VALUE`` assignments to the socket named by ``$NOTIFY_SOCKET`` — a filesystem path, or
an abstract-namespace name written with a leading ``@``. It also reads the watchdog period
the manager asks for (``$WATCHDOG_USEC``, honoured only when ``$WATCHDOG_PID`` is unset or
names this process, sd_watchdog_enabled(3)) and the credentials it passes
(``$CREDENTIALS_DIRECTORY``, systemd.exec(5) ``LoadCredential=``).

Invariants:
- without ``$NOTIFY_SOCKET`` (not started by systemd, or by a unit that is not
  ``Type=notify``) every call is a no-op that returns False;
- notifying never raises and never blocks: a datagram that cannot be sent now is dropped
  (systemd gets the next one), because the daemon's work must not wait on its supervisor;
- a value never spans lines: newlines in ``STATUS=`` text are folded into spaces, since a
  newline would start a new assignment.

Addresses other than a path or ``@name`` (``vsock:`` in systemd ≥ 254) are not supported and
leave the notifier disabled; :attr:`Notifier.unsupported` keeps the value so the daemon can
say so in its log.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Notifier:
    """Sends sd_notify(3) state changes; build it with :meth:`from_environ`."""

    address: str | None = None
    watchdog_usec: int | None = None
    unsupported: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ, pid: int = 0) -> Notifier:
        """The notifier systemd set up for this process (``pid`` 0 = :func:`os.getpid`)."""
        raw = environ.get("NOTIFY_SOCKET", "")
        address: str | None = None
        unsupported: str | None = None
        if raw.startswith("/"):
            address = raw
        elif raw.startswith("@") and len(raw) > 1:
            # Abstract namespace: the name starts with a NUL byte instead of the '@'.
            address = "\0" + raw[1:]
        elif raw:
            unsupported = raw
        return cls(address, _watchdog_usec(environ, pid or os.getpid()), unsupported)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send ``WATCHDOG=1``: half the period systemd enforces, as
        sd_watchdog_enabled(3) recommends, so that one late ping is not yet fatal."""
        if self.address is None or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True when it was sent."""
        if self.address is None or not assignments:
            return False
        message = "\n".join(" ".join(item.splitlines()) for item in assignments)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode("utf-8"), socket.MSG_DONTWAIT, self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        """Startup (or a reload) is complete: ``READY=1`` with a status line."""
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        """A free-form line shown by ``systemctl status``."""
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        """The daemon is healthy: reset systemd's watchdog timer."""
        return self.notify("WATCHDOG=1")

    def reloading(self, status: str) -> bool:
        """A configuration reload has begun; ``READY=1`` ends it.

        ``MONOTONIC_USEC`` is what ``Type=notify-reload`` (systemd ≥ 253) requires with
        ``RELOADING=1``; older managers ignore it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        """Shutdown has begun: ``STOPPING=1``."""
        return self.notify("STOPPING=1", f"STATUS={status}")


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid != str(pid):
        return None  # the watchdog is meant for another process (e.g. our parent)
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


def credential(name: str, environ: Mapping[str, str] = os.environ) -> Path | None:
    """``$CREDENTIALS_DIRECTORY/name`` when systemd passed that credential, else None.

    An empty file counts as not provisioned: an empty password or seed is never a secret.
    """
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    try:
        return path if path.stat().st_size > 0 else None
    except OSError:
        return None
