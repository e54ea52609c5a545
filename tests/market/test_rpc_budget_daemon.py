"""A bad BUDGET of market.request / market.burst / market.service on a real daemon is a bad
parameter (error 304, BAD_REQUEST, naming `budget`), not a failed payment (307, which said
"RpcError: budget: ..." because the parse ran inside the handler that wraps ledger errors)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fognode.node.errors import RpcError
from fognode.protocols.market import errors as E
from fognode.tools.devnet import Devnet
from tests.market.wat import WORK_WAT

pytestmark = pytest.mark.slow


def test_a_bad_budget_is_a_bad_parameter_naming_it(node_factory: Any, tmp_path: Path) -> None:
    net: Devnet = node_factory(1)
    node = net.nodes[0]
    wat = tmp_path / "work.wat"
    wat.write_text(WORK_WAT)
    calls = [
        ("market.request", {"module": str(wat), "export": "work", "budget": "0", "args": [1]}),
        ("market.request", {"module": str(wat), "export": "work", "budget": "abc", "args": [1]}),
        ("market.burst", {"module": str(wat), "export": "work", "budget": "-1", "count": 2}),
        ("market.service", {"service": "fog.hosting", "budget": "0", "seconds": 600}),
    ]
    for method, params in calls:
        with pytest.raises(RpcError) as e:
            node.rpc(method, params)
        assert e.value.code == E.BAD_REQUEST, (method, params["budget"], e.value.code, str(e.value))
        assert str(e.value).startswith("budget: "), (method, str(e.value))
    # a parameter out of its range is named alone, with its range and value (one sentence listed
    # every range of market.service before)
    for method, params, said in [
        ("market.service", {"service": "fog.hosting", "budget": "5", "seconds": 600, "uptime": 101},
         "uptime must be 0..100 %, got 101"),
        ("market.service", {"service": "fog.hosting", "budget": "5", "seconds": 5}, "seconds must be 10..2,592,000 s, got 5"),
        ("market.offer", {"price": "1", "ttl": 30}, "ttl must be 60..604,800 s, got 30"),
    ]:
        with pytest.raises(RpcError) as e:
            node.rpc(method, params)
        assert e.value.code == E.BAD_REQUEST and str(e.value) == said, (method, str(e.value))
