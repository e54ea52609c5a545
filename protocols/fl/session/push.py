"""The round result's push to the acting coordinator, the core's side (sans-IO; the wire is
transfer/push.py).

The aggregator of a round publishes its RoundResult on gossip (every node needs it) and, when
the acting coordinator advertised RESULT_PUSH in its OptIn facts, also pushes the result and
the new model to it over the transfer session (`PushResult`), so that the coordinator completes
the round without a gossip hop and a fetch. Every node running this code advertises RESULT_PUSH
(`advertising`); a coordinator that does not (an older node) never gets the request.

At the coordinator (`ResultPush`), whichever of the gossiped result and the push arrives first
is applied, once:
- a push is taken (`refusal` is None) only while the result is still awaited: not for a model
  already held or being fetched; taking it marks the model as being fetched, so a result
  gossiped meanwhile starts no second fetch;
- the pushed model, its hash checked by the caller exactly as a fetched one, is kept and the
  result applied (`arrived`): through the gossip path (`receive`) when it is not yet applied,
  else as the awaited fetch's outcome (`model_fetched`);
- a push that fails (bad hash, stream closed, timeout: `failed`) releases the mark and falls
  back to the gossip path: the result applied if still awaited, then the model fetched.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from fognode.protocols.fl.actions import Action, Publish, PushResult
from fognode.protocols.fl.messages import DeviceFacts, RoundResult, coordinators_of
from fognode.protocols.fl.messages_stream import RESULT_PUSH
from fognode.protocols.fl.session.coordinator import Phase
from fognode.protocols.fl.session.state import Session

Receive = Callable[[str, RoundResult, float], list[Action]]
ModelFetched = Callable[[bytes, bytes, np.ndarray, dict[str, np.ndarray], float], list[Action]]
NeedModel = Callable[[Session, bytes, tuple[str, ...]], list[Action]]


def advertising(facts: DeviceFacts) -> DeviceFacts:
    """`facts` with the RESULT_PUSH capability (this node takes "result" requests)."""
    if RESULT_PUSH in facts.capabilities:
        return facts
    return replace(facts, capabilities=(*facts.capabilities, RESULT_PUSH))


class ResultPush:
    """Both ends of the push in the core: the aggregator's `after_aggregation`, the
    coordinator's `refusal`, `arrived` and `failed` (see the module docstring)."""

    def __init__(self, *, me: str, sessions: dict[bytes, Session], seen_peers: dict[str, DeviceFacts],
                 receive: Receive, model_fetched: ModelFetched, need_model: NeedModel) -> None:
        self.me = me
        self.sessions = sessions
        self.seen_peers = seen_peers
        self._receive = receive
        self._model_fetched = model_fetched
        self._need_model = need_model

    def after_aggregation(self, sid: bytes, out: list[Action]) -> list[Action]:
        """`out` (an aggregation's actions) plus a PushResult when it published this node's
        result, its model is held and the acting coordinator advertises RESULT_PUSH."""
        s = self.sessions.get(sid)
        if s is None or s.plan is None:
            return out
        coords = coordinators_of(s.ann)
        coord = coords[s.plan.rank] if s.plan.rank < len(coords) else ""
        facts = self.seen_peers.get(coord)
        if not coord or coord == self.me or facts is None or RESULT_PUSH not in facts.capabilities:
            return out
        for a in out:
            if isinstance(a, Publish) and isinstance(a.msg, RoundResult) \
                    and a.msg.receipt.aggregator == self.me and a.msg.receipt.model_hash in s.models:
                return out + [PushResult(sid, coord, a.msg)]
        return out

    def refusal(self, peer: str, res: RoundResult) -> str | None:
        """Why this node does not take `peer`'s push of `res` (None: it does, and marks the
        model as being fetched until `arrived` or `failed`)."""
        s = self.sessions.get(res.receipt.session_id)
        c = s.coordinator if s is not None else None
        if s is None or c is None or s.state.ended:
            return "this node does not coordinate that session"
        h = res.receipt.model_hash
        if h in s.models or h in s.fetching:
            return "the model is here or on its way"
        if not c.accepts_result(peer, res):
            return "that result is not awaited"
        s.fetching.add(h)
        return None

    def arrived(self, peer: str, res: RoundResult, params: np.ndarray,
                state: dict[str, np.ndarray], now: float) -> list[Action]:
        """The pushed model of a taken push arrived, its hash checked by the caller."""
        s = self.sessions.get(res.receipt.session_id)
        if s is None:
            return []
        c, h = s.coordinator, res.receipt.model_hash
        if c is not None and c.accepts_result(peer, res):
            out = self._model_fetched(s.sid, h, params, state, now)   # held: receive completes
            return out + self._receive(peer, res, now)
        return self._model_fetched(s.sid, h, params, state, now)      # the gossip came first

    def failed(self, peer: str, res: RoundResult, now: float) -> list[Action]:
        """A taken push failed: back to the gossip path (apply the result, fetch the model)."""
        s = self.sessions.get(res.receipt.session_id)
        if s is None:
            return []
        h = res.receipt.model_hash
        s.fetching.discard(h)
        c = s.coordinator
        if c is not None and c.accepts_result(peer, res):
            return self._receive(peer, res, now)
        if c is not None and c.phase == Phase.FETCHING and c.pending is not None \
                and c.pending.receipt.model_hash == h:
            return self._need_model(s, h, (res.receipt.aggregator,))
        return []
