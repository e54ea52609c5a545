"""Declaring RPC methods: binding, coercion of CLI text, errors, usage and schema."""
from __future__ import annotations

from typing import Any, Literal

import pytest
import trio

from fognode.node.errors import RpcError
from fognode.node.rpc.methods import (
    INVALID_PARAMS,
    MethodTable,
    Progress,
    declared_methods,
    never_suspends,
    rpc_method,
    run_inline,
    spec_of,
)


class Wallet:
    @rpc_method("wallet.send")
    async def send(self, to: str, amount: int, memo: str = "", *, fee: float = 0.0,
                   urgent: bool = False) -> dict[str, Any]:
        """Send AMOUNT to TO.

        Waits for the certificate and returns the transaction id.
        """
        return {"to": to, "amount": amount, "memo": memo, "fee": fee, "urgent": urgent}

    @rpc_method("wallet.pick")
    async def pick(self, mode: Literal["fast", "safe"], level: Literal[1, 2, 3] = 1,
                   tags: list[str] | None = None, weights: list[float] = [],  # noqa: B006
                   extra: dict[str, int] | None = None, *, key: str) -> None:
        """Pick things."""

    async def not_rpc(self) -> None:
        """Not declared."""


def specs() -> dict[str, Any]:
    return {s.name: s for s in declared_methods(Wallet())}


def bad(spec: Any, params: Any) -> str:
    with pytest.raises(RpcError) as ei:
        spec.bind(params)
    assert ei.value.code == INVALID_PARAMS
    return ei.value.message


def test_declared_methods_found_and_bound() -> None:
    s = specs()
    assert sorted(s) == ["wallet.pick", "wallet.send"]
    send = s["wallet.send"]
    assert send.summary == "Send AMOUNT to TO."
    assert "Waits for the certificate" in send.doc


async def test_handler_is_bound_method() -> None:
    send = specs()["wallet.send"]
    out = await send.handler(**send.bind(["bob", "5"]))
    assert out == {"to": "bob", "amount": 5, "memo": "", "fee": 0.0, "urgent": False}


def test_bind_positional_and_named() -> None:
    send = specs()["wallet.send"]
    assert send.bind(["bob", 10, "hi"]) == {"to": "bob", "amount": 10, "memo": "hi"}
    assert send.bind({"to": "bob", "amount": 10, "fee": 0.5, "urgent": True}) == {
        "to": "bob", "amount": 10, "fee": 0.5, "urgent": True}
    # keyword-only params are not positional: a 4th positional is one too many
    msg = bad(send, ["bob", 1, "m", 0.1])
    assert "at most 3 positional" in msg and "usage: wallet send TO AMOUNT" in msg


def test_coercion_from_cli_text() -> None:
    send = specs()["wallet.send"]
    got = send.bind({"to": 42, "amount": " 10 ", "fee": "0.25", "urgent": "yes"})
    assert got == {"to": "42", "amount": 10, "fee": 0.25, "urgent": True}
    assert send.bind({"to": "a", "amount": "-3", "urgent": "false"})["urgent"] is False


def test_wrong_types_say_what_was_wrong() -> None:
    send = specs()["wallet.send"]
    assert "param 'amount' must be an integer, got string 'ten'" in bad(send, ["bob", "ten"])
    assert "param 'amount' must be an integer, got number 1.5" in bad(send, ["bob", 1.5])
    assert "param 'amount' must be an integer, got boolean True" in bad(send, ["bob", True])
    assert "param 'fee' must be a number" in bad(send, {"to": "b", "amount": 1, "fee": "inf"})
    assert "param 'urgent' must be a boolean" in bad(send, {"to": "b", "amount": 1, "urgent": "maybe"})
    assert "param 'to' must be a string, got list" in bad(send, [["x"], 1])
    # absurdly long digit strings are an invalid param, not a crash
    assert "must be an integer" in bad(send, ["bob", "9" * 5000])


def test_missing_and_unknown_params() -> None:
    send = specs()["wallet.send"]
    assert "missing param 'amount'" in bad(send, ["bob"])
    assert "missing param 'to'" in bad(send, None)
    msg = bad(send, {"to": "b", "amout": 1})
    assert "unknown param(s) ['amout']" in msg and "did you mean 'amount'" in msg
    assert "params must be a list or an object, got string" in bad(send, "bob")


