"""The SOCKS5 port against real clients (socks_server.py): the real `curl --socks5-hostname`
fetching from a real `http.server` through a connector that dials it (the onion connector
comes with the circuit layer), refusals as curl sees them, and garbage, slowloris, idle and
excess clients dropped without hurting the others."""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import struct
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import trio
from nacl.signing import SigningKey

from fognode.protocols.onion.address import FogAddress, address_from_pubkey
from fognode.protocols.onion.hs_errors import HsConnectError, SocksReply
from fognode.protocols.onion.socks_server import SocksServer, SocksSettings
from tests.polling import wait_until

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed on this machine")
SERVICE = address_from_pubkey(bytes(SigningKey(bytes(range(32))).verify_key))
MISSING = address_from_pubkey(bytes(SigningKey(bytes([7]) * 32).verify_key))
HOLD = address_from_pubkey(bytes(SigningKey(bytes([8]) * 32).verify_key))


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_site(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real http.server on 127.0.0.1 (any free port) serving `tmp_path/site`."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html><body>hello from a .fog service</body></html>\n")
    (site / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
async def socks(http_site: tuple[int, Path]) -> AsyncIterator[SocksServer]:
    """The SOCKS server with a connector that reaches SERVICE:80 at the http.server, holds
    HOLD:80 open without a byte (a silent service), and knows no other address."""
    http_port = http_site[0]
    holder, holder_port = await _silent_listener()

    async def connector(address: FogAddress, port: int) -> trio.abc.Stream:
        if address == SERVICE and port == 80:
            return await trio.open_tcp_stream("127.0.0.1", http_port)
        if address == HOLD:
            return await trio.open_tcp_stream("127.0.0.1", holder_port)
        if address == SERVICE:
            raise HsConnectError("no such port", reply=SocksReply.CONNECTION_REFUSED)
        raise HsConnectError("no descriptor", reply=SocksReply.HS_DESC_NOT_FOUND)

    server = SocksServer(connector, SocksSettings(handshake_timeout=1.0, idle_timeout=1.5, max_clients=8,
                                                  buffer_size=16 * 1024))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        nursery.start_soon(_serve_silently, holder)
        yield server
        nursery.cancel_scope.cancel()


async def _silent_listener() -> tuple[trio.SocketListener, int]:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    return listener, listener.socket.getsockname()[1]


async def _serve_silently(listener: trio.SocketListener) -> None:
    async def hold(stream: trio.SocketStream) -> None:
        async with stream:
            while await stream.receive_some(1024):
                pass
    async with listener:
        await trio.serve_listeners(hold, [listener])


async def curl(port: int, url: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    assert CURL is not None
    with trio.fail_after(60):
        return await trio.run_process([CURL, "-sS", "--max-time", "50", "--socks5-hostname",
                                       f"127.0.0.1:{port}", *extra, url],
                                      capture_stdout=True, capture_stderr=True, check=False)


async def test_curl_fetches_pages_intact(socks: SocksServer, http_site: tuple[int, Path]) -> None:
    assert socks.port is not None
    page = await curl(socks.port, f"http://{SERVICE.host}/")
    assert page.returncode == 0, page.stderr
    assert page.stdout == (http_site[1] / "index.html").read_bytes()
    blob = await curl(socks.port, f"http://www.{SERVICE.host.upper()}/blob.bin")
    assert blob.returncode == 0, blob.stderr
    assert hashlib.sha256(blob.stdout).digest() == hashlib.sha256((http_site[1] / "blob.bin").read_bytes()).digest()
    assert socks.stats["established"] == 2 and socks.stats["bytes_down"] > 3 * 1024 * 1024


async def test_refusals_as_curl_sees_them(socks: SocksServer) -> None:
    assert socks.port is not None
    # curl 7.88 prints the SOCKS5 reply code in parentheses and exits with 97 (proxy error)
    for url, code in ((f"http://example.com/", 2), (f"http://127.0.0.1/", 2),
                      (f"http://{MISSING.host}/", 4), (f"http://{SERVICE.host}:81/", 5),
                      (f"http://{'a' * 56}.fog/", 4)):
        r = await curl(socks.port, url)
        assert r.returncode != 0 and r.stdout == b""
        assert f"({code})".encode() in r.stderr, (url, r.stderr)
    assert socks.stats["refused"] == 3 and socks.stats["connect_failed"] == 2


async def test_http_client_on_the_socks_port_gets_told(socks: SocksServer) -> None:
    assert CURL is not None and socks.port is not None
    with trio.fail_after(30):
        r = await trio.run_process([CURL, "-sS", "-x", f"http://127.0.0.1:{socks.port}", f"http://{SERVICE.host}/"],
                                   capture_stdout=True, capture_stderr=True, check=False)
    assert b"not an HTTP proxy" in r.stdout and b"--socks5-hostname" in r.stdout


async def _closed_by_server(stream: trio.SocketStream) -> bytes:
    """Read until the server closes; what it sent."""
    got = b""
    while True:
        try:
            data = await stream.receive_some(4096)
        except trio.BrokenResourceError:
            return got
        if not data:
            return got
        got += data


async def test_garbage_slowloris_and_idle_clients_are_dropped_others_served(socks: SocksServer) -> None:
    assert socks.port is not None
    port = socks.port
    async with trio.open_nursery() as nursery:
        # slowloris: a byte of the greeting every 0.3 s, never finishing in handshake_timeout
        async def slowloris() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                with trio.fail_after(20):
                    try:
                        for b in (b"\x05", b"\x01", b"\x00") + (b"\x05",) * 100:
                            await stream.send_all(b)
                            await trio.sleep(0.3)
                    except trio.BrokenResourceError:
                        pass
                    await _closed_by_server(stream)

        # garbage: refused at once without an answer
        async def garbage() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64))
                with trio.fail_after(20):
                    assert await _closed_by_server(stream) == b""

        # a client that connects and says nothing
        async def silent() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                with trio.fail_after(20):
                    assert await _closed_by_server(stream) == b""

        # idle after connecting: a service that never answers, a client that sends nothing more
        async def idle() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                host = HOLD.host.encode()
                await stream.send_all(b"\x05\x01\x00" + bytes([5, 1, 0, 3, len(host)]) + host + struct.pack(">H", 80))
                with trio.fail_after(20):
                    got = await _closed_by_server(stream)
                assert got == b"\x05\x00" + b"\x05\x00\x00\x01" + bytes(6)

        for fn in (slowloris, garbage, silent, idle):
            nursery.start_soon(fn)
        # meanwhile, a real client is served
        page = await curl(port, f"http://{SERVICE.host}/")
        assert page.returncode == 0 and b"hello from a .fog service" in page.stdout
    assert socks.stats["handshake_timeout"] == 2      # the slowloris and the silent one
    assert socks.stats["idle_timeout"] == 1
    assert socks.stats["refused"] == 1
    await wait_until(lambda: socks.active == 0, 10, "every client handler finished")


