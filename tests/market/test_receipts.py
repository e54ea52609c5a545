"""The provider's check of a customer's work receipt (provider.py `check_receipt`): only the
agreement's customer, for this provider and this agreement, within what its debit notes
granted; the contribution ledger then refuses replays and a second receipt per job
(tests/harvest/test_contribution.py), and the daemons credit them end to end
(test_role_daemons.py)."""
from __future__ import annotations

import hashlib

import pytest
from nacl.signing import SigningKey

from fognode.node.peerid import peer_id_from_pubkey
from fognode.node.wire import pack, unpack
from fognode.protocols.harvest.receipts import (Outcome, ReceiptRefused, RefuseReason,
                                                sign_work_receipt)
from fognode.protocols.market.provider import check_receipt

AG = hashlib.blake2b(b"agreement", digest_size=32).digest()


def key(name: str) -> SigningKey:
    return SigningKey(hashlib.sha256(name.encode()).digest())


def pid(name: str) -> str:
    return peer_id_from_pubkey(bytes(key(name).verify_key))


def receipt(signer: str = "customer", worker: str = "provider", job: bytes = AG,
            tokens: int = 500, outcome: Outcome = Outcome.VALIDATED) -> bytes:
    return sign_work_receipt(key(signer), worker=pid(worker), job=job, outcome=outcome,
                             tokens=tokens, cpu_seconds=0.0, fuel=1000, time=1.0).encode()


def check(data: bytes, noted: int = 500):
    return check_receipt(data, customer=pid("customer"), worker=pid("provider"), agreement=AG,
                         noted=noted)


def reason(data: bytes, noted: int = 500) -> RefuseReason:
    with pytest.raises(ReceiptRefused) as e:
        check(data, noted)
    return e.value.reason


def test_the_agreements_customer_may_credit_what_its_notes_granted() -> None:
    r = check(receipt())
    assert (r.issuer, r.worker, r.job, r.tokens) == (pid("customer"), pid("provider"), AG, 500)
    assert check(receipt(outcome=Outcome.REJECTED, tokens=0)).outcome is Outcome.REJECTED


def test_receipts_that_do_not_fit_the_agreement_are_refused() -> None:
    assert reason(receipt(signer="someone")) is RefuseReason.FOREIGN          # another customer
    assert reason(receipt(worker="other")) is RefuseReason.FOREIGN            # another provider
    assert reason(receipt(job=b"\1" * 32)) is RefuseReason.FOREIGN           # another agreement
    assert reason(receipt(tokens=501)) is RefuseReason.MALFORMED             # over the notes
    forged = unpack(receipt(signer="mallory"))
    forged["issuer"] = pid("customer")                                       # a forgery
    assert reason(pack(forged)) is RefuseReason.BAD_SIGNATURE
    assert reason(b"\x93junk") is RefuseReason.MALFORMED
