"""Declaring RPC methods once, next to their handler.

    class Ledger(Protocol):
        @rpc_method("wallet.send")
        async def send(self, to: str, amount: str, memo: str = "") -> dict[str, Any]:
            '''Send AMOUNT tokens from the node's default wallet to address TO; waits for the
            certificate and returns the transaction id.'''

Parameter validation, usage text, JSON schema and `help`/`rpc.discover` are all derived from
the signature, the type hints and the docstring. Supported parameter types: str, int, float,
bool, list[...] / dict[str, ...] of those, `X | None`, and Literal[...] choices. A parameter
without a default is required; positional (list) and named (map) params both work, so
`fognode-cli wallet send ADDR 10` maps to `wallet.send(to=ADDR, amount="10")`.

Error codes (DESIGN.md): JSON-RPC standard codes, then one range per role.

A parameter given as text (the CLI sends every argument as a string) is converted when the
annotation asks for a number, a boolean, a list (comma-separated) or a Literal choice; the error
says which parameter was wrong, what it must be and what was given.
"""
from __future__ import annotations

import difflib
import inspect
import opcode
import re
import time
import typing
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine, get_type_hints

from fognode.node.errors import RpcError
from fognode.node.rpc.params import INVALID_PARAMS, FilePath, check_param, json_text, json_type, schema_of

__all__ = ["FilePath", "INVALID_PARAMS", "json_text"]   # re-exported: handlers and tests import them from here

# JSON-RPC 2.0 standard codes
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
# INVALID_PARAMS = -32602 lives in params.py (the parameter checks raise it)
INTERNAL_ERROR = -32603
# Implementation-defined server errors (JSON-RPC 2.0 reserves -32000..-32099 for these).
SERVER_BUSY = -32000          # too many clients connected; try again later
REQUEST_TIMEOUT = -32001      # a request line was not completed within the idle timeout

# One range per role (DESIGN.md "Control socket and CLI").
CODE_RANGES: dict[str, range] = {
    "node": range(100, 200),
    "ledger": range(200, 300),
    "market": range(300, 400),
    "harvest": range(400, 500),
    "fl": range(500, 600),
    "onion": range(600, 700),
    "registry": range(700, 800),
    "monitor": range(800, 900),
}

# node 1xx
NODE_NOT_READY = 100
NODE_DIAL_FAILED = 101
NODE_BAD_MULTIADDR = 102
NODE_UNKNOWN_PEER = 103
NODE_ROLE_UNAVAILABLE = 104

_YIELD_VALUE = opcode.opmap["YIELD_VALUE"]
_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
_MARK = "__fognode_rpc__"

Handler = Callable[..., Awaitable[Any]]


class Progress:
    """What a streaming method is handed (a keyword-only param annotated `Progress`, not a
    JSON param): `await progress(value)` sends the caller a JSON-RPC notification
    `{"method": "rpc.progress", "params": {"id": <request id>, "value": value}}` before the
    final reply (fognode-cli prints each as one line). Without a connection to stream to (a
    notification request, a batch, a direct call) the values are dropped."""

    def __init__(self, send: Callable[[Any], Awaitable[None]] | None = None) -> None:
        self._send = send

    async def __call__(self, value: Any) -> None:
        if self._send is not None:
            await self._send(value)


