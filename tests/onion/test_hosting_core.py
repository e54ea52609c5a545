"""Hosted data's sans-IO cores (protocols/onion/hosting): shards (zfec k-of-n, hashes), the
manifest and its sealed DHT envelope (one validating decoder each), the access-fee rules a
host applies, and a host's quota-bounded shard store. No sockets."""
from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from fognode.node.wire import pack, unpack
from fognode.protocols.onion.address import address_from_pubkey
from fognode.protocols.onion.hosting.fees import (AccessRefused, AccessRequest, FeeTerms, PaymentUses, Refusal,
                                                  check_payment, decode_access_request, parse_memo, access_memo)
from fognode.protocols.onion.hosting.levels import LEVELS, privacy_level
from fognode.protocols.onion.hosting.manifest import (HostedValidator, Manifest, ManifestError, ShardRef,
                                                      decode_envelope, decode_manifest, dht_key, open_envelope,
                                                      seal, service_id)
from fognode.protocols.onion.hosting.shards import (ContentError, ShardMismatch, join, shard_hash, split,
                                                    verify_shard)
from fognode.protocols.onion.hosting.store import Lease, ShardStore, StoreError
from fognode.protocols.onion.hosting.wire import (HostingWireError, StoreRequest, decode_note_message,
                                                  decode_store_request)
from fognode.ledger.escrow_orders import DebitNote

from tests.onion.hosting_helpers import (ACCESSOR, EPOCH, FEE, HOST_KEY, NOW, OWNER, VALIDATORS, paid_store,
                                         payment, verify)

SERVICE = SigningKey(b"s" * 32)
ADDRESS = address_from_pubkey(bytes(SERVICE.verify_key))
SID = service_id(ADDRESS.pubkey)
HOSTS = [address_from_pubkey(bytes(SigningKey(bytes([40 + i]) * 32).verify_key)).host for i in range(5)]


# -- shards ----------------------------------------------------------------------------------

def test_any_k_of_n_shards_give_the_content_back() -> None:
    data = os.urandom(100_003)
    s = split(data, 3, 5)
    assert len(s.shards) == 5 and len({len(x) for x in s.shards}) == 1
    assert all(data[:1000] not in x for x in s.shards)           # ciphertext, not the content
    for pick in itertools.combinations(range(5), 3):
        assert join({i: s.shards[i] for i in pick}, s.hashes, key=s.key, k=3, size=s.size) == data


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.integers(1, 6), st.integers(0, 5), st.randoms())
def test_shards_round_trip_property(data: bytes, k: int, extra: int, rnd: object) -> None:
    n = k + extra
    s = split(data, k, n)
    pick = sorted(rnd.sample(range(n), k))  # type: ignore[attr-defined]
    assert join({i: s.shards[i] for i in pick}, s.hashes, key=s.key, k=k, size=s.size) == data


def test_a_corrupt_or_short_shard_is_named_and_refused() -> None:
    s = split(os.urandom(5000), 2, 3)
    bad = bytearray(s.shards[1])
    bad[7] ^= 1
    with pytest.raises(ShardMismatch) as e:
        join({0: s.shards[0], 1: bytes(bad)}, s.hashes, key=s.key, k=2, size=s.size)
    assert e.value.index == 1 and "corrupt or forged" in str(e.value)
    with pytest.raises(ShardMismatch, match="bytes, the manifest says"):
        verify_shard(0, s.shards[0][:-1], s.hashes[0], s.size, 2)
    with pytest.raises(ContentError, match="does not open"):
        join({0: s.shards[0], 2: s.shards[2]}, s.hashes, key=b"k" * 32, k=2, size=s.size)
    with pytest.raises(ContentError, match="2 needed"):
        join({0: s.shards[0]}, s.hashes, key=s.key, k=2, size=s.size)
    with pytest.raises(ContentError, match="k <= n"):
        split(b"x", 4, 3)