def test_literal_choices() -> None:
    pick = specs()["wallet.pick"]
    assert pick.bind({"mode": "fast", "key": "k"}) == {"mode": "fast", "key": "k"}
    assert pick.bind({"mode": "safe", "level": "3", "key": "k"})["level"] == 3
    assert pick.bind({"mode": "safe", "level": 2, "key": "k"})["level"] == 2
    assert "must be one of ['fast', 'safe'], got 'slow'" in bad(pick, {"mode": "slow", "key": "k"})
    # True == 1 in Python, but True is not the choice 1
    assert "must be one of [1, 2, 3]" in bad(pick, {"mode": "fast", "level": True, "key": "k"})
    assert "missing param 'key'" in bad(pick, ["fast"])


def test_lists_dicts_optional() -> None:
    pick = specs()["wallet.pick"]
    got = pick.bind({"mode": "fast", "tags": "a,b,,c", "weights": ["1", 2.5], "key": "k"})
    assert got["tags"] == ["a", "b", "c"] and got["weights"] == [1.0, 2.5]
    assert pick.bind({"mode": "fast", "tags": None, "key": "k"})["tags"] is None
    assert pick.bind({"mode": "fast", "extra": {"x": "2"}, "key": "k"})["extra"] == {"x": 2}
    msg = bad(pick, {"mode": "fast", "weights": [1, "x"], "key": "k"})
    assert "param 'weights[1]' must be a number, got string 'x'" in msg
    msg = bad(pick, {"mode": "fast", "tags": 5, "key": "k"})
    assert "param 'tags' must be a list, got number 5" in msg
    assert "param 'extra.y' must be an integer" in bad(pick, {"mode": "fast", "extra": {"y": []}, "key": "k"})


def test_usage_and_schema() -> None:
    s = specs()
    assert s["wallet.send"].usage() == "wallet send TO AMOUNT [--memo MEMO] [--fee FEE] [--urgent]"
    assert s["wallet.pick"].usage() == (
        "wallet pick MODE [--level LEVEL] [--tags TAGS] [--weights WEIGHTS] [--extra EXTRA] --key KEY")
    d = s["wallet.pick"].describe()
    params = {p["name"]: p for p in d["params"]}
    assert params["mode"] == {"name": "mode", "required": True, "positional": True,
                              "schema": {"enum": ["fast", "safe"]}}
    assert params["level"]["default"] == 1
    assert params["tags"]["schema"] == {"anyOf": [{"type": "array", "items": {"type": "string"}},
                                                  {"type": "null"}]}
    assert params["extra"]["schema"]["anyOf"][0] == {"type": "object",
                                                     "additionalProperties": {"type": "integer"}}
    assert params["key"]["positional"] is False and params["key"]["required"] is True
    assert d["result"]["schema"] == {"type": "null"}
    assert s["wallet.send"].describe()["result"]["schema"] == {"type": "object", "additionalProperties": {}}


def test_declaration_errors() -> None:
    with pytest.raises(ValueError, match="bad RPC method name"):
        rpc_method("Wallet.Send")
    with pytest.raises(TypeError, match="must be an async function"):
        @rpc_method("x.y")
        def sync() -> None:  # pragma: no cover - refused at declaration
            """Doc."""

    async def nodoc(a: int) -> None:
        pass

    with pytest.raises(TypeError, match="has no docstring"):
        spec_of("x.nodoc", nodoc)

    async def nohint(a) -> None:  # type: ignore[no-untyped-def]
        """Doc."""

    with pytest.raises(TypeError, match="param 'a' has no type hint"):
        spec_of("x.nohint", nohint)

    async def weird(a: bytes) -> None:
        """Doc."""

    with pytest.raises(TypeError, match="not supported"):
        spec_of("x.weird", weird)


