"""WASM modules of the market role's tests and of the README example, as `.wat` text compiled
by wasmtime itself."""
from __future__ import annotations

import wasmtime

from fognode.tools.bench.harvest import xorshift_func

WORK_WAT = r"""
(module
  (memory (export "memory") 1)
  ;; n rounds of xorshift64 from a fixed seed (tools/bench/harvest.py): about 12 fuel per round
""" + xorshift_func("work") + r"""
  (func (export "spin") (loop (br 0)))
  ;; grows memory a page at a time until refused, then traps
  (func (export "hog") (result i32)
    (loop
      (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
      (br 0))
    (i32.const 0))
)
"""


def work_module() -> bytes:
    return bytes(wasmtime.wat2wasm(WORK_WAT))
