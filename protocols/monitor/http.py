"""A deliberately tiny HTTP/1.1 GET server on trio for /metrics and /health.

Only what a Prometheus scraper and a health probe need: one GET per connection, bounded
request size (8 KiB), a read deadline, `Connection: close`. Anything else gets 400/404/405.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

log = logging.getLogger("fognode.monitor.http")

MAX_REQUEST = 8192
READ_TIMEOUT = 5.0

Route = Callable[[], Awaitable[tuple[int, str, bytes]]]  # -> (status, content type, body)

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    buf = b""
    with trio.move_on_after(READ_TIMEOUT):
        while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return None
            buf += chunk
            if len(buf) > MAX_REQUEST:
                return None
        return buf
    return None


def _response(status: int, ctype: str, body: bytes) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


async def serve_http(listeners: list[trio.SocketListener], routes: dict[str, Route], *,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve GET routes on `listeners` (from trio.open_tcp_listeners) until cancelled;
    task_status gets the bound port."""

    async def handle(stream: trio.SocketStream) -> None:
        try:
            head = await _read_head(stream)
            if head is None:
                await stream.send_all(_response(400, "text/plain", b"bad request\n"))
                return
            line = head.split(b"\n", 1)[0].decode("latin-1").strip().split()
            if len(line) != 3 or not line[2].startswith("HTTP/"):
                await stream.send_all(_response(400, "text/plain", b"bad request line\n"))
                return
            method, target = line[0], line[1].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await stream.send_all(_response(405, "text/plain", b"only GET\n"))
                return
            route = routes.get(target)
            if route is None:
                await stream.send_all(_response(404, "text/plain", f"no route {target}\n".encode()))
                return
            status, ctype, body = await route()
            data = _response(status, ctype, body)
            if method == "HEAD":
                data = data[: data.index(b"\r\n\r\n") + 4]
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:
            log.exception("metrics endpoint: error serving a request")
        finally:
            await trio.aclose_forcefully(stream)

    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)