def test_levels_say_what_they_tolerate() -> None:
    assert [(p.k, p.n, p.tolerates, p.hops) for p in LEVELS.values()] == [(2, 3, 1, 2), (3, 5, 2, 3), (2, 5, 3, 4)]
    with pytest.raises(ValueError, match="must be one of 1, 2, 3"):
        privacy_level(4)


# -- manifest ---------------------------------------------------------------------------------

def manifest(**kw: object) -> Manifest:
    base = Manifest("file.bin", 2, 3, 5, 12345, b"k" * 32, FEE, bytes(OWNER.verify_key), int(NOW), int(NOW) + 3600,
                    tuple(ShardRef(h, bytes([i]) * 32) for i, h in enumerate(HOSTS)))
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_manifest_round_trip_and_sealed_envelope() -> None:
    m = manifest()
    assert decode_manifest(m.encode()) == m
    key, value = seal(m, SERVICE, rev=3)
    assert key == dht_key(SID) and key.startswith("/fognode-hosted/")
    assert SID != ADDRESS.pubkey and ADDRESS.pubkey not in value       # DHT nodes learn neither A nor the manifest
    assert b"file.bin" not in value
    env, got = open_envelope(value, ADDRESS)
    assert got == m and env.rev == 3
    HostedValidator().validate(key, value)


@pytest.mark.parametrize("change, field", [
    (lambda w: w.pop("fee"), "missing field 'fee'"),
    (lambda w: w.update(k="3"), "'k'"),
    (lambda w: w.update(key=b"short"), "'key'"),
    (lambda w: w.update(n=4), "shards: 5 listed, n is 4"),
    (lambda w: w.update(k=6, n=5), "k/n"),
    (lambda w: w.update(extra=1), "extra"),
    (lambda w: w.update(v=2), "unknown version 2"),
    (lambda w: w["shards"][2].update(host="example.com"), "shards[2].host"),
    (lambda w: w["shards"][0].update(hash=b"x"), "shards[0]"),
    (lambda w: w.update(expires=1), "expires"),
])
def test_manifest_decoder_names_what_is_wrong(change: object, field: str) -> None:
    wire = manifest().to_wire()
    change(wire)  # type: ignore[operator]
    with pytest.raises(ManifestError, match=field.replace("[", r"\[").replace("]", r"\]")):
        decode_manifest(pack(wire))


def test_forged_tampered_or_foreign_envelopes_are_refused() -> None:
    m = manifest()
    key, value = seal(m, SERVICE, rev=1)
    v = HostedValidator()
    # forged: another key signs a manifest and stores it under this service's DHT key
    other = SigningKey(b"x" * 32)
    okey, ovalue = seal(m, other, rev=9)
    with pytest.raises(ValueError, match="not its own key"):
        v.validate(key, ovalue)
    with pytest.raises(ManifestError, match="not the key of"):
        open_envelope(ovalue, ADDRESS)
    # tampered ciphertext: the blinded signature fails
    raw = unpack(value)
    raw["ct"] = raw["ct"][:-1] + bytes([raw["ct"][-1] ^ 1])
    with pytest.raises(ManifestError, match="forged"):
        decode_envelope(pack(raw))
    with pytest.raises(ValueError):
        v.validate(key, pack(raw))
    # garbage and oversize
    for junk in (b"", b"\xc1", os.urandom(100), pack({"v": 1}), b"x" * 20000):
        with pytest.raises(ValueError):
            v.validate(key, junk)
    assert v.rejected == 7
    # the highest revision wins; invalid values never do
    _, newer = seal(m, SERVICE, rev=2)
    assert v.select(key, [value, newer, b"junk"]) == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_ever_raise_manifest_error(data: bytes) -> None:
    for fn in (decode_manifest, decode_envelope):
        try:
            fn(data)
        except ManifestError:
            pass


# -- fees ---------------------------------------------------------------------------------------