async def test_excess_clients_are_closed_and_capacity_returns(socks: SocksServer) -> None:
    assert socks.port is not None
    held = [await trio.open_tcp_stream("127.0.0.1", socks.port) for _ in range(8)]
    await wait_until(lambda: socks.active == 8, 10, "8 clients held")
    extra = await trio.open_tcp_stream("127.0.0.1", socks.port)
    async with extra:
        with trio.fail_after(10):
            assert await _closed_by_server(extra) == b""
    assert socks.stats["over_capacity"] == 1
    for s in held:
        await s.aclose()
    await wait_until(lambda: socks.active == 0, 10, "held clients gone")
    page = await curl(socks.port, f"http://{SERVICE.host}/")
    assert page.returncode == 0


async def test_optimistic_data_reaches_the_service(socks: SocksServer, http_site: tuple[int, Path]) -> None:
    """Greeting, CONNECT and the HTTP request in one write (no wait for the replies)."""
    assert socks.port is not None
    host = SERVICE.host.encode()
    stream = await trio.open_tcp_stream("127.0.0.1", socks.port)
    async with stream:
        await stream.send_all(b"\x05\x01\x00" + bytes([5, 1, 0, 3, len(host)]) + host + struct.pack(">H", 80)
                              + b"GET /index.html HTTP/1.0\r\nHost: " + host + b"\r\n\r\n")
        with trio.fail_after(20):
            got = await _closed_by_server(stream)
    assert got.startswith(b"\x05\x00" + b"\x05\x00\x00\x01" + bytes(6) + b"HTTP/1.0 200")
    assert got.endswith((http_site[1] / "index.html").read_bytes())
