"""The one dispatch table (protocols/fl/dispatch.py): exhaustive over the action union, each
entry calls the handler method named after its action type, and both the role's executor and
the in-memory harness implement every method."""
from __future__ import annotations

import re
from typing import Any

import pytest

from fognode.protocols.fl.dispatch import ACTION_TYPES, HANDLERS, ActionHandler, carry_out
from fognode.protocols.fl.executor import RoleActions
from tests.fl.harness import SimActions


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace("sec_agg", "secagg")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda a: self.calls.append((name, a))


def test_the_table_covers_exactly_the_action_union() -> None:
    assert set(HANDLERS) == set(ACTION_TYPES)
    assert len(ACTION_TYPES) == 16


KINDS = sorted(ACTION_TYPES, key=lambda t: t.__name__)


@pytest.mark.parametrize("kind", KINDS, ids=[t.__name__ for t in KINDS])
def test_each_entry_calls_the_method_named_after_its_action(kind: type) -> None:
    rec, action = Recorder(), object()
    HANDLERS[kind](rec, action)
    assert rec.calls == [(_snake(kind.__name__), action)]


def test_role_and_harness_implement_every_handler_method() -> None:
    methods = {m for m in vars(ActionHandler) if not m.startswith("_")}
    assert methods == {_snake(t.__name__) for t in ACTION_TYPES}
    for impl in (RoleActions, SimActions):
        missing = {m for m in methods if not callable(getattr(impl, m, None))}
        assert not missing, f"{impl.__name__} lacks {missing}"


def test_an_action_without_an_entry_is_refused() -> None:
    class Unknown:
        pass

    with pytest.raises(TypeError, match="no handler for FL action Unknown"):
        carry_out(Recorder(), [Unknown()])
