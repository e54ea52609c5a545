"""WASM modules of the market role's tests and of the README example, as `.wat` text compiled
by wasmtime itself."""
from __future__ import annotations

import wasmtime

WORK_WAT = r"""
(module
  (memory (export "memory") 1)
  ;; n rounds of xorshift64 from a fixed seed: about 12 fuel per round
  (func (export "work") (param $n i64) (result i64)
    (local $x i64)
    (local.set $x (i64.const 88172645463325252))
    (block (loop
      (br_if 1 (i64.eqz (local.get $n)))
      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
      (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
      (local.set $n (i64.sub (local.get $n) (i64.const 1)))
      (br 0)))
    (local.get $x))
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
