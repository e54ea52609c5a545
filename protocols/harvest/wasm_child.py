"""The WASM job's child process: read one request on stdin, run it, write one answer on stdout.

    python -m fognode.protocols.harvest.wasm_child     (started by the executor's launcher)

Started by `wasm.run_wasm` through the executor (so it is niced, limited, stoppable and metered
like any job). It reads the whole of stdin as one `WasmRequest` (wasm_wire.py), runs it with
`wasm_engine.execute` and writes one answer; a request it cannot decode is answered with
BAD_REQUEST and the decoder's message. Exit status 0 whenever an answer was written.
"""
from __future__ import annotations

import sys

from fognode.node.errors import RemoteProtocolError
from fognode.protocols.harvest.wasm_engine import WasmOutcome, WasmStatus, execute
from fognode.protocols.harvest.wasm_wire import WasmRequest, encode_answer


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


if __name__ == "__main__":
    main()
