"""Opening device links and pacing reconnects."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from edgegate.devices.link import Backoff, LinkError, open_link


async def test_socket_url_opens_a_tcp_connection() -> None:
    accepted = asyncio.Event()

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await open_link(f"socket://127.0.0.1:{port}", 115200)
        async with asyncio.timeout(5):
            await accepted.wait()
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_refused_tcp_connection_is_a_link_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()

    with pytest.raises(LinkError, match=f"cannot open socket://127.0.0.1:{port}"):
        await open_link(f"socket://127.0.0.1:{port}", 115200)


@pytest.mark.parametrize(
    "url", ["socket://127.0.0.1", "socket://:7001", "socket://h:70000", "socket://h:1/x"]
)
async def test_malformed_socket_url_is_a_link_error(url: str) -> None:
    with pytest.raises(LinkError, match="expected socket://HOST:PORT"):
        await open_link(url, 115200)


async def test_missing_serial_port_is_a_link_error_naming_it() -> None:
    with pytest.raises(LinkError, match="cannot open /dev/does-not-exist"):
        await open_link("/dev/does-not-exist", 115200)


def test_link_error_is_an_os_error() -> None:
    assert issubclass(LinkError, OSError)


def test_backoff_ceiling_doubles_from_base_up_to_the_cap() -> None:
    backoff = Backoff(0.2, 5.0, random_fraction=lambda: 1.0)

    delays = [backoff.next_delay() for _ in range(7)]

    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


def test_backoff_jitter_spans_zero_to_the_ceiling() -> None:
    fractions = itertools.cycle([0.0, 0.5])
    backoff = Backoff(1.0, 8.0, random_fraction=lambda: next(fractions))

    assert [backoff.next_delay() for _ in range(4)] == [0.0, 1.0, 0.0, 4.0]


def test_backoff_reset_starts_again_from_base() -> None:
    backoff = Backoff(0.2, 5.0, random_fraction=lambda: 1.0)
    for _ in range(10):
        backoff.next_delay()

    backoff.reset()

    assert backoff.next_delay() == pytest.approx(0.2)


def test_backoff_never_overflows_after_many_attempts() -> None:
    backoff = Backoff(0.2, 5.0, random_fraction=lambda: 1.0)

    assert max(backoff.next_delay() for _ in range(5000)) == pytest.approx(5.0)


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)])
def test_backoff_needs_a_positive_base_below_its_cap(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="base_s"):
        Backoff(base, cap)