@dataclass(frozen=True)
class Param:
    name: str
    annotation: Any
    required: bool
    default: Any
    schema: dict[str, Any]
    positional: bool  # may be given positionally (not keyword-only)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    doc: str
    params: tuple[Param, ...]
    returns: dict[str, Any]
    handler: Handler = field(compare=False)
    progress: str | None = None      # the name of the handler's Progress param, if it streams
    # the handler never suspends (its code has no await): the server runs it in the reading
    # task, without a task of its own (server.py "Concurrency")
    inline: bool = field(default=False, compare=False)

    def usage(self) -> str:
        """One line: `wallet send TO AMOUNT [--memo MEMO]` (required positionals upper-case,
        options as `--name VALUE`, booleans as flags taking no value: `--flag`, `--no-flag` when
        the default is true, `--flag | --no-flag` when unset means "either"; optional ones in
        brackets)."""
        parts = [self.name.replace(".", " ").replace("_", "-")]  # typed as `ledger state-root`
        for p in self.params:
            if p.positional and p.required:
                parts.append(p.name.upper())
        for p in self.params:
            if p.positional and p.required:
                continue
            opt = f"--{p.name.replace('_', '-')}"
            if is_flag(p.schema):  # a flag takes no value: --x; --no-x when it defaults to true
                if p.default is True:
                    opt = f"--no-{p.name.replace('_', '-')}"
                elif p.default is None and not p.required:  # tri-state: unset, true, false
                    opt = f"{opt} | --no-{p.name.replace('_', '-')}"
            else:
                opt += f" {p.name.upper()}"
            parts.append(opt if p.required else f"[{opt}]")
        return " ".join(parts)

    def describe(self) -> dict[str, Any]:
        """The method's entry in `help` / `rpc.discover` (OpenRPC-like)."""
        return {
            "name": self.name,
            "summary": self.summary,
            "description": self.doc,
            "usage": self.usage(),
            "params": [
                {
                    "name": p.name,
                    "required": p.required,
                    "positional": p.positional,
                    "schema": p.schema,
                    **({"default": p.default} if not p.required else {}),
                }
                for p in self.params
            ],
            "result": {"name": "result", "schema": self.returns},
            **({"streams": True} if self.progress else {}),
        }

    def bind(self, params: Any) -> dict[str, Any]:
        """Validate JSON params (list, map or absent) into keyword arguments.

        Raises RpcError(INVALID_PARAMS) naming the parameter that was wrong.
        """
        if params is None:    # the usual status call: nothing to check but what is required
            for p in self.params:
                if p.required:
                    raise RpcError(INVALID_PARAMS, f"{self.name}: missing param {p.name!r}; usage: {self.usage()}")
            return {}
        kwargs: dict[str, Any] = {}
        if isinstance(params, list):
            pos = [p for p in self.params if p.positional]
            if len(params) > len(pos):
                raise RpcError(INVALID_PARAMS,
                               f"{self.name} takes at most {len(pos)} positional params, got {len(params)}; "
                               f"usage: {self.usage()}")
            for p, v in zip(pos, params):
                kwargs[p.name] = v
        elif isinstance(params, dict):
            known = [p.name for p in self.params]
            unknown = sorted(set(params) - set(known))
            if unknown:
                hint = ""
                close = [m for u in unknown for m in difflib.get_close_matches(u, known, n=1)]
                if close:
                    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)"
                raise RpcError(INVALID_PARAMS,
                               f"{self.name}: unknown param(s) {unknown}{hint}; usage: {self.usage()}")
            kwargs = dict(params)
        else:
            raise RpcError(INVALID_PARAMS,
                           f"{self.name}: params must be a list or an object, got {json_type(params)}")
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name not in kwargs:
                if p.required:
                    raise RpcError(INVALID_PARAMS, f"{self.name}: missing param {p.name!r}; usage: {self.usage()}")
                continue
            out[p.name] = check_param(self.name, p.name, p.annotation, kwargs[p.name])
        return out


def is_flag(schema: dict[str, Any]) -> bool:
    """A boolean param (`bool` or `bool | None`): a command-line flag, `--x` / `--no-x`."""
    if schema.get("type") == "boolean":
        return True
    arms = schema.get("anyOf", [])
    return bool(arms) and {a.get("type") for a in arms} == {"boolean", "null"}


def rpc_method(name: str) -> Callable[[Handler], Handler]:
    """Mark an async function or method as the RPC method `name` (`<role>.<verb>`)."""
    if not _NAME.match(name):
        raise ValueError(f"bad RPC method name {name!r}: want lower-case '<role>.<verb>'")

    def mark(fn: Handler) -> Handler:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"RPC method {name} must be an async function")
        setattr(fn, _MARK, name)
        return fn

    return mark


def spec_of(name: str, fn: Handler) -> MethodSpec:
    """Build a MethodSpec from a (bound) async function's signature, hints and docstring."""
    sig = inspect.signature(fn)
    hints = get_type_hints(fn)
    params = []
    progress: str | None = None
    for p in sig.parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name not in hints:
            raise TypeError(f"RPC method {name}: param {p.name!r} has no type hint")
        if hints[p.name] is Progress:
            if p.kind != p.KEYWORD_ONLY:
                raise TypeError(f"RPC method {name}: its Progress param {p.name!r} must be keyword-only")
            progress = p.name
            continue
        required = p.default is inspect.Parameter.empty
        params.append(Param(
            name=p.name,
            annotation=hints[p.name],
            required=required,
            default=None if required else p.default,
            schema=schema_of(hints[p.name]),
            positional=p.kind != p.KEYWORD_ONLY,
        ))
    doc = inspect.cleandoc(fn.__doc__ or "")
    if not doc:
        raise TypeError(f"RPC method {name} has no docstring (it is its help text)")
    summary = doc.split("\n\n")[0].replace("\n", " ")
    ret = hints.get("return", Any)
    try:
        returns = schema_of(ret)
    except TypeError:
        returns = {}
    return MethodSpec(name=name, summary=summary, doc=doc, params=tuple(params), returns=returns, handler=fn,
                      progress=progress, inline=progress is None and never_suspends(fn))


def never_suspends(fn: Callable[..., Any]) -> bool:
    """True if calling `fn` gives a coroutine that cannot suspend: a native `async def` (or a
    method of one) whose own code has no await, `async for` or `async with`. A coroutine
    suspends only by yielding from its own frame, so its code object decides; a wrapper that
    awaits what it wraps has the await in its own code and is not inline."""
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is None or not code.co_flags & inspect.CO_COROUTINE:
        return False
    # every instruction is one 2-byte unit (opcode, arg), so the opcodes are the even bytes;
    # this is what dis.get_instructions would say, about 100 times faster (a start has ~80 methods)
    return _YIELD_VALUE not in code.co_code[::2]


