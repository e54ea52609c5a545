"""Which model fetches a node asks for, sans-IO (FlCore's steps; `FetchModel` actions):

- `need_model`: a model the node needs and neither holds nor fetches already, from the
  sources given (not itself);
- `prefetch`: a participant of the round just completed fetches the round's new model from
  its aggregator as soon as the result arrives, ahead of the next plan, which will most likely
  build on it: the plan then finds its base model here or on its way and training starts at
  once, instead of after a fetch that begins when the plan arrives (about a fifth of a round
  on 10 daemons). The coordinator fetches the same model meanwhile (coordinating.py) before
  it plans, so the prefetch is off the round's critical path;
- `fetch_ended`: a fetch succeeded or failed; a failed prefetch whose model the current plan
  now wants (the plan found the fetch under way and asked for none) is asked again of the
  plan's sources, once.
"""
from __future__ import annotations

from fognode.protocols.fl.actions import Action, FetchModel
from fognode.protocols.fl.session.rounds import ParticipantState
from fognode.protocols.fl.session.state import Session


def need_model(s: Session, me: str, h: bytes, sources: tuple[str, ...]) -> list[Action]:
    """[FetchModel] of `h` from `sources` other than `me`, unless held or under way."""
    if h in s.models or h in s.fetching:
        return []
    srcs = tuple(p for p in sources if p != me)
    if not srcs:
        return []
    s.fetching.add(h)
    return [FetchModel(s.sid, h, srcs)]


def prefetch(s: Session, me: str, h: bytes, aggregator: str) -> list[Action]:
    """[FetchModel] of a round's new model `h` from its `aggregator`, ahead of the next plan."""
    out = need_model(s, me, h, (aggregator,))
    if out:
        s.prefetching.add(h)
    return out


def fetch_ended(s: Session, me: str, h: bytes, ok: bool) -> list[Action]:
    """A fetch of `h` ended; what a failed prefetch leaves to fetch."""
    s.fetching.discard(h)
    was_prefetch = h in s.prefetching
    s.prefetching.discard(h)
    pr = s.participant
    if ok or not was_prefetch or pr is None or pr.state != ParticipantState.FETCHING \
            or pr.plan.base_model_hash != h:
        return []
    return need_model(s, me, h, pr.plan.sources)
