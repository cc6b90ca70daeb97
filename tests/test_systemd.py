"""sd_notify(3) against real AF_UNIX datagram sockets, as systemd listens on them."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgegate.systemd import Notifier, credential


def receive(sock: socket.socket) -> dict[str, str]:
    """One datagram, parsed the way systemd does: newline-separated KEY=VALUE."""
    data = sock.recv(4096)
    return dict(line.split("=", 1) for line in data.decode().split("\n"))


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        address = str(tmp_path / "notify")
        sock.bind(address)
        sock.settimeout(5)
        yield sock, address


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    name = f"edgegate-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        yield sock, "@" + name


def test_ready_reaches_a_socket_named_by_a_path(
    path_socket: tuple[socket.socket, str],
) -> None:
    sock, address = path_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready("ready: 2/2 readers up, whitelist seq 42, outbox 0")
    assert receive(sock) == {
        "READY": "1",
        "STATUS": "ready: 2/2 readers up, whitelist seq 42, outbox 0",
    }


def test_every_message_reaches_an_abstract_namespace_socket(
    abstract_socket: tuple[socket.socket, str],
) -> None:
    sock, address = abstract_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    assert notifier.watchdog()
    assert receive(sock) == {"WATCHDOG": "1"}
    assert notifier.status("starting")
    assert receive(sock) == {"STATUS": "starting"}
    assert notifier.stopping("stopping: deciding")
    assert receive(sock) == {"STOPPING": "1", "STATUS": "stopping: deciding"}


def test_reloading_carries_the_monotonic_time_notify_reload_requires(
    path_socket: tuple[socket.socket, str],
) -> None:
    sock, address = path_socket
    before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier.from_environ({"NOTIFY_SOCKET": address}).reloading("reloading x.toml")
    after_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = receive(sock)
    assert message["RELOADING"] == "1"
    assert message["STATUS"] == "reloading x.toml"
    assert before_us <= int(message["MONOTONIC_USEC"]) <= after_us


def test_a_newline_in_a_status_cannot_start_another_assignment(
    path_socket: tuple[socket.socket, str],
) -> None:
    sock, address = path_socket
    Notifier.from_environ({"NOTIFY_SOCKET": address}).status("bad\nREADY=1")
    assert receive(sock) == {"STATUS": "bad READY=1"}


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert not notifier.ready("ready")
    assert not notifier.watchdog()
    assert notifier.watchdog_interval_s is None


def test_an_unsupported_address_is_kept_for_the_log_and_disables_notifying() -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert notifier.unsupported == "vsock:2:1234"
    assert not notifier.ready("ready")


def test_a_socket_that_is_gone_makes_notify_return_false_not_raise(tmp_path: Path) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.enabled
    assert not notifier.watchdog()


@pytest.mark.parametrize(
    ("environ", "interval_s"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "4242"}, 0.1),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_interval_is_half_the_period_meant_for_this_process(
    environ: dict[str, str], interval_s: float | None
) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@x", **environ}, pid=4242)
    assert notifier.watchdog_interval_s == interval_s


def test_without_a_notify_socket_there_is_no_watchdog_to_ping() -> None:
    assert Notifier.from_environ({"WATCHDOG_USEC": "200000"}).watchdog_interval_s is None


def test_a_provisioned_credential_is_found_and_an_empty_or_missing_one_is_not(
    tmp_path: Path,
) -> None:
    (tmp_path / "mqtt-password").write_text("s3cret\n")
    (tmp_path / "inspection-seed").write_text("")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert credential("mqtt-password", environ) == tmp_path / "mqtt-password"
    assert credential("inspection-seed", environ) is None
    assert credential("mqtt-key", environ) is None
    assert credential("mqtt-password", {}) is None