def run_inline(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (`never_suspends`) to its end in the calling task
    and return its value; its exceptions propagate. RuntimeError if it suspends after all."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a method declared as never suspending suspended")


def declared_methods(obj: object) -> list[MethodSpec]:
    """All methods of `obj` marked with @rpc_method, bound to it."""
    out = []
    for attr in dir(type(obj)):
        fn = getattr(type(obj), attr, None)
        name = getattr(fn, _MARK, None)
        if name is not None:
            out.append(spec_of(name, getattr(obj, attr)))
    return out


@dataclass(frozen=True)
class RoleDown:
    """Why a role's methods are withdrawn, and since when (Unix time)."""

    role: str
    reason: str
    since: float
    disabled: bool = False      # turned off in the config, not crashed or stopping


class MethodTable:
    """The daemon's table of RPC methods; names are unique (checked at start-up)."""

    def __init__(self) -> None:
        self._methods: dict[str, MethodSpec] = {}
        self._owner: dict[str, str] = {}
        self._withdrawn: dict[str, str] = {}  # methods of a role that is down (restarting or stopped)
        self._withdrawn_specs: dict[str, MethodSpec] = {}
        self._down: dict[str, RoleDown] = {}  # owner -> why its methods are withdrawn

    def add(self, spec: MethodSpec, owner: str) -> None:
        if spec.name in self._methods:
            raise ValueError(f"RPC method {spec.name} declared twice ({self._owner[spec.name]} and {owner})")
        self._methods[spec.name] = spec
        self._owner[spec.name] = owner
        self._withdrawn.pop(spec.name, None)
        self._withdrawn_specs.pop(spec.name, None)
        self._down.pop(owner, None)

    def add_object(self, obj: object, owner: str) -> None:
        """Add every @rpc_method of `obj`; all or none (ValueError on a duplicate name)."""
        specs = declared_methods(obj)
        for spec in specs:
            if spec.name in self._methods:
                raise ValueError(f"RPC method {spec.name} declared twice ({self._owner[spec.name]} and {owner})")
        for spec in specs:
            self.add(spec, owner)

    def remove_owner(self, owner: str, *, reason: str | None = None, since: float | None = None) -> None:
        """Withdraw `owner`'s methods; calls to them then say the role is down, not "not found".
        With `reason`, record why (and since when, Unix time; default now) for those answers."""
        for name in [n for n, o in self._owner.items() if o == owner]:
            self._withdrawn_specs[name] = self._methods.pop(name)
            del self._owner[name]
            self._withdrawn[name] = owner
        if reason is not None:
            self._down[owner] = RoleDown(owner, reason, time.time() if since is None else since)

    def add_disabled(self, cls: type, owner: str, reason: str) -> None:
        """Know the methods of a role the config turned off (`cls`, never instantiated): calls
        to them say the role is disabled and why (`reason`: how to turn it on), not "not found"."""
        for attr in dir(cls):
            fn = getattr(cls, attr, None)
            name = getattr(fn, _MARK, None)
            if name is None or name in self._methods:
                continue
            self._withdrawn_specs[name] = spec_of(name, typing.cast(Handler, fn))
            self._withdrawn[name] = owner
        self._down[owner] = RoleDown(owner, reason, time.time(), disabled=True)

    def withdrawn_owner(self, name: str) -> str | None:
        """The role whose method `name` was withdrawn because the role is down, if any."""
        return self._withdrawn.get(name)

    def down(self, owner: str) -> RoleDown | None:
        """Why `owner`'s methods are withdrawn, if it said (see remove_owner)."""
        return self._down.get(owner)

    def withdrawn(self) -> list[tuple[MethodSpec, str]]:
        """The withdrawn methods (name order) with the role that owned them."""
        return [(self._withdrawn_specs[n], self._withdrawn[n]) for n in sorted(self._withdrawn_specs)]

    def get(self, name: str) -> MethodSpec | None:
        return self._methods.get(name)

    def owner(self, name: str) -> str | None:
        return self._owner.get(name)

    def names(self) -> list[str]:
        return sorted(self._methods)

    def all(self) -> list[MethodSpec]:
        return [self._methods[n] for n in self.names()]

    def suggest(self, name: str, n: int = 3) -> list[str]:
        """Declared names close to `name` (for "did you mean" hints)."""
        names = self.names()
        close = difflib.get_close_matches(name, names, n=n, cutoff=0.75)
        if not close:  # `wallet` alone, or a verb without its role: `send`
            close = [m for m in names if m.startswith(name + ".") or m.endswith("." + name)][:n]
        return close
