"""A bytecode cache for the methods `dataclasses` generates, kept next to our .pyc files.

The stdlib builds every dataclass's `__init__`, `__repr__`, `__eq__`, `__hash__` and frozen
`__setattr__`/`__delattr__` as source text and compiles it with `exec` at every start: a
daemon's imports create about 530 dataclasses (400 of them ours) and compile about 2,500 such
functions, about 0.2 s of CPU of a 1.2 s start (measured by wrapping `dataclasses._create_fn`,
load ~7). Python caches the bytecode of modules (.pyc) but not of these.

`dataclass_code_cache()` gives `dataclasses` its own `exec` (a module global shadows the
builtin; no stdlib function is replaced) for the duration of the block: source text is looked
up by its BLAKE2b digest in a cache loaded from one marshal file, compiled on a miss exactly as
`exec` would have compiled it (flags not inherited: dataclasses.py has no `__future__`
imports), and executed. What runs is therefore the code the stdlib would have compiled from
the same text; only the compile step is skipped. On leaving the block, if anything had to be
compiled, the file is replaced (temp file and rename: concurrent starts are safe) by what this
start used, so entries of older code go away and the file does not grow; a start that used
fewer classes (roles disabled) and compiled nothing leaves it alone.

A start that imports in several blocks (node/startimports.py: the control socket's modules,
then the roles) opens every block but the last with `keep=True`: the blocks then share one
session (the table is read once, and what each block used is remembered), and the last block
writes what all of them used if any had to compile. Without it, each block would rewrite the
file with its own classes only, and every start would compile the other block's again.

Where: the directory of this module's .pyc (`importlib.util.cache_from_source`, so
PYTHONPYCACHEPREFIX is honoured), file `dataclass-fns.<cache tag>.marshal`, with the
interpreter's bytecode magic number in its header: a file from another Python version, a
damaged one, or one that does not hold a dict of digests to code objects is ignored and
replaced. Nothing is written when bytecode writing is off (`sys.dont_write_bytecode`) or the
directory is not writable (like .pyc files). It is trusted as .pyc files are: whoever can
write there can already change our modules.
"""
from __future__ import annotations

import builtins
import contextlib
import dataclasses
import hashlib
import importlib.util
import logging
import marshal
import os
import sys
import types
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("fognode.codecache")

FORMAT = b"fognode-dataclass-fns/1\n"


def cache_path() -> Path | None:
    """Where the cache lives (None: this interpreter has no bytecode cache tag)."""
    try:
        pyc = importlib.util.cache_from_source(__file__)
    except NotImplementedError:
        return None
    return Path(pyc).with_name(f"dataclass-fns.{sys.implementation.cache_tag}.marshal")


def read_cache(path: Path) -> dict[bytes, types.CodeType]:
    """The digest -> code dict in `path`; empty if missing, foreign or damaged."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    head = FORMAT + importlib.util.MAGIC_NUMBER
    if not data.startswith(head):
        return {}
    try:
        table = marshal.loads(data[len(head):])
    except (EOFError, ValueError, TypeError):
        return {}
    if type(table) is not dict or not all(type(k) is bytes and type(v) is types.CodeType
                                          for k, v in table.items()):
        return {}
    return table


def write_cache(path: Path, table: dict[bytes, types.CodeType]) -> None:
    """Replace `path` with `table` atomically; silently skipped if the directory is not writable."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(FORMAT + importlib.util.MAGIC_NUMBER + marshal.dumps(table))
        os.replace(tmp, path)
    except OSError as e:
        log.debug("dataclass code cache not written to %s: %s", path, e)
        with contextlib.suppress(OSError):
            tmp.unlink()


class CachedExec:
    """`exec` for dataclasses: source text compiled once per digest (module docstring).
    `used` (what this block ran) starts empty; `table` gains what it compiles."""

    def __init__(self, table: dict[bytes, types.CodeType]) -> None:
        self.table = table
        self.used: dict[bytes, types.CodeType] = {}
        self.misses = 0

    def __call__(self, source: Any, globals: Any = None, locals: Any = None, /) -> None:
        if type(source) is str:
            key = hashlib.blake2b(source.encode(), digest_size=16).digest()
            code = self.table.get(key)
            if code is None:
                code = self.table[key] = compile(source, "<string>", "exec", dont_inherit=True)
                self.misses += 1
            self.used[key] = code
            source = code
        builtins.exec(source, globals, locals)


@dataclasses.dataclass
class _Session:
    """What the blocks of one start (`keep=True`, module docstring) share: the table read from
    the file (plus what they compiled), what they used, and how many entries they compiled."""

    table: dict[bytes, types.CodeType]
    used: dict[bytes, types.CodeType] = dataclasses.field(default_factory=dict)
    misses: int = 0


_sessions: dict[Path, _Session] = {}     # path -> the open session of a start's blocks


@contextlib.contextmanager
def dataclass_code_cache(path: Path | None = None, *, keep: bool = False) -> Iterator[CachedExec | None]:
    """Within the block, dataclasses created compile their methods through the cache at `path`
    (default `cache_path()`); yields the CachedExec (None if there is no cache path or another
    cache is already active). `keep`: a later block of this start uses the cache too; the file
    is written (if anything had to be compiled) by the first block without `keep`."""
    path = path if path is not None else cache_path()
    if path is None or "exec" in vars(dataclasses):
        yield None
        return
    session = _sessions.pop(path, None) or _Session(read_cache(path))
    cached = CachedExec(session.table)
    dataclasses.exec = cached     # type: ignore[attr-defined]
    try:
        yield cached
    finally:
        if vars(dataclasses).get("exec") is cached:
            del dataclasses.exec   # type: ignore[attr-defined]
        session.used.update(cached.used)
        session.misses += cached.misses
        if keep:
            _sessions[path] = session
        elif session.misses and not sys.dont_write_bytecode:
            write_cache(path, session.used)
