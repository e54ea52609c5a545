"""Escrows are crash-safe like transfers: the undo journal restores escrow records exactly, a
full disk (a real tmpfs filled to the last page, tests/ledger/fullfs.py) leaves memory equal
to disk, `ledger.verify`'s replay reproduces every escrow record and names an edited one, and
the escrow lock survives a restart (reloaded from the persisted validator locks). The checks
are storage_checks.py's, shared with the reward pools."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fognode.ledger.actions import SendRejection
from fognode.ledger.amounts import MICRO
from fognode.ledger.errors import Reason
from fognode.ledger.messages import Certificate
from fognode.ledger.receipts import default_registry
from fognode.ledger.state import LedgerState

from .escrow_helpers import eid, open_order, payout, refund, signed
from .helpers import NOW, certify, key, pk, validator_keys
from .storage_checks import (check_full_disk, check_rollback_restores,
                             check_verify_names_an_edited_record, restart_validator)

CUSTOMER, PROVIDER = key(0), key(1)
DEADLINE = int(NOW) + 1000


def escrow_stream(n: int) -> list[Certificate]:
    """n escrows of the customer, each opened then paid twice by the provider (3n certificates)."""
    signers = validator_keys()[:3]
    out = []
    for i in range(n):
        ag = i.to_bytes(32, "big")
        e = eid(CUSTOMER, ag)
        out.append(certify(signed(CUSTOMER, open_order(CUSTOMER, pk(PROVIDER), 10 * MICRO, i, deadline=DEADLINE,
                                                       agreement=ag)), signers))
        out.append(certify(signed(PROVIDER, payout(PROVIDER, CUSTOMER, e, 1, 3 * MICRO, 2 * i)), signers))
        out.append(certify(signed(PROVIDER, payout(PROVIDER, CUSTOMER, e, 2, 7 * MICRO, 2 * i + 1)), signers))
    return out


def snapshot(s: LedgerState) -> tuple[Any, ...]:
    return dict(s.accounts), s.supply, dict(s.escrows), s.applied, s.accumulator, s.root()


def test_rollback_restores_escrow_records_exactly() -> None:
    assert check_rollback_restores(escrow_stream(6), 6, snapshot, lambda s: s.escrows) == 6


def test_escrows_on_a_full_disk_memory_equals_disk_and_replay_is_clean() -> None:
    check_full_disk(escrow_stream(60), lambda s: s.escrows)


def test_verify_names_an_edited_escrow_record(tmp_path: Path) -> None:
    check_verify_names_an_edited_record(tmp_path, escrow_stream(2), lambda s: s.escrows,
                                        eid(CUSTOMER, (1).to_bytes(32, "big")), b"E/", "escrow")


def test_the_escrow_lock_survives_a_restart(tmp_path: Path) -> None:
    """A validator votes for a payout, persists its lock, 'crashes'; restarted from its store
    it still refuses the refund of the same escrow state."""
    e = eid(CUSTOMER, (0).to_bytes(32, "big"))
    acts = restart_validator(tmp_path, escrow_stream(1)[0], default_registry(),
                             signed(PROVIDER, payout(PROVIDER, CUSTOMER, e, 1, 1, 0)), NOW,
                             signed(CUSTOMER, refund(CUSTOMER, e, 1, 1)), DEADLINE + 1)
    rej = [a for a in acts if isinstance(a, SendRejection)]
    assert rej and rej[0].rejection.reason is Reason.CONFLICT and "escrow" in rej[0].rejection.message
