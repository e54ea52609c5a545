"""Carrying out the FL core's actions: ONE table from action type to handler method.

`ActionHandler` names one method per action type of `actions.Action`; `HANDLERS` maps each
type to the call of its method, and `carry_out(handler, actions)` runs a list of them in order.
The trio role (executor.py) and the in-memory test harness (tests/fl/harness.py) implement
`ActionHandler`, so both carry actions out through the same table; a new action type without
an entry here fails `tests/fl/test_dispatch.py`, and one without a method fails type checking.
No trio, no I/O here.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Protocol, get_args

from fognode.protocols.fl.actions import (
    Action, Aggregate, AggregateSum, Emit, FetchModel, MessageRefused, PayRewards, PrepareTask,
    Publish, PushResult, ReportOutcome, RoundJudged, SaveModel, SendSecAgg, SendUpdate, Train, UpdateRefused)


class ActionHandler(Protocol):
    """Who carries the core's actions out (each method is handed one action; long work is
    started in the background and its outcome fed back to the core later)."""

    def publish(self, a: Publish) -> None: ...
    def prepare_task(self, a: PrepareTask) -> None: ...
    def fetch_model(self, a: FetchModel) -> None: ...
    def train(self, a: Train) -> None: ...
    def send_update(self, a: SendUpdate) -> None: ...
    def aggregate(self, a: Aggregate) -> None: ...
    def send_secagg(self, a: SendSecAgg) -> None: ...
    def aggregate_sum(self, a: AggregateSum) -> None: ...
    def emit(self, a: Emit) -> None: ...
    def report_outcome(self, a: ReportOutcome) -> None: ...
    def message_refused(self, a: MessageRefused) -> None: ...
    def update_refused(self, a: UpdateRefused) -> None: ...
    def save_model(self, a: SaveModel) -> None: ...
    def pay_rewards(self, a: PayRewards) -> None: ...
    def round_judged(self, a: RoundJudged) -> None: ...
    def push_result(self, a: PushResult) -> None: ...


Run = Callable[[ActionHandler, Any], None]

HANDLERS: Mapping[type, Run] = {
    Publish: lambda h, a: h.publish(a),
    PrepareTask: lambda h, a: h.prepare_task(a),
    FetchModel: lambda h, a: h.fetch_model(a),
    Train: lambda h, a: h.train(a),
    SendUpdate: lambda h, a: h.send_update(a),
    Aggregate: lambda h, a: h.aggregate(a),
    SendSecAgg: lambda h, a: h.send_secagg(a),
    AggregateSum: lambda h, a: h.aggregate_sum(a),
    Emit: lambda h, a: h.emit(a),
    ReportOutcome: lambda h, a: h.report_outcome(a),
    MessageRefused: lambda h, a: h.message_refused(a),
    UpdateRefused: lambda h, a: h.update_refused(a),
    SaveModel: lambda h, a: h.save_model(a),
    PayRewards: lambda h, a: h.pay_rewards(a),
    RoundJudged: lambda h, a: h.round_judged(a),
    PushResult: lambda h, a: h.push_result(a),
}

ACTION_TYPES: frozenset[type] = frozenset(get_args(Action))


def carry_out(handler: ActionHandler, actions: Iterable[Action]) -> None:
    """Hand each action, in order, to its method of `handler`."""
    for a in actions:
        run = HANDLERS.get(type(a))
        if run is None:
            raise TypeError(f"no handler for FL action {type(a).__name__} (add it to dispatch.HANDLERS)")
        run(handler, a)
