"""Funded FL sessions: when a session is paid, how long its reward pool stays open, and who
closes it when (sans-IO; rewards/ledger.py carries it out against the ledger).

A session with a reward budget is funded before anyone hears of it: `fl.start` names the
node's default wallet as the announcement's `funder` and locks the whole budget into the
ledger reward pool (funder, session id) (ledger/rewardpool.py); a wallet that cannot pay it
gets an error naming the shortfall and no session starts. Rounds are paid from the pool (the
adopted aggregator's "fl_update" receipts, as before, but as pool payouts instead of mints),
and the pool is closed after its deadline, which returns what was not paid to the funder.

The pool's deadline (`pool_deadline`) is the latest a session can still run a round: the
announcement's time, the opt-in window, every round taking its whole deadline with every
retry, and `DEADLINE_SLACK` for the last payouts. Payouts are signed only before it, closes
only after it, so payers and closers do not race.

Who closes, and when (`close_due`), each node judging by its own clock:
- the funder's node, `SETTLE` seconds after the deadline: the wallet's clock margin (5 s) and
  two ledger sync rounds (10 s each) for the last payouts' certificates to reach its replica.
  Its close states the payouts its replica applied; one that missed a payout is refused by
  the validators that applied it (never certified: ledger/rewardpool.py, invariant 3), and
  if validators as far behind voted for it, it stays in flight and the funder's wallet is
  stuck behind it, while the pool can still be closed by another wallet after the grace
  period. It finds its pools in the ledger state, so a restart in between changes nothing;
- if the funder's node is gone: the session's fallback coordinators (named in the signed
  announcement), the k-th one from `deadline + grace + k * SETTLE`, so they do not race each
  other (two closes of one pool agree anyway: the second pays only its fee). The refund goes
  to the funder whoever closes.
Nobody else closes; any wallet may (rewardpool.py), e.g. an operator's by hand.
"""
from __future__ import annotations

import math

from fognode.protocols.fl.messages import SessionAnnouncement, coordinators_of

POOL_GRACE = 600          # seconds after the deadline before others than the funder may close
SETTLE = 30.0             # seconds after a closing time before a node sends its close
DEADLINE_SLACK = 20.0     # seconds after the session's longest run for its last payouts


def pool_deadline(ann: SessionAnnouncement) -> int:
    """The unix second until which the session's pool pays (see the module docstring)."""
    s = ann.spec
    return math.ceil(ann.created + s.optin_seconds + s.rounds * s.deadline * (1 + s.max_retries) + DEADLINE_SLACK)


def close_due(*, funder: bytes, deadline: int, grace: int, closed: bool, my_wallet: bytes | None,
              me: str, ann: SessionAnnouncement | None, now: float) -> bool:
    """Whether this node (`me`, wallet `my_wallet`) should close the pool now; `ann` is the
    session's announcement when this node knows it."""
    if closed:
        return False
    if my_wallet is not None and my_wallet == funder:
        return now >= deadline + SETTLE
    if ann is None:
        return False
    coords = coordinators_of(ann)
    if me not in coords[1:]:
        return False
    rank = coords.index(me)
    return now >= deadline + grace + rank * SETTLE
