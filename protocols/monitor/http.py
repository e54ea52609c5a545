"""A deliberately tiny HTTP/1.1 GET server on trio for /metrics, /health and the dashboard.

Only what a Prometheus scraper, a health probe and a browser on this machine need: one GET per
connection, bounded request size (8 KiB), a read deadline, `Connection: close`, at most
MAX_CONNECTIONS served at once. Anything else gets 400/404/405.

`routes` map an exact path to a handler without arguments (/metrics, /health: open, as a
scraper expects). Any other path goes to `fallback` (the dashboard, which checks its token),
which is handed the parsed `Request` and answers a `Response` with its own headers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

log = logging.getLogger("fognode.monitor.http")

MAX_REQUEST = 8192
READ_TIMEOUT = 5.0
MAX_CONNECTIONS = 64

Route = Callable[[], Awaitable[tuple[int, str, bytes]]]  # -> (status, content type, body)

_REASONS = {200: "OK", 303: "See Other", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 421: "Misdirected Request",
            422: "Unprocessable Content", 500: "Internal Server Error", 503: "Service Unavailable",
            504: "Gateway Timeout"}


@dataclass(frozen=True)
class Request:
    """A GET/HEAD request as read: `path` without the query, `query` the raw text after `?`,
    `headers` with lower-case names (the last of repeated ones)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Response:
    status: int
    ctype: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


Fallback = Callable[[Request], Awaitable[Response]]


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


def _headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in head.split(b"\n")[1:]:
        name, sep, value = raw.decode("latin-1").partition(":")
        if sep and name.strip():
            out[name.strip().lower()] = value.strip()
    return out


def _response(status: int, ctype: str, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
    return head.encode("latin-1") + body


async def serve_http(listeners: list[trio.SocketListener], routes: dict[str, Route], *,
                     fallback: Fallback | None = None,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve GET routes on `listeners` (from trio.open_tcp_listeners) until cancelled;
    task_status gets the bound port. Paths not in `routes` go to `fallback` (404 without)."""
    slots = trio.Semaphore(MAX_CONNECTIONS)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            async with slots:
                head = await _read_head(stream)
                if head is None:
                    await stream.send_all(_response(400, "text/plain", b"bad request\n"))
                    return
                line = head.split(b"\n", 1)[0].decode("latin-1").strip().split()
                if len(line) != 3 or not line[2].startswith("HTTP/"):
                    await stream.send_all(_response(400, "text/plain", b"bad request line\n"))
                    return
                method, (target, _, query) = line[0], line[1].partition("?")
                if method not in ("GET", "HEAD"):
                    await stream.send_all(_response(405, "text/plain", b"only GET\n", (("Allow", "GET, HEAD"),)))
                    return
                route = routes.get(target)
                if route is not None:
                    status, ctype, body = await route()
                    data = _response(status, ctype, body)
                elif fallback is not None:
                    r = await fallback(Request(method, target, query, _headers(head)))
                    data = _response(r.status, r.ctype, r.body, r.headers)
                else:
                    data = _response(404, "text/plain", f"no route {target}\n".encode())
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
