"""The WASM job's child process: one request on stdin and one answer on stdout, or (`--serve`)
one request after another, framed, with the compiled modules kept between them.

    python -m fognode.protocols.harvest.wasm_child            (one job: `wasm.run_wasm`)
    python -m fognode.protocols.harvest.wasm_child --serve    (the persistent runner: wasm_worker.py)

Started through the executor (so it is niced, limited, stoppable and metered like any job).
One job: it reads the whole of stdin as one `WasmRequest` (wasm_wire.py), runs it with
`wasm_engine.execute` and writes one answer. Serving: it reads frames until stdin ends; each
request runs with the `ModuleCache` (a module is compiled once, every job gets a fresh store,
so outcome and fuel are those of a fresh child), and is answered with the job's CPU seconds,
or with `need` when its module is neither in the request nor in the cache. A request it cannot
decode is answered with BAD_REQUEST and the decoder's message. Exit status 0 when stdin ended
(or the one answer was written); 3 when a frame was cut short.
"""
from __future__ import annotations

import sys
import time
from typing import BinaryIO

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import digest
from fognode.protocols.harvest.wasm_engine import ModuleCache, WasmOutcome, WasmStatus, execute
from fognode.protocols.harvest.wasm_wire import (FRAME_SLACK, MAX_INPUT, MAX_MODULE, WasmRequest,
                                                 encode_answer, encode_need, encode_worker_answer,
                                                 frame)

TRUNCATED = 3


def main() -> None:
    """Serve one request from stdin to stdout."""
    data = sys.stdin.buffer.read()
    try:
        req = WasmRequest.decode(data)
    except RemoteProtocolError as e:
        outcome = WasmOutcome(WasmStatus.BAD_REQUEST, str(e))
    else:
        outcome = execute(req.module, req.export, args=req.args, input=req.input, fuel=req.fuel,
                          memory_bytes=req.memory_bytes, max_output=req.max_output)
    sys.stdout.buffer.write(encode_answer(outcome))
    sys.stdout.buffer.flush()


def _read_exact(src: BinaryIO, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = src.read(n - len(buf))
        if not chunk:
            return None if not buf else bytes(buf)
        buf += chunk
    return bytes(buf)


def answer(cache: ModuleCache, data: bytes) -> bytes:
    """The answer frame's payload for one request frame's payload."""
    try:
        req = WasmRequest.decode(data)
    except RemoteProtocolError as e:
        return encode_worker_answer(WasmOutcome(WasmStatus.BAD_REQUEST, str(e)), 0.0)
    key = digest(req.module) if req.module else req.module_hash
    if key is None or (not req.module and not cache.holds(req.fuel is not None, key)):
        return encode_need(req.module_hash or b"\0" * 32)
    t0 = time.process_time()
    outcome = execute(req.module, req.export, args=req.args, input=req.input, fuel=req.fuel,
                      memory_bytes=req.memory_bytes, max_output=req.max_output, cache=cache,
                      key=key)
    return encode_worker_answer(outcome, time.process_time() - t0)


def serve(src: BinaryIO, dst: BinaryIO) -> int:
    """Answer framed requests until `src` ends; the exit status."""
    cache = ModuleCache()
    limit = MAX_MODULE + MAX_INPUT + FRAME_SLACK
    while True:
        head = _read_exact(src, 4)
        if head is None:
            return 0
        n = int.from_bytes(head, "big") if len(head) == 4 else limit + 1
        data = _read_exact(src, n) if n <= limit else None
        if data is None or len(data) != n:
            print(f"wasm runner: a request frame was cut short or over {limit} bytes",
                  file=sys.stderr)
            return TRUNCATED
        dst.write(frame(answer(cache, data)))
        dst.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer))
    main()
