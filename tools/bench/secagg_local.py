"""Secure aggregation run in memory, without a network: one `SecAggParticipant` per input and
a `SecAggAggregator` (protocols/fl/secagg/core.py), messages handed over by function call,
optional dropouts before masking or unmasking. Used by the secagg tests and by the
aggregation benchmark (fl_aggregation.py); not part of the daemon."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from fognode.protocols.fl.secagg.core import (
    Action, Completed, Failed, SecAggAggregator, SecAggConfig, SecAggParticipant, Send)
from fognode.protocols.fl.secagg.messages import ShareBundle, UnmaskRequest


def run_secagg_locally(config: SecAggConfig, inputs: Mapping[str, np.ndarray], *,
                       drop_before_masking: Sequence[str] = (),
                       drop_before_unmasking: Sequence[str] = ()) -> list[Action]:
    """Drive one participant per input and an aggregator in memory (tests and the benchmark):
    peers in `drop_before_masking` vanish after sharing keys, peers in `drop_before_unmasking`
    after sending their masked input. Returns the aggregator's final actions."""
    parts = {p: SecAggParticipant(config, p) for p in inputs}
    agg = SecAggAggregator(config, now=0.0)
    now = 0.0
    pending: list[Action] = []
    for p, part in parts.items():
        pending += agg.receive(p, part.advertise(), now)
    while True:
        if not pending:
            if agg.finished:
                break
            now = agg.deadline            # nobody else will answer: let the phase time out
            pending += agg.tick(now)
            if not pending:
                break
            continue
        act = pending.pop(0)
        if not isinstance(act, Send):
            return [act]
        part = parts[act.peer]
        msg = act.message
        if isinstance(msg, UnmaskRequest) and act.peer in drop_before_unmasking:
            continue
        reply = part.receive(msg)
        if reply is not None:
            pending += agg.receive(act.peer, reply, now)
        if isinstance(msg, ShareBundle) and act.peer not in drop_before_masking:
            pending += agg.receive(act.peer, part.masked_input(inputs[act.peer]), now)
    return [Completed(agg.result)] if agg.result is not None else \
        [Failed(agg.failure or "secure aggregation did not finish")]
