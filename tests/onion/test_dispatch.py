"""Every onion action type has its entry in the one dispatch table, and the simulator's
handler implements every method of it."""
from __future__ import annotations

import inspect

from fognode.protocols.onion.dispatch import ACTION_TYPES, HANDLERS, ActionHandler
from tests.onion.sim import SimHandler


def test_every_action_has_a_handler() -> None:
    assert set(HANDLERS) == ACTION_TYPES


def test_the_simulator_implements_the_handler() -> None:
    wanted = {n for n, _ in inspect.getmembers(ActionHandler, inspect.isfunction) if not n.startswith("_")}
    assert wanted <= {n for n in dir(SimHandler) if not n.startswith("_")}