def request(cert: object, *, key: SigningKey = ACCESSOR, host: bytes = HOST_KEY, shard: bytes = b"s" * 32) -> AccessRequest:
    return AccessRequest.make(key, host, SID, shard, cert)  # type: ignore[arg-type]


TERMS = FeeTerms(SID, bytes(OWNER.verify_key), FEE)


def check(req: AccessRequest, terms: FeeTerms = TERMS, epoch: int = EPOCH) -> object:
    return check_payment(decode_access_request(unpack(pack(req.to_wire()))), terms, HOST_KEY, verify_cert=verify,
                         epoch=epoch)


def test_a_paid_request_passes_and_the_memo_parses() -> None:
    ak = SigningKey(b"k" * 32)
    cert = payment(SID, bytes(ak.verify_key))
    assert check(request(cert, key=ak)) == cert
    assert parse_memo(access_memo(SID, bytes(ak.verify_key))) == (SID, bytes(ak.verify_key))
    assert parse_memo("rent") is None and parse_memo("fog.access:zz:yy") is None


@pytest.mark.parametrize("case, reason", [
    ("none", Refusal.NO_PAYMENT),
    ("minority", Refusal.BAD_CERTIFICATE),
    ("outsider", Refusal.BAD_CERTIFICATE),
    ("payee", Refusal.WRONG_PAYEE),
    ("low", Refusal.FEE_TOO_LOW),
    ("memo", Refusal.WRONG_MEMO),
    ("other_key", Refusal.WRONG_MEMO),
    ("stale", Refusal.STALE_PAYMENT),
    ("future", Refusal.STALE_PAYMENT),
    ("other_host", Refusal.BAD_PROOF),
    ("stolen", Refusal.BAD_PROOF),
])
def test_every_unpaid_or_misused_payment_is_refused_with_its_reason(case: str, reason: Refusal) -> None:
    ak = SigningKey(b"k" * 32)
    akp = bytes(ak.verify_key)
    thief = SigningKey(b"t" * 32)
    req = {
        "none": lambda: request(None, key=ak),
        "minority": lambda: request(payment(SID, akp, signers=VALIDATORS[:2]), key=ak),
        "outsider": lambda: request(payment(SID, akp, signers=[*VALIDATORS[:2], SigningKey(b"z" * 32)]), key=ak),
        "payee": lambda: request(payment(SID, akp, to=b"p" * 32), key=ak),
        "low": lambda: request(payment(SID, akp, amount=FEE - 1), key=ak),
        "memo": lambda: request(payment(SID, akp, memo="fog.access:for another service"), key=ak),
        "other_key": lambda: request(payment(SID, akp), key=thief),
        "stale": lambda: request(payment(SID, akp, epoch=EPOCH - 2), key=ak),
        "future": lambda: request(payment(SID, akp, epoch=EPOCH + 2), key=ak),
        "other_host": lambda: request(payment(SID, akp), key=ak, host=b"o" * 32),
        # a certificate seen on gossip, replayed with a request the thief signs for the payer's key
        "stolen": lambda: dataclasses.replace(request(payment(SID, akp), key=ak), sig=request(
            payment(SID, akp), key=thief).sig),
    }[case]()
    with pytest.raises(AccessRefused) as e:
        check(req)
    assert e.value.reason is reason, e.value


def test_a_free_service_needs_no_payment_and_uses_are_bounded() -> None:
    assert check(request(None), FeeTerms(SID, TERMS.payee, 0)) is None
    uses = PaymentUses(max_uses=2, capacity=3)
    uses.admit(b"t1", b"s1")
    uses.admit(b"t1", b"s1")
    uses.admit(b"t1", b"s2")                            # each shard separately
    with pytest.raises(AccessRefused) as e:
        uses.admit(b"t1", b"s1")
    assert e.value.reason is Refusal.USED_UP
    for i in range(5):
        uses.admit(bytes([i]), b"s")                   # bounded memory: the oldest are forgotten
    assert len(uses._uses) == 3


