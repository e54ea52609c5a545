"""WASM modules of the harvest tests, as `.wat` text compiled by wasmtime itself (the xorshift
kernel is the benchmark's, tools/bench/harvest.py)."""
from __future__ import annotations

import wasmtime

from fognode.tools.bench.harvest import XORSHIFT_FUNC, xorshift_py

JOBS_WAT = r"""
(module
  (memory (export "memory") 1)
  (global $top (mut i32) (i32.const 1024))

  ;; fib(n) with i64 wrap-around: a few operators per step
  (func (export "fib") (param $n i32) (result i64)
    (local $a i64) (local $b i64) (local $t i64)
    (local.set $b (i64.const 1))
    (block (loop
      (br_if 1 (i32.eqz (local.get $n)))
      (local.set $t (i64.add (local.get $a) (local.get $b)))
      (local.set $a (local.get $b))
      (local.set $b (local.get $t))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br 0)))
    (local.get $a))

""" + XORSHIFT_FUNC + r"""
  ;; NaN-producing f64 arithmetic, returned as raw bits (NaN canonicalisation)
  (func (export "nanbits") (result i64)
    (i64.reinterpret_f64 (f64.add (f64.div (f64.const 0) (f64.const 0)) (f64.const 1))))

  (func (export "spin") (loop (br 0)))

  (func (export "div") (param $x i32) (result i32)
    (i32.div_s (i32.const 100) (local.get $x)))

  ;; grows memory a page at a time, touching each page, until refused: then traps
  (func (export "hog") (result i32)
    (local $old i32)
    (loop
      (local.set $old (memory.grow (i32.const 1)))
      (if (i32.eq (local.get $old) (i32.const -1)) (then unreachable))
      (i32.store (i32.mul (local.get $old) (i32.const 65536)) (i32.const 7))
      (br 0))
    (i32.const 0))

  ;; the bytes ABI: bump allocator + reverse the input into a fresh buffer
  (func $alloc (export "alloc") (param $n i32) (result i32)
    (local $p i32) (local $need i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get $n)))
    (local.set $need (i32.sub (i32.div_u (i32.add (global.get $top) (i32.const 65535))
                                         (i32.const 65536)) (memory.size)))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then (if (i32.eq (memory.grow (local.get $need)) (i32.const -1)) (then unreachable))))
    (local.get $p))

  (func (export "reverse") (param $p i32) (param $n i32) (result i64)
    (local $o i32) (local $i i32)
    (local.set $o (call $alloc (local.get $n)))
    (block (loop
      (br_if 1 (i32.ge_u (local.get $i) (local.get $n)))
      (i32.store8 (i32.add (local.get $o) (local.get $i))
        (i32.load8_u (i32.sub (i32.add (local.get $p) (local.get $n))
                              (i32.add (local.get $i) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br 0)))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $o)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))

  ;; claims an output outside memory (an ABI violation)
  (func (export "liar") (param i32 i32) (result i64) (i64.const 0x7fffffff00000010))
)
"""

IMPORTS_WAT = '(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))'
BIG_MEMORY_WAT = '(module (memory (export "memory") 2000))'


def jobs_module() -> bytes:
    """The test jobs as a WASM binary."""
    return bytes(wasmtime.wat2wasm(JOBS_WAT))


xorshift = xorshift_py
