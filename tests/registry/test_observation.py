from __future__ import annotations

import numpy as np
import pytest

from fognode.node.wire import pack, sign, unpack
from fognode.protocols.registry.errors import Rejected, RejectReason
from fognode.protocols.registry.observation import (ALL_SERVICES, MAX_OBSERVATION_BYTES,
                                                    ObservationBook, decode_observation,
                                                    sign_observation)
from fognode.protocols.registry.peerid import peer_id_from_pubkey

from .helpers import NOW, key


def pid(name: str) -> str:
    return peer_id_from_pubkey(bytes(key(name).verify_key))


def obs(observer: str, subject: str, *, ok: bool = True, service: str = "fl", weight: float = 1.0,
        evidence: bytes = b"", ts: float = NOW):
    return sign_observation(key(observer), subject=pid(subject), service=service, ok=ok,
                            weight=weight, evidence=evidence, ts=int(ts))


def test_round_trip_and_forgery() -> None:
    o = obs("a", "b", evidence=b"round-7")
    assert decode_observation(o.encode()) == o
    raw = unpack(o.encode())
    raw["ok"] = False
    with pytest.raises(Rejected) as e:
        decode_observation(pack(raw))
    assert e.value.reason is RejectReason.BAD_SIGNATURE
    raw = unpack(o.encode())
    raw["pubkey"] = bytes(key("m").verify_key)
    body = {k: v for k, v in raw.items() if k != "sig"}
    with pytest.raises(Rejected) as e:
        decode_observation(pack({**body, "sig": sign(key("m"), body)}))
    assert e.value.reason is RejectReason.FOREIGN_KEY
    with pytest.raises(Rejected) as e:
        decode_observation(b"x" * (MAX_OBSERVATION_BYTES + 1))
    assert e.value.reason is RejectReason.OVERSIZE
    for bad in ({"weight": -1.0}, {"weight": 0.0}, {"service": ""}, {"service": "*"}, {"ok": 1}):
        raw = unpack(o.encode())
        raw.update(bad)
        body = {k: v for k, v in raw.items() if k != "sig"}
        with pytest.raises(Rejected) as e:
            decode_observation(pack({**body, "sig": sign(key("a"), body)}))
        assert e.value.reason is RejectReason.MALFORMED


def test_self_observation_rejected() -> None:
    book = ObservationBook()
    with pytest.raises(Rejected) as e:
        book.add(obs("a", "a"), NOW)
    assert e.value.reason is RejectReason.SELF_OBSERVATION
    assert book.rejected[RejectReason.SELF_OBSERVATION] == 1 and book.accepted == 0


def test_flooding_observer_is_capped() -> None:
    book = ObservationBook(rate_per_minute=60, burst=10)
    outcomes = []
    for i in range(100):
        try:
            book.add(obs("flood", f"s{i % 7}", evidence=f"e{i}".encode()), NOW)
            outcomes.append(True)
        except Rejected as e:
            assert e.reason is RejectReason.RATE_LIMITED
            outcomes.append(False)
    assert sum(outcomes) == 10 and book.rejected[RejectReason.RATE_LIMITED] == 90
    book.add(obs("flood", "s1", evidence=b"later"), NOW + 1.0)      # refills at 1/s
    book.add(obs("honest", "s1", evidence=b"x"), NOW)              # others unaffected


def test_duplicates_and_age() -> None:
    book = ObservationBook()
    book.add(obs("a", "b", evidence=b"ev"), NOW)
    with pytest.raises(Rejected, match="duplicate"):
        book.add(obs("a", "b", evidence=b"ev", ts=NOW + 1), NOW + 1)   # same evidence id
    book.add(obs("a", "c", evidence=b"ev"), NOW)                      # other subject: fine
    o = obs("a", "b")
    book.add(o, NOW)
    with pytest.raises(Rejected, match="duplicate"):
        book.add(o, NOW)                                              # replay
    with pytest.raises(Rejected, match="expired"):
        book.add(obs("a", "b", ts=NOW - 2 * 86400), NOW)
    with pytest.raises(Rejected, match="future"):
        book.add(obs("a", "b", ts=NOW + 3600), NOW)


def test_local_trust_sums() -> None:
    book = ObservationBook()
    book.add(obs("a", "b", weight=3.0, evidence=b"1"), NOW)
    book.add(obs("a", "b", ok=False, weight=1.0, evidence=b"2"), NOW)
    book.add(obs("a", "c", service="relay", evidence=b"3"), NOW)
    lt = book.local_trust("fl")
    assert len(lt.vals) == 1 and lt.vals[0] == 2.0
    assert lt.peers[lt.rows[0]] == pid("a") and lt.peers[lt.cols[0]] == pid("b")
    all_ = book.local_trust(ALL_SERVICES)
    assert sorted(all_.vals.tolist()) == [1.0, 2.0]
    assert book.services() == ["fl", "relay"]
    assert isinstance(all_.rows, np.ndarray)
