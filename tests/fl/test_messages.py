from __future__ import annotations

import msgpack
import pytest
from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.peerid import peer_id_from_pubkey
from fognode.node.wire import pack
from fognode.protocols.fl.messages import (
    CoordinatorSilent, DeviceFacts, OptIn, RoundPlan, SelectionCriteria, SessionAnnouncement, SessionSpec,
    decode_gossip, encode_gossip)
from fognode.protocols.fl.rewards.receipts import AcceptedUpdate, RoundReceipt, decode_round_receipt
from fognode.protocols.fl.session.election import aggregator_order
from fognode.protocols.fl.session.selection import DeviceCandidate, ineligibility, round_seed, select_participants


def wire(b: bytes) -> object:
    return msgpack.unpackb(b, raw=False, strict_map_key=True)


def key(i: int) -> SigningKey:
    return SigningKey(bytes([i]) * 32)


def pid(i: int) -> str:
    return peer_id_from_pubkey(bytes(key(i).verify_key))


def announcement(**kw: object) -> SessionAnnouncement:
    spec = SessionSpec(task="synthetic", rounds=3, min_participants=2, participants=4, **kw)  # type: ignore[arg-type]
    return SessionAnnouncement(spec, pid(1), bytes(key(1).verify_key), 1.0, b"n" * 16, b"a" * 32,
                               b"b" * 32).signed(key(1))


def test_announcement_round_trips_and_its_id_is_stable() -> None:
    ann = announcement(strategy="krum", strategy_params={"f": 1},
                       criteria=SelectionCriteria(region="eu", capabilities=("gpu",), min_reputation=0.2))
    got = decode_gossip(wire(encode_gossip(ann)), peer=pid(1))
    assert got == ann and got.session_id == ann.session_id


def test_announcement_forgeries_are_refused() -> None:
    ann = announcement()
    body = wire(encode_gossip(ann))
    body["body"]["spec"]["rounds"] = 4                    # tampered after signing
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        decode_gossip(body)
    other = SessionAnnouncement(ann.spec, pid(2), bytes(key(1).verify_key), 1.0, b"n" * 16,
                                b"a" * 32, b"b" * 32).signed(key(1))
    with pytest.raises(RemoteProtocolError, match="does not match"):
        decode_gossip(wire(encode_gossip(other)))


@pytest.mark.parametrize("mutate,match", [
    (lambda s: s.update(min=9), "exceeds participants"),
    (lambda s: s.update(dtype="int8"), "dtype"),
    (lambda s: s.update(rounds=0), "below"),
    (lambda s: s.update(extra=1), "unknown field"),
    (lambda s: s["sparams"].update(f=float("inf")), "finite"),
    (lambda s: s["criteria"].update(min_rep=2.0), "above"),
])
def test_spec_validation(mutate, match) -> None:  # type: ignore[no-untyped-def]
    ann = announcement()
    body = ann.to_wire()
    mutate(body["spec"])
    with pytest.raises(RemoteProtocolError, match=match):
        SessionAnnouncement.decode(body)


def test_gossip_envelope_rejects_unknown_types_and_garbage() -> None:
    with pytest.raises(RemoteProtocolError, match="unknown message type"):
        decode_gossip({"v": 1, "type": "nope", "body": {}})
    with pytest.raises(RemoteProtocolError):
        decode_gossip([1, 2])
    m = OptIn(b"s" * 32, DeviceFacts(region="eu", cores=4, memory_mb=1024, charging=False))
    assert decode_gossip(wire(encode_gossip(m))) == m


def test_coordinator_silent_round_trips_and_names_a_bad_field() -> None:
    m = CoordinatorSilent(b"s" * 32, 1, 3)
    assert decode_gossip(wire(encode_gossip(m))) == m
    for field, bad in (("rank", 99), ("rounds", -1), ("session", b"short")):
        with pytest.raises(RemoteProtocolError, match=f"fl.CoordinatorSilent: field .{field}."):
            CoordinatorSilent.decode({**m.to_wire(), field: bad})
    with pytest.raises(RemoteProtocolError, match="unknown field"):
        CoordinatorSilent.decode({**m.to_wire(), "x": 1})


