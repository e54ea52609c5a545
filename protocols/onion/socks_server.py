"""The SOCKS5 port: a trio server on 127.0.0.1 that hands `.fog` CONNECTs to a connector.

`SocksServer(connector, settings).run(task_status=...)` listens on `settings.host`:
`settings.port` (0: any free port; the bound port is `task_status.started`'s value and
`self.port`) and serves until cancelled. For each client it runs the sans-IO handshake
(socks.SocksConnection), calls `await connector(address, port)` for the parsed CONNECT (the
circuit layer's, injected: this module knows nothing of circuits) and splices bytes both ways.

Bounds, so a bad client cannot hurt the others:
- `max_clients` connections at once; one more is closed at once (counted "over_capacity").
- `handshake_timeout`: the whole greeting + request must arrive in time (a slowloris client
  trickling bytes is dropped, counted "handshake_timeout"); garbage is refused at the first
  bad byte with the answer socks.py chose.
- `connect_timeout`: the connector gets that long (then reply 0x06 "TTL expired", or Tor's
  0xF7 with extended errors), its `HsConnectError` becomes the reply code it carries, an
  `OSError` becomes 0x05 "connection refused".
- Splicing reads at most `buffer_size` bytes per direction before writing them, so at most
  2 x buffer_size bytes per client are held; a connection with no byte delivered either way
  for `idle_timeout` seconds (including a peer that stops reading) is closed. End of stream
  on one side is passed on as a half-close when the other side's stream supports it.
`stats` counts outcomes by name for the role's metrics. The connector's stream is closed when
the client's is. Cancelling `run` closes the listener and every client connection.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

from fognode.protocols.onion.address import FogAddress
from fognode.protocols.onion.hs_errors import HsConnectError, SocksError, SocksReply
from fognode.protocols.onion.socks import SocksConnection

log = logging.getLogger(__name__)

Connector = Callable[[FogAddress, int], Awaitable[trio.abc.Stream]]


@dataclass(frozen=True)
class SocksSettings:
    host: str = "127.0.0.1"
    port: int = 0
    handshake_timeout: float = 10.0
    connect_timeout: float = 60.0
    idle_timeout: float = 300.0
    max_clients: int = 256
    buffer_size: int = 64 * 1024
    extended_errors: bool = False


class SocksServer:
    """See the module docstring."""

    def __init__(self, connector: Connector, settings: SocksSettings = SocksSettings()) -> None:
        self.connector = connector
        self.settings = settings
        self.port: int | None = None
        self.active = 0
        self.stats: Counter[str] = Counter()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; OSError if the port cannot be bound."""
        listeners = await trio.open_tcp_listeners(self.settings.port, host=self.settings.host)
        try:
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                task_status.started(self.port)
                await trio.serve_listeners(self._serve, listeners, handler_nursery=nursery)
        finally:
            for listener in listeners:
                await listener.aclose()

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self.active >= self.settings.max_clients:
                self.stats["over_capacity"] += 1
                return
            self.active += 1
            try:
                await self._client(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                self.stats["client_gone"] += 1
                log.debug("socks client gone: %s", e)
            except Exception:   # a bug here or in the connector's stream: one client, not the port
                self.stats["error"] += 1
                log.exception("socks client handler failed")
            finally:
                self.active -= 1

    async def _client(self, stream: trio.SocketStream) -> None:
        s = self.settings
        conn = SocksConnection(extended_errors=s.extended_errors)
        request = None
        with trio.move_on_after(s.handshake_timeout) as scope:
            while request is None:
                data = await stream.receive_some(4096)
                if not data:
                    self.stats["closed_in_handshake"] += 1
                    return
                try:
                    out, request = conn.receive_data(data)
                except SocksError as e:
                    self.stats["refused"] += 1
                    log.debug("socks client refused: %s", e)
                    if e.answer:
                        await stream.send_all(e.answer)
                    return
                if out:
                    await stream.send_all(out)
        if scope.cancelled_caught or request is None:
            self.stats["handshake_timeout"] += 1
            return
        try:
            with trio.fail_after(s.connect_timeout):
                upstream = await self.connector(request.address, request.port)
        except HsConnectError as e:
            self.stats["connect_failed"] += 1
            log.debug("socks connect to %s:%d failed: %s", request.host, request.port, e)
            await stream.send_all(conn.connect_failed(e.reply))
            return
        except trio.TooSlowError:
            self.stats["connect_timeout"] += 1
            await stream.send_all(conn.connect_failed(SocksReply.HS_INTRO_TIMEDOUT if s.extended_errors
                                                      else SocksReply.TTL_EXPIRED))
            return
        except OSError as e:
            self.stats["connect_failed"] += 1
            log.debug("socks connect to %s:%d failed: %s", request.host, request.port, e)
            await stream.send_all(conn.connect_failed(SocksReply.CONNECTION_REFUSED))
            return
        except Exception:
            self.stats["error"] += 1
            log.exception("socks connector failed for %s:%d", request.host, request.port)
            await stream.send_all(conn.connect_failed(SocksReply.GENERAL_FAILURE))
            return
        async with upstream:
            reply, early = conn.connect_succeeded()
            self.stats["established"] += 1
            with trio.move_on_after(s.idle_timeout) as scope:
                await stream.send_all(reply)
                if early:
                    await upstream.send_all(early)
            if scope.cancelled_caught:
                self.stats["idle_timeout"] += 1
                return
            await self._splice(stream, upstream)

    async def _splice(self, client: trio.abc.Stream, upstream: trio.abc.Stream) -> None:
        """Copy both ways until both ends are done, an error, or `idle_timeout` of silence."""
        s = self.settings
        last = [trio.current_time()]
        running = [2]

        async def pump(src: trio.abc.Stream, dst: trio.abc.Stream, counter: str,
                       scope: trio.CancelScope) -> None:
            try:
                while True:
                    data = await src.receive_some(s.buffer_size)
                    if not data:
                        break
                    await dst.send_all(data)
                    last[0] = trio.current_time()
                    self.stats[counter] += len(data)
                if isinstance(dst, trio.abc.HalfCloseableStream):
                    await dst.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                self.stats["splice_broken"] += 1
                log.debug("socks splice ended: %s", e)
                scope.cancel()
            running[0] -= 1
            if not running[0]:
                scope.cancel()   # both directions done: stop the watchdog

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, upstream, "bytes_up", nursery.cancel_scope)
            nursery.start_soon(pump, upstream, client, "bytes_down", nursery.cancel_scope)
            while True:
                await trio.sleep_until(last[0] + s.idle_timeout)
                if trio.current_time() >= last[0] + s.idle_timeout:
                    self.stats["idle_timeout"] += 1
                    nursery.cancel_scope.cancel()
                    return
