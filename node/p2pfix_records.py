"""py-libp2p 0.8.1 fix: a peer's signed peer record is verified once per peer and change, not on
every pubsub RPC.

Symptom (upstream report form). py-libp2p 0.8.1 attaches the sender's signed peer record
(an Envelope, `senderRecord`) to every pubsub RPC it sends, and on receipt
`libp2p/pubsub/utils.py: maybe_consume_signed_record` unmarshals the envelope, verifies its
Ed25519 signature and rewrites the certified address book, for every RPC: once in
`Pubsub.continuously_read_stream` and once more in `GossipSub.handle_rpc` when the RPC carries
control messages (IHAVE, IWANT, IDONTWANT, GRAFT, PRUNE). The record changes only when the
sender's addresses change, so all but the first verification per peer are repeated work: in a
py-spy profile of a 10-daemon gossip benchmark they are 8.3 % of all samples, twelve times the
cost of the gossip messages' own signatures. Reproduction: two hosts with GossipSub on
127.0.0.1, one topic, one side publishes 1,000 small messages; count calls of
`libp2p.peer.envelope.Envelope.validate` on the receiver (>= 1,000, one per RPC; expected: 1).

The sending side has the same shape: `libp2p/peer/peerstore.py: env_to_send_in_RPC`, called
for every RPC to every peer, rebuilds the host's advertised addresses (`host.get_addrs()`,
multiaddr parsing and encapsulation) and compares them with the cached record's before
marshalling it again: 160 us per call on the project's 2-core machine, as much as one
verification. Reproduction: time 1,000 calls of `env_to_send_in_RPC(host)` on a listening host.

Fix. The pubsub modules import both functions by name and no constructor option replaces
them, so this module rebinds the two names in `libp2p.pubsub.pubsub` and
`libp2p.pubsub.gossipsub` (monkeypatching: no option exists) to wrappers. Sending: for an
enrolled host the envelope bytes are reused for `RESEND_FOR` seconds, so a changed address is
in the record sent on pubsub at most that much later (identify and the DHT call py-libp2p's
function directly, unchanged). Receiving: a wrapper that, for hosts
enrolled with `enroll(host)`, remembers per peer the exact record bytes last accepted and
when. The same bytes from the same peer within `REVERIFY_AFTER` seconds are accepted without
a second verification (the result would be the same: same bytes, same signer, same sequence
number); new bytes, another peer, or an older acceptance go through py-libp2p's own function,
so a changed record is verified and stored as before, and an invalid one is still refused. The
re-verification every `REVERIFY_AFTER` seconds refreshes the addresses' 2-hour TTL in the
peerstore as py-libp2p's per-RPC call did. Hosts not enrolled (other libraries' in the same
process) get py-libp2p's behaviour unchanged.
"""
from __future__ import annotations

import time
import weakref
from typing import Any, Callable

import libp2p.pubsub.gossipsub as _gossipsub_mod
import libp2p.pubsub.pubsub as _pubsub_mod
import libp2p.pubsub.utils as _utils_mod
import libp2p.peer.peerstore as _peerstore_mod

RESEND_FOR = 5.0            # seconds the local record's bytes are reused on pubsub
REVERIFY_AFTER = 600.0      # seconds; py-libp2p stores a record's addresses for 7,200 s
MAX_PEERS = 4096            # remembered peers per host at most (oldest forgotten first)
PATCHED_MODULES = (_pubsub_mod, _gossipsub_mod)

Consume = Callable[[Any, Any, Any], bool]
_original: Consume = _utils_mod.maybe_consume_signed_record
_original_env: Callable[[Any], tuple[bytes, bool]] = _peerstore_mod.env_to_send_in_RPC


class RecordCache:
    """Per host: peer id -> (record bytes, monotonic time of their last verification)."""

    def __init__(self, *, reverify_after: float = REVERIFY_AFTER, max_peers: int = MAX_PEERS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reverify_after = reverify_after
        self.max_peers = max_peers
        self.clock = clock
        self.accepted: dict[Any, tuple[bytes, float]] = {}
        self.local: tuple[bytes, float] | None = None   # our own record's bytes, when made
        self.verified = 0       # records handed to py-libp2p's verification
        self.skipped = 0        # records accepted from the cache

    def known(self, peer_id: Any, record: bytes) -> bool:
        """True if `record` is what `peer_id` last sent and was verified recently."""
        hit = self.accepted.get(peer_id)
        return (hit is not None and hit[0] == record
                and self.clock() - hit[1] < self.reverify_after)

    def remember(self, peer_id: Any, record: bytes) -> None:
        self.accepted.pop(peer_id, None)
        if len(self.accepted) >= self.max_peers:
            self.accepted.pop(next(iter(self.accepted)))
        self.accepted[peer_id] = (record, self.clock())


_caches: "weakref.WeakKeyDictionary[Any, RecordCache]" = weakref.WeakKeyDictionary()


def maybe_consume_signed_record_once(msg: Any, host: Any, peer_id: Any = None) -> bool:
    """Drop-in for py-libp2p's `maybe_consume_signed_record` (same arguments, same result)."""
    cache = _caches.get(host)
    if cache is None or peer_id is None or not msg.HasField("senderRecord"):
        return _original(msg, host, peer_id)
    record = msg.senderRecord
    if cache.known(peer_id, record):
        cache.skipped += 1
        return True
    cache.verified += 1
    ok = _original(msg, host, peer_id)
    if ok:
        cache.remember(peer_id, record)
    return ok


def env_to_send_in_rpc_cached(host: Any) -> tuple[bytes, bool]:
    """Drop-in for py-libp2p's `env_to_send_in_RPC`: (envelope bytes, whether newly made)."""
    cache = _caches.get(host)
    if cache is None:
        return _original_env(host)
    now = cache.clock()
    if cache.local is not None and now - cache.local[1] < RESEND_FOR:
        return cache.local[0], False
    data, fresh = _original_env(host)
    cache.local = (data, now)
    return data, fresh


def install() -> None:
    """Rebind the names in py-libp2p's pubsub modules (idempotent)."""
    for mod in PATCHED_MODULES:
        setattr(mod, "maybe_consume_signed_record", maybe_consume_signed_record_once)
        setattr(mod, "env_to_send_in_RPC", env_to_send_in_rpc_cached)


def enroll(host: Any) -> RecordCache:
    """Give `host` the once-per-record verification; returns its cache (for metrics/tests)."""
    install()
    cache = _caches.get(host)
    if cache is None:
        cache = _caches[host] = RecordCache()
    return cache