def test_plan_validation() -> None:
    plan = RoundPlan(b"s" * 32, 1, 0, b"e" * 32, (("a", 0.5), ("b", 1.0)), b"m" * 32, 0, ("a",))
    assert decode_gossip(wire(encode_gossip(plan))) == plan
    raw = plan.to_wire()
    raw["parts"] = [["a", 0.5], ["a", 0.7]]
    with pytest.raises(RemoteProtocolError, match="distinct"):
        RoundPlan.decode(raw)
    raw["parts"] = [["a", 1.5]]
    with pytest.raises(RemoteProtocolError, match="reputation"):
        RoundPlan.decode(raw)


def _receipt(**kw: object) -> RoundReceipt:
    base: dict[str, object] = dict(session_id=b"s" * 32, round=2, try_no=0, aggregator=pid(3),
                                   aggregator_key=bytes(key(3).verify_key), base_model_hash=b"b" * 32,
                                   model_hash=b"m" * 32,
                                   accepted=(AcceptedUpdate(pid(4), 0.25, 10), AcceptedUpdate(pid(5), 0.75, 30)),
                                   round_reward=1000, time=5.0)
    base.update(kw)
    return RoundReceipt(**base).signed(key(3))  # type: ignore[arg-type]


def test_round_receipt_verifies_and_detects_tampering() -> None:
    r = _receipt()
    assert decode_round_receipt(wire(pack(r.to_wire()))) == r
    raw = r.to_wire()
    raw["accepted"][0][1] = 0.5
    raw["accepted"][1][1] = 0.5
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        decode_round_receipt(raw)
    with pytest.raises(RemoteProtocolError, match="sum to 1"):
        decode_round_receipt(_receipt(accepted=(AcceptedUpdate(pid(4), 0.5, 1),)).to_wire())
    forged = _receipt(aggregator=pid(6))
    with pytest.raises(RemoteProtocolError, match="does not match"):
        decode_round_receipt(forged.to_wire())


def test_selection_is_deterministic_and_respects_criteria() -> None:
    cands = [DeviceCandidate(f"p{i}", region="eu" if i % 2 else "us", cores=i, reputation=i / 10,
                             charging=i != 3) for i in range(10)]
    crit = SelectionCriteria(region="eu", min_reputation=0.2, charging_only=True, min_cores=2)
    seed = round_seed(b"s" * 32, 1, 0)
    got = select_participants(cands, crit, 3, seed)
    assert got == select_participants(list(reversed(cands)), crit, 3, seed)
    assert {c.peer for c in got} <= {"p5", "p7", "p9"} and len(got) == 3
    assert select_participants(cands, crit, 3, round_seed(b"s" * 32, 2, 0)) != () 
    assert ineligibility(cands[3], crit) is not None
    assert "offline" == ineligibility(DeviceCandidate("x", online=False), SelectionCriteria())
    assert "capabilities" in (ineligibility(DeviceCandidate("x"), SelectionCriteria(capabilities=("gpu",))) or "")


def test_election_is_deterministic_and_favours_reputation() -> None:
    parts = [(f"p{i}", 0.9 if i == 0 else 0.1) for i in range(5)]
    seed = b"x" * 32
    assert aggregator_order(seed, parts, 3) == aggregator_order(seed, list(reversed(parts)), 3)
    assert len(set(aggregator_order(seed, parts, 5))) == 5
    wins = sum(aggregator_order(bytes([i % 256, i // 256]) * 16, parts, 1)[0] == "p0" for i in range(2000))
    # p0's share of wins is 0.9 / (0.9 + 4 * 0.1) ~ 0.69
    assert 0.6 < wins / 2000 < 0.78
