"""The JSON-RPC 2.0 control socket (DESIGN.md "Control socket and CLI").

One unix socket, `<datadir>/fognode.sock`, mode 0600. Framing: one JSON request (an object, or a
batch array) per line, each answered by one line; notifications (no `id`) get no answer.

Concurrency: every client connection is its own task. A call whose handler never suspends
(no await in its code: most status methods, `node.info` among them; methods.never_suspends) and
every request refused before a handler runs are answered by that task at once, in order,
without a task of their own. Batches and handlers that can wait run in a task each,
concurrently (up to `PER_CLIENT_IN_FLIGHT` per connection) while the connection goes on
reading, so replies can come back in a different order than the requests went out: match them
by `id`. A batch is answered as one array in the order of the batch, with notifications left
out.

Hostile or broken clients only hurt themselves:
- a line longer than `max_request` bytes gets an invalid-request error, then the client is dropped;
- bytes that are not UTF-8 or not JSON get a parse error naming the position; the client stays;
- a request line not completed within `idle_timeout` (a trickling client) gets a timeout error
  and is dropped; a client with nothing in flight and silent for `idle_timeout` is dropped;
- a client that does not read its replies for `idle_timeout` is dropped;
- after a client hangs up, its in-flight requests get `idle_timeout` to finish, then are cancelled;
- past `max_clients` connections, new clients get one busy error line and are closed.

Warm-up: the daemon opens the socket before it has imported its roles and opened the overlay;
until it is ready (`warm_up(None)`), every method except `node.stop` answers NODE_NOT_READY
(code 100, like Bitcoin Core's RPC_IN_WARMUP) saying what it is doing, with data
{phase, elapsed_s}; fognode-cli waits for it (bounded by --timeout).

Handler errors: `RpcError` becomes its code/message/data; anything else (other FognodeErrors
included) is a -32603 internal error naming the exception, logged with its traceback, and the
connection carries on.

Metrics (in the node's registry): `fognode_node_rpc_request_seconds{method}` (unknown methods
are labelled "unknown"), `fognode_node_rpc_errors_total{code}`, `fognode_node_rpc_clients`.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fognode.node.errors import DataDirError, RpcError
from fognode.node.rpc.methods import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NODE_NOT_READY,
    PARSE_ERROR,
    SERVER_BUSY,
    MethodSpec,
    MethodTable,
    Progress,
    run_inline,
)

from fognode.node.rpc.builtins import Builtins
from fognode.node.rpc.connection import Connection, linger
from fognode.node.rpc.jsonrpc import (DECODER, encode_id, encode_json, error_line, request_problem, role_down_error,
                                      valid_id)

log = logging.getLogger("fognode.rpc")
_scan_once = DECODER.scan_once   # what DECODER.decode runs after skipping whitespace

SUN_PATH_MAX = 107          # sockaddr_un.sun_path is 108 bytes including the terminating NUL
BATCH_CONCURRENCY = 16      # concurrent calls inside one batch
WARMUP_METHODS = frozenset({"node.stop"})   # what answers while the daemon warms up
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def check_socket_path(path: Path) -> None:
    """Raise DataDirError if `path` does not fit in a unix socket address (107 bytes)."""
    n = len(os.fsencode(str(path)))
    if n > SUN_PATH_MAX:
        raise DataDirError(
            f"control socket path {path} is {n} bytes long; unix sockets allow at most "
            f"{SUN_PATH_MAX} (sun_path is 108 bytes): use a data dir with a shorter path")


class RpcServer:
    """Serves a MethodTable on a unix socket. See the module docstring for the rules."""

    def __init__(self, table: MethodTable, path: Path, metrics: CollectorRegistry, *,
                 max_request: int = 1 << 20, idle_timeout: float = 60.0,
                 max_clients: int = 256) -> None:
        """Registers `help` and `rpc.discover` in `table` (owner "node").

        Raises DataDirError if `path` is over the unix socket limit, ValueError if the table
        already has `help`/`rpc.discover`.
        """
        path = Path(path)
        check_socket_path(path)
        self.table = table
        self.path = path
        self.max_request = max_request
        self.idle_timeout = idle_timeout
        self.max_clients = max_clients
        table.add_object(Builtins(table), owner="node")
        self._latency = Histogram("fognode_node_rpc_request_seconds",
                                  "Control-socket request handling time, by method",
                                  ["method"], registry=metrics, buckets=_LATENCY_BUCKETS)
        self._latency_by_method: dict[str, Any] = {}    # label -> its child (labels() costs per call)
        self._errors = Counter("fognode_node_rpc_errors_total",
                               "Control-socket error replies, by JSON-RPC error code",
                               ["code"], registry=metrics)
        self._clients_gauge = Gauge("fognode_node_rpc_clients",
                                    "Control-socket clients connected now", registry=metrics)
        # While not None, what the daemon is doing before it is ready: every method but
        # WARMUP_METHODS answers NODE_NOT_READY naming it (set and cleared by node/daemon.py).
        self.warming_up: str | None = None
        self._warmup_since = time.monotonic()
        self._clients = 0
        self._refusing = 0
        self._listener: trio.socket.SocketType | None = None
        self._inode: tuple[int, int] | None = None
        self._accept_scope: trio.CancelScope | None = None
        self._stopped = False

    @property
    def clients(self) -> int:
        """Connections being served now."""
        return self._clients

    # ---- lifecycle --------------------------------------------------------------------------

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the socket (mode 0600), call `task_status.started()`, serve until cancelled.

        A stale socket file (nobody accepting on it) is replaced. Raises DataDirError if the
        path is taken by something that is not a socket, or another process is serving on it.
        The socket file is removed on exit (only if it is still ours).
        """
        await self._remove_stale()
        sock = self._bind()
        self._listener = sock
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                log.info("control socket listening on %s", self.path)
                if not self._stopped:
                    await self._accept_loop(sock, nursery)
        finally:
            sock.close()
            self._unlink()

    def stop_accepting(self) -> None:
        """Shutdown step 1: close the listener and remove the socket file; connected clients
        are still served (their in-flight requests finish) until `serve` is cancelled."""
        self._stopped = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        if self._listener is not None:
            self._listener.close()
        self._unlink()

    async def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise DataDirError(f"{self.path} exists and is not a socket; refusing to replace it")
        probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with trio.move_on_after(2.0):
                await probe.connect(str(self.path))
            # Connected, or no verdict within 2 s (a full backlog): someone is serving there.
            raise DataDirError(f"another process is already serving the control socket {self.path}")
        except (ConnectionRefusedError, FileNotFoundError):
            pass
        finally:
            probe.close()
        log.info("replacing stale control socket %s (left by a daemon that did not exit cleanly)",
                 self.path)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _bind(self) -> trio.socket.SocketType:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Create the socket file 0600 from the start (as ssh-agent does): no window in which
        # another local user could connect. bind() is synchronous here: no checkpoint, so no
        # other trio task runs under this umask.
        old = os.umask(0o177)
        try:
            raw.bind(str(self.path))
        except OSError as e:
            raw.close()
            raise DataDirError(f"cannot create the control socket {self.path}: {e.strerror}") from e
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        raw.listen(min(self.max_clients, socket.SOMAXCONN))
        return trio.socket.from_stdlib_socket(raw)

    def _unlink(self) -> None:
        if self._inode is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._inode = None

    async def _accept_loop(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        with trio.CancelScope() as scope:
            self._accept_scope = scope
            while True:
                try:
                    conn, _ = await sock.accept()
                except OSError as e:
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.warning("control socket: cannot accept (%s); retrying", e.strerror)
                        await trio.sleep(0.1)
                        continue
                    if self._stopped or e.errno == errno.EBADF:
                        return
                    raise
                except trio.ClosedResourceError:
                    return
                stream = trio.SocketStream(conn)
                if self._clients >= self.max_clients:
                    self._errors.labels(str(SERVER_BUSY)).inc()
                    if self._refusing < 64:
                        nursery.start_soon(self._refuse, stream)
                    else:
                        conn.close()
                    continue
                nursery.start_soon(self._serve_client, stream)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        self._refusing += 1
        try:
            line = error_line(None, SERVER_BUSY,
                          f"too many clients ({self.max_clients} connected); try again later") + "\n"
            with trio.move_on_after(1.0):
                await stream.send_all(line.encode())
                await linger(stream, 1.0)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._refusing -= 1
            await trio.aclose_forcefully(stream)

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        self._clients += 1
        self._clients_gauge.set(self._clients)
        try:
            await Connection(self, stream).run()
        finally:
            self._clients -= 1
            self._clients_gauge.set(self._clients)

    # ---- requests ---------------------------------------------------------------------------

    def warm_up(self, phase: str | None) -> None:
        """Say what the daemon is doing before it is ready (None: it is ready). Until then,
        calls get NODE_NOT_READY with `phase` and the seconds since the warm-up began."""
        if self.warming_up is None and phase is not None:
            self._warmup_since = time.monotonic()
        self.warming_up = phase

    def _warmup_error(self, method: str) -> RpcError:
        elapsed = round(time.monotonic() - self._warmup_since, 3)
        return RpcError(NODE_NOT_READY, f"the daemon is warming up ({self.warming_up}, {elapsed:g} s so far): "
                                        f"{method} will answer when it is ready; retry shortly",
                        {"phase": self.warming_up, "elapsed_s": elapsed})

    def count_error(self, code: int) -> None:
        self._errors.labels(str(code)).inc()

    def decode_line(self, line: bytes) -> Any:
        """One request line (without its newline), decoded: a request object, a batch list, or
        anything else JSON (checked later), or `Reply` (a parse error's reply line)."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            self.count_error(PARSE_ERROR)
            return Reply(error_line(None, PARSE_ERROR, f"parse error: invalid UTF-8 at byte {e.start}"))
        try:    # the usual request: one object and nothing around it, read by the C scanner alone
            msg, end = _scan_once(text, 0)
            if end == len(text):
                return msg
        except (StopIteration, ValueError, RecursionError):
            pass    # the full decoder below says what is wrong
        try:
            return DECODER.decode(text)
        except json.JSONDecodeError as e:
            self.count_error(PARSE_ERROR)
            return Reply(error_line(None, PARSE_ERROR,
                                    f"parse error: {e.msg} at line {e.lineno} column {e.colno} (char {e.pos})"))
        except RecursionError:
            self.count_error(PARSE_ERROR)
            return Reply(error_line(None, PARSE_ERROR, "parse error: JSON nested too deeply"))
        except ValueError as e:  # NaN / Infinity
            self.count_error(PARSE_ERROR)
            return Reply(error_line(None, PARSE_ERROR, f"parse error: {e}"))

    def needs_task(self, msg: Any) -> bool:
        """Whether answering the decoded `msg` may wait (a batch, or a call to a handler that
        can suspend); everything else is answered by `answer_now` without a checkpoint."""
        if isinstance(msg, list):
            return bool(msg)
        method = msg.get("method") if isinstance(msg, dict) else None
        if type(method) is not str:
            return False
        spec = self.table.get(method)
        return spec is not None and not spec.inline and (self.warming_up is None or method in WARMUP_METHODS)

    def answer_now(self, msg: Any) -> str | None:
        """Answer a decoded request for which `needs_task` is False, synchronously: the reply
        line, or None (a notification). Never raises."""
        if isinstance(msg, Reply):
            return msg.line
        if isinstance(msg, list):   # the empty batch (needs_task is True for any other)
            self.count_error(INVALID_REQUEST)
            return error_line(None, INVALID_REQUEST, "invalid request: empty batch")
        call = self._call(msg, None)
        if not isinstance(call, _Call):
            return call.line
        assert call.spec is not None    # _call gives a _Call only for a method it found
        try:
            result = run_inline(call.spec.handler(**call.kwargs))
            return self._result_line(call, result)
        except Exception as e:
            return self._failed(call, e)
        finally:
            call.done()

    async def handle_line(self, line: bytes, stream: Callable[[str], Awaitable[None]] | None = None) -> str | None:
        """Answer one request line (without its newline): the reply line, or None when there
        is nothing to send (notifications). `stream` sends a line to the caller before the
        reply (a streaming method's progress; not for batches). Never raises except
        trio.Cancelled."""
        return await self.handle_message(self.decode_line(line), stream)

    async def handle_message(self, msg: Any, stream: Callable[[str], Awaitable[None]] | None = None) -> str | None:
        """`handle_line` for a line already decoded (`decode_line`)."""
        if not self.needs_task(msg):
            return self.answer_now(msg)
        if isinstance(msg, list):
            replies: list[str | None] = [None] * len(msg)
            limiter = trio.CapacityLimiter(BATCH_CONCURRENCY)

            async def one(i: int, m: Any) -> None:
                async with limiter:
                    replies[i] = await self.handle_request(m)

            async with trio.open_nursery() as nursery:
                for i, m in enumerate(msg):
                    nursery.start_soon(one, i, m)
            parts = [r for r in replies if r is not None]
            return "[" + ",".join(parts) + "]" if parts else None
        return await self.handle_request(msg, stream)

    async def handle_request(self, msg: Any, stream: Callable[[str], Awaitable[None]] | None = None) -> str | None:
        """Answer one decoded request object: the reply as JSON text, None for a notification.
        A streaming method's progress goes out through `stream` (see methods.Progress)."""
        call = self._call(msg, stream)
        if not isinstance(call, _Call):
            return call.line
        assert call.spec is not None    # _call gives a _Call only for a method it found
        try:
            result = await call.spec.handler(**call.kwargs)
            return self._result_line(call, result)
        except Exception as e:
            return self._failed(call, e)
        finally:
            call.done()

    def _call(self, msg: Any, stream: Callable[[str], Awaitable[None]] | None) -> _Call | Reply:
        """Check a request object and bind its params: the call to make, or the reply already
        (an error; None for a notification's)."""
        problem = request_problem(msg)
        if problem is not None:
            self.count_error(INVALID_REQUEST)
            id_ = msg.get("id") if isinstance(msg, dict) and valid_id(msg.get("id")) else None
            return Reply(error_line(id_, INVALID_REQUEST, f"invalid request: {problem}"))
        method: str = msg["method"]
        spec = self.table.get(method)
        label = method if spec is not None else "unknown"
        child = self._latency_by_method.get(label)
        if child is None:
            child = self._latency_by_method[label] = self._latency.labels(label)
        call = _Call(method, msg.get("id"), "id" not in msg, spec, {}, child, time.perf_counter())
        try:
            if self.warming_up is not None and method not in WARMUP_METHODS:
                raise self._warmup_error(method)
            if spec is None and (owner := self.table.withdrawn_owner(method)) is not None:
                raise role_down_error(method, owner, self.table.down(owner))
            if spec is None:
                close = self.table.suggest(method)
                hint = f"; did you mean {', '.join(close)}?" if close else "; `help` lists the methods"
                raise RpcError(METHOD_NOT_FOUND, f"method not found: {method!r}{hint}")
            call.kwargs = spec.bind(msg.get("params"))
            if spec.progress is not None:
                call.kwargs[spec.progress] = Progress(None if stream is None or call.notification
                                                      else _progress_sender(stream, call.id_))
        except Exception as e:
            reply = Reply(self._failed(call, e))
            call.done()
            return reply
        return call

    def _result_line(self, call: _Call, result: Any) -> str | None:
        try:
            body = encode_json(result)
        except (TypeError, ValueError) as e:
            raise _BadResult(f"the result of {call.method} cannot be sent as JSON: {e}") from e
        if call.notification:
            return None
        return f'{{"jsonrpc":"2.0","id":{encode_id(call.id_)},"result":{body}}}'

    def _failed(self, call: _Call, e: Exception) -> str | None:
        """The error reply for a call that raised `e` (None for a notification)."""
        if isinstance(e, RpcError):
            self.count_error(e.code)
            return None if call.notification else error_line(call.id_, e.code, e.message, e.data)
        log.error("RPC %s failed: %s: %s", call.method, type(e).__name__, e, exc_info=e)
        self.count_error(INTERNAL_ERROR)
        what = str(e) if isinstance(e, _BadResult) else f"{type(e).__name__}: {e}"
        return None if call.notification else error_line(
            call.id_, INTERNAL_ERROR, f"internal error in {call.method}: {what}",
            {"exception": type(e).__name__})


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """A request's answer known without calling a handler: its reply line (None: nothing to send)."""

    line: str | None


@dataclasses.dataclass(slots=True)
class _Call:
    """One request being answered: what to call, and its latency timer (`done` observes it)."""

    method: str
    id_: Any
    notification: bool
    spec: MethodSpec | None
    kwargs: dict[str, Any]
    latency: Any               # the method's latency histogram child
    started: float

    def done(self) -> None:
        self.latency.observe(time.perf_counter() - self.started)


def _progress_sender(stream: Callable[[str], Awaitable[None]], id_: Any) -> Callable[[Any], Awaitable[None]]:
    async def send(value: Any) -> None:
        await stream(f'{{"jsonrpc":"2.0","method":"rpc.progress","params":{{"id":{encode_json(id_)},'
                     f'"value":{encode_json(value)}}}}}')
    return send


class _BadResult(Exception):
    """A handler returned something that is not JSON (our bug; reported as internal error)."""
