"""A throw-away local MQTT broker for `edgegate demo` and the test suite.

Owns starting, stopping, killing and restarting one broker on a free loopback port:
``mosquitto`` as a child process when the binary exists (the real thing, which tests can
SIGKILL and restart), else an in-process amqtt broker on a thread of its own (only so that
the demo runs on a machine without mosquitto).

Invariant: :meth:`LocalBroker.start` returns only once the port accepts connections, and a
restarted broker listens on the same port, so clients simply reconnect. ``options`` are extra
mosquitto.conf lines for the listener and the broker (TLS files, ``require_certificate``,
``acl_file`` …); :meth:`LocalBroker.pause` freezes the process (SIGSTOP) so that its clients
face a half-open connection: the socket stays up, nothing answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

STARTUP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"broker on {host}:{port} did not start") from None
            time.sleep(0.05)


class LocalBroker:
    def __init__(
        self,
        port: int | None = None,
        prefer: str = "mosquitto",
        persistence: bool = False,
        options: Sequence[str] = (),
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        # With persistence, mosquitto keeps sessions and queued QoS 1 messages across a
        # clean stop/start (it saves on SIGTERM), like a production broker would.
        self.persistence = persistence
        self.options = tuple(options)
        self.binary = shutil.which("mosquitto") if prefer == "mosquitto" else None
        self.kind = "mosquitto" if self.binary else "amqtt"
        self._workdir = Path(tempfile.mkdtemp(prefix="edgegate-broker-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._amqtt: _AmqttThread | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.binary:
            conf = self._workdir / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} {self.host}\n"
                "allow_anonymous true\n"
                f"persistence {'true' if self.persistence else 'false'}\n"
                f"persistence_location {self._workdir}/\n"
                "log_dest none\n"
                # Started as root, mosquitto would drop to user "mosquitto", which cannot
                # write its persistence file into our temporary directory.
                f"user {getpass.getuser()}\n" + "".join(f"{line}\n" for line in self.options)
            )
            self._process = subprocess.Popen(
                [self.binary, "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        else:
            self._amqtt = _AmqttThread(self.host, self.port)
            self._amqtt.start()
        wait_for_port(self.host, self.port)

    def stop(self) -> None:
        if self._process is not None:
            # A paused broker would only see the SIGTERM once continued.
            self._process.send_signal(signal.SIGCONT)
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._amqtt is not None:
            self._amqtt.stop()
            self._amqtt = None

    def kill(self) -> None:
        """SIGKILL the broker (mosquitto only): clients see the connection drop at once."""
        if self._process is None:
            raise RuntimeError("kill() needs a mosquitto child process")
        self._process.kill()
        self._process.wait()
        self._process = None

    def pause(self) -> None:
        """SIGSTOP the broker (mosquitto only): connections stay open, nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused broker."""
        self._signal(signal.SIGCONT)

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is None:
            raise RuntimeError(f"{signum.name} needs a mosquitto child process")
        self._process.send_signal(signum)

    def restart(self) -> None:
        self.stop()
        self.start()


class _AmqttThread(threading.Thread):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(name="amqtt-broker", daemon=True)
        self._bind = f"{host}:{port}"
        self._loop = asyncio.new_event_loop()
        self._stopped = asyncio.Event()

    def run(self) -> None:
        from amqtt.broker import Broker

        async def serve() -> None:
            broker = Broker(
                {"listeners": {"default": {"type": "tcp", "bind": self._bind}}},
                loop=self._loop,
            )
            await broker.start()
            await self._stopped.wait()
            with contextlib.suppress(Exception):
                await broker.shutdown()

        self._loop.run_until_complete(serve())

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopped.set)
        self.join(timeout=5)
