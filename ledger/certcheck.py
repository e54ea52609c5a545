"""Certificate verification against the committee of the order's epoch (quorum > 2/3 of its stake).

The checks a replica runs before applying anything: every signer is in the committee of the
order's epoch, no signer appears twice, the signers' stake is more than 2/3 of the committee's,
every signature is valid. Signatures are checked last (cheapest checks first) and only once per
certificate; votes sign a 32-byte digest, not the whole order, so a vote check hashes little.
"""
from __future__ import annotations

from fognode.ledger.errors import CertificateRejected, Reason
from fognode.ledger.messages import Certificate
from fognode.ledger.quorum import Committee, check_signature


def verify_certificate(cert: Certificate, committee: Committee, *, verify_sender: bool = True) -> None:
    """Raise CertificateRejected unless `cert` is a valid quorum certificate of `committee`.

    `verify_sender=False` skips the sender's signature: sound when at most f validators are
    faulty (at least one honest validator checked it before voting); replicas catching up use
    it, validators and `ledger.verify` do not.
    """
    seen: set[bytes] = set()
    stake = 0
    for validator, _sig in cert.votes:
        if validator in seen:
            raise CertificateRejected(Reason.DUPLICATE_SIGNER,
                                      f"certificate {cert.tx_id.hex()[:16]} lists validator {validator.hex()[:16]} twice")
        seen.add(validator)
        s = committee.members.get(validator)
        if s is None:
            raise CertificateRejected(Reason.NON_COMMITTEE_SIGNER,
                                      f"certificate {cert.tx_id.hex()[:16]} is signed by {validator.hex()[:16]}, "
                                      f"not in the committee of epoch {cert.order.order.epoch}")
        stake += s
    if not committee.is_quorum(stake):
        raise CertificateRejected(Reason.NO_QUORUM,
                                  f"certificate {cert.tx_id.hex()[:16]} carries {stake} of {committee.total} stake, "
                                  f"needs more than 2/3 ({committee.quorum_stake})")
    if verify_sender and not cert.order.signature_ok():
        raise CertificateRejected(Reason.BAD_SIGNATURE,
                                  f"certificate {cert.tx_id.hex()[:16]}: the sender's signature is invalid")
    msg = cert.vote_message
    for validator, sig in cert.votes:
        if not check_signature(validator, msg, sig):
            raise CertificateRejected(Reason.BAD_SIGNATURE,
                                      f"certificate {cert.tx_id.hex()[:16]}: vote of {validator.hex()[:16]} is invalid")