@pytest.mark.parametrize("raw", [None, {}, {"v": 1, "t": "get"}, {"v": 1, "t": "put", "sid": b"x" * 32},
                                 {**AccessRequest(b"s" * 32, b"h" * 32, None, b"k" * 32, b"g" * 64).to_wire(),
                                  "cert": {"v": 1}},
                                 {**AccessRequest(b"s" * 32, b"h" * 32, None, b"k" * 32, b"g" * 64).to_wire(),
                                  "more": 1}])
def test_malformed_requests_are_refused_as_malformed(raw: object) -> None:
    with pytest.raises(AccessRefused) as e:
        decode_access_request(raw)
    assert e.value.reason is Refusal.MALFORMED


# -- the host's store ------------------------------------------------------------------------------

def test_store_quota_hash_and_lease_payment(tmp_path: Path) -> None:
    data = os.urandom(1000)
    store, lease = paid_store(tmp_path, SID, data, quota=2500, paid=50, rate=100)   # paid for half an hour
    assert lease.paid_until() == NOW + 1800
    assert store.serveable(SID, lease.shard, NOW + 1799) == lease
    with pytest.raises(AccessRefused) as e:
        store.serveable(SID, lease.shard, NOW + 1801)
    assert e.value.reason is Refusal.HOSTING_UNPAID                 # stops serving when no longer paid
    with pytest.raises(AccessRefused) as e:
        store.serveable(b"o" * 32, lease.shard, NOW)
    assert e.value.reason is Refusal.UNKNOWN_SHARD
    assert store.credit(lease.shard, 100).paid_until() == NOW + 3600  # a later note extends it
    assert store.read(lease.shard) == data
    # the quota and the content address
    other = os.urandom(1000)
    bad = Lease(SID, shard_hash(other), 1000, lease.payee, FEE, lease.customer, lease.escrow, 1, NOW, lease.deadline)
    with pytest.raises(StoreError, match="do not hash"):
        store.put(bad, data)
    store.put(bad, other)
    big = os.urandom(600)
    with pytest.raises(StoreError, match="does not fit: 2000 of 2500 bytes used"):
        store.put(dataclasses.replace(bad, shard=shard_hash(big), size=600), big)
    # persisted: a restart finds both
    again = ShardStore(tmp_path, 2500)
    assert set(again.leases) == {lease.shard, bad.shard} and again.leases[lease.shard].paid == 100
    # unpaid for longer than the grace: deleted with its file
    gone = again.expire(NOW + 61, grace=60)
    assert [g.shard for g in gone] == [bad.shard] and not (tmp_path / bad.shard.hex()).exists()


def test_a_shard_corrupted_on_disk_is_dropped_not_served(tmp_path: Path) -> None:
    data = os.urandom(1000)
    store, lease = paid_store(tmp_path, SID, data)
    path = tmp_path / lease.shard.hex()
    path.write_bytes(b"\x00" + data[1:])
    with pytest.raises(StoreError, match="corrupt on disk"):
        store.read(lease.shard)
    assert store.dropped_corrupt == 1 and lease.shard not in store.leases and not path.exists()


def test_a_corrupt_lease_file_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "leases").write_bytes(msgpack.packb([{"sid": 1}]))
    with pytest.raises(StoreError, match="move it away"):
        ShardStore(tmp_path, 100)


def test_owner_messages_decode_strictly() -> None:
    note = DebitNote.sign(OWNER, b"e" * 32, 10)
    req = StoreRequest(SID, b"h" * 32, 100, b"p" * 32, FEE, b"e" * 32, 5, int(NOW), note)
    assert decode_store_request(unpack(pack(req.to_wire()))) == req
    bad = req.to_wire()
    bad["rate"] = 0
    with pytest.raises(HostingWireError, match="rate"):
        decode_store_request(bad)
    with pytest.raises(HostingWireError, match="expected 'note'"):
        decode_note_message(req.to_wire())
