"""A fuzzer finding against a real daemon: mint orders whose receipt body cannot be
re-encoded (tools/bench/attacks/unencodable_receipt.py) are refused as the sending peer's
fault. Before the fix each one was an ERROR "handler failed" with a LocalProtocolError
traceback in the daemon's log, charged to nobody."""
from __future__ import annotations

import pytest
import trio

from fognode.tools.bench.attacks.unencodable_receipt import BAD_BODIES, attack

from tests.conftest import NodeFactory


@pytest.mark.slow
async def test_unencodable_receipts_are_the_peers_fault(node_factory: NodeFactory) -> None:
    net = node_factory(1)
    node = net.nodes[0]
    done = await attack(node.addr, seconds=3.0)
    assert done["orders_sent"] >= len(BAD_BODIES), done
    assert done["replies"] == 0 and done["streams_refused"] == done["orders_sent"], done
    assert (await trio.to_thread.run_sync(node.rpc, "node.info"))["peer_id"] == node.peer_id
    log = node.log_path.read_text(errors="replace")
    assert "handler failed" not in log and "LocalProtocolError" not in log, net.log_tail(0, 60)
    # the peer's faults are rate-limited (one WARNING per peer and protocol a minute): the first
    # one is logged, as the peer's fault; each reason is checked at the decoder in test_regressions
    whys = ("wire floats must be finite", "wire map keys must be str", "type Timestamp cannot go on the wire")
    assert any("WARNING" in line and "/fognode/ledger/order" in line and f"ledger.Receipt: field 'body': {why}" in line
               for line in log.splitlines() for why in whys), f"no WARNING for the bad receipts:\n{net.log_tail(0, 60)}"
    assert "Traceback" not in log, net.log_tail(0, 60)