def test_table_refuses_duplicates_and_suggests() -> None:
    t = MethodTable()
    t.add_object(Wallet(), "ledger")
    with pytest.raises(ValueError, match="wallet.pick declared twice \\(ledger and market\\)"):
        t.add_object(Wallet(), "market")
    assert t.owner("wallet.send") == "ledger"  # all or nothing: nothing of market's was added
    assert t.names() == ["wallet.pick", "wallet.send"]
    assert t.owner("wallet.send") == "ledger"
    assert t.suggest("wallet.sned") == ["wallet.send"]
    assert t.suggest("wallet") == ["wallet.pick", "wallet.send"]
    assert t.suggest("send") == ["wallet.send"]
    assert t.suggest("zzz") == []
    t.remove_owner("ledger")
    assert t.names() == [] and t.get("wallet.send") is None


class Filters:
    @rpc_method("fl.start")
    async def start(self, task: str, strategy_params: dict[str, float] | None = None, lr: float = 0.01,
                    online: bool | None = None, verbose: bool = True, secagg: bool = False) -> None:
        """Start."""


def test_json_integers_inside_objects_stay_integers() -> None:
    start = declared_methods(Filters())[0]
    got = start.bind({"task": "t", "strategy_params": {"f": 1, "mu": 0.5}, "lr": 1})
    assert got["strategy_params"] == {"f": 1, "mu": 0.5} and type(got["strategy_params"]["f"]) is int
    assert type(got["lr"]) is float  # a float param of its own still gets a float
    assert type(specs()["wallet.pick"].bind({"mode": "fast", "weights": [1], "key": "k"})["weights"][0]) is int
    assert "strategy_params.f' must be a number" in bad(start, {"task": "t", "strategy_params": {"f": True}})


def test_boolean_params_are_flags_in_usage() -> None:
    start = declared_methods(Filters())[0]
    assert start.usage() == ("fl start TASK [--strategy-params STRATEGY_PARAMS] [--lr LR] "
                             "[--online | --no-online] [--no-verbose] [--secagg]")


def test_a_withdrawn_role_says_why_and_since_when() -> None:
    table = MethodTable()
    table.add_object(Wallet(), "ledger")
    table.remove_owner("ledger", reason="crashed (boom)", since=100.0)
    assert table.get("wallet.send") is None and table.withdrawn_owner("wallet.send") == "ledger"
    down = table.down("ledger")
    assert down is not None and (down.reason, down.since) == ("crashed (boom)", 100.0)
    assert [spec.name for spec, owner in table.withdrawn()] == ["wallet.pick", "wallet.send"]
    table.remove_owner("ledger")  # a restart attempt withdraws nothing more and keeps the reason
    assert table.down("ledger") == down
    table.add_object(Wallet(), "ledger")  # back up: nothing withdrawn
    assert table.down("ledger") is None and table.withdrawn() == [] and table.get("wallet.send") is not None


def test_handlers_that_never_suspend_are_served_inline() -> None:
    """A handler whose code has no await (nor `async for`/`async with`) cannot suspend: the
    server answers it in the reading task (spec.inline). Anything that may wait, and every
    streaming method, gets a task of its own."""
    class Mixed:
        @rpc_method("mix.status")
        async def status(self) -> dict[str, Any]:
            """No await: inline."""
            return {"ok": [x for x in range(3)]}

        @rpc_method("mix.wait")
        async def wait(self) -> None:
            """Awaits: a task."""
            await trio.sleep(0)

        @rpc_method("mix.each")
        async def each(self, items: list[str]) -> list[str]:
            """An async comprehension awaits too."""
            return [x async for x in aiter_of(items)]

        @rpc_method("mix.stream")
        async def stream(self, *, progress: Progress) -> None:
            """Streams: a task."""
            await progress(1)

    async def aiter_of(items: list[str]) -> Any:
        for x in items:
            yield x

    got = {s.name: s.inline for s in declared_methods(Mixed())}
    assert got == {"mix.status": True, "mix.wait": False, "mix.each": False, "mix.stream": False}
    assert not never_suspends(lambda: None) and not never_suspends(print)
    assert run_inline(Mixed().status()) == {"ok": [0, 1, 2]}
    with pytest.raises(RuntimeError, match="suspended"):
        run_inline(Mixed().wait())
