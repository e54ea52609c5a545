"""Observation batches checked once per receiving node (protocols/registry/checked.py): the
observations topic's gossip check keeps what it decoded, the handler takes it (dropping it)
instead of verifying every signature again; a miss checks as before. A bad batch is refused,
counted and charged to its relayer exactly as before, and never kept; the map stays within
its bounds in entries and bytes, oldest out first, whatever arrives. The two-node overlay
check of a kept batch taken by the real handler is in test_gossip_checks.py."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from fognode.node.overlay import GossipMessage
from fognode.node.wire import pack, unpack
from fognode.protocols.registry.actions import Refused
from fognode.protocols.registry.checked import CheckedBatches
from fognode.protocols.registry.core import OBSERVATIONS_TOPIC
from fognode.protocols.registry.errors import RejectReason
from fognode.protocols.registry.gossip_check import GossipChecks
from fognode.protocols.registry.observation import Observation, encode_observations

from .helpers import NOW
from .test_observation import obs, pid
from .test_observation_batch import core


def batch(observer: str, n: int, tag: str = "r1") -> tuple[bytes, list[Observation]]:
    got = [obs(observer, f"p{i}", evidence=f"{tag}/p{i}".encode()) for i in range(n)]
    [msg] = encode_observations(got)
    return msg, got


class Charges:
    """The node's side of a check: its rejection counter and the charges it makes."""

    def __init__(self) -> None:
        self.rejected = Counter("rejected", "test", ["what", "reason"], registry=CollectorRegistry())
        self.penalized: list[tuple[str, str]] = []

    def penalize(self, peer: str, reason: str, **_: object) -> None:
        self.penalized.append((peer, reason))

    def count(self, reason: RejectReason) -> float:
        return self.rejected.labels("observation", reason.value)._value.get()


def message(data: bytes, origin: str, relayer: str = "relayer") -> GossipMessage:
    return GossipMessage(topic=OBSERVATIONS_TOPIC, origin=origin, data=data, received_from=relayer)


def test_the_check_keeps_a_good_batch_and_the_handler_takes_it_once() -> None:
    node, kept = Charges(), CheckedBatches()
    checks = GossipChecks(node.rejected, node.penalize, kept)
    data, nine = batch("agg", 9)
    assert checks.observations(message(data, pid("agg")))
    assert len(kept) == 1 and kept.bytes_kept == len(data)
    assert kept.take(data, pid("agg")) == nine
    assert len(kept) == 0 and kept.bytes_kept == 0
    assert kept.take(data, pid("agg")) is None            # taken: a second delivery checks
    assert (kept.hits, kept.misses) == (1, 1)
    # the core given what the check kept records the same as when it checks the bytes itself
    a, b = core("a"), core("b")
    assert a.on_observation(pid("agg"), data, NOW, checked=nine) == []
    assert b.on_observation(pid("agg"), data, NOW) == []
    assert a.book.accepted == b.book.accepted == 9
    assert node.penalized == []


def test_a_bad_batch_is_charged_as_before_and_not_kept() -> None:
    node, kept = Charges(), CheckedBatches()
    checks = GossipChecks(node.rejected, node.penalize, kept)
    data, _ = batch("agg", 3)
    raw = unpack(data)
    forged = unpack(raw["batch"][1])
    forged["ok"] = False
    raw["batch"][1] = pack(forged)
    assert not checks.observations(message(pack(raw), pid("agg"), "r1"))
    assert not checks.observations(message(data, pid("other"), "r2"))     # spoofed origin
    assert node.count(RejectReason.BAD_SIGNATURE) == node.count(RejectReason.SPOOFED_ORIGIN) == 1
    assert [p for p, _ in node.penalized] == ["r1", "r2"]
    assert len(kept) == 0
    # delivered anyway (the core is also fed directly): a miss checks, refused as before
    [refused] = core("c").on_observation(pid("agg"), pack(raw), NOW,
                                         checked=kept.take(pack(raw), pid("agg")))
    assert isinstance(refused, Refused) and refused.reason is RejectReason.BAD_SIGNATURE


def test_an_entry_is_only_taken_for_the_origin_it_was_checked_against() -> None:
    kept = CheckedBatches()
    data, three = batch("agg", 3)
    kept.put(data, pid("agg"), three)
    assert kept.take(data, pid("other")) is None
    assert len(kept) == 0 and kept.bytes_kept == 0      # dropped: the right origin now checks
    assert kept.take(data, pid("agg")) is None


def test_entries_never_taken_are_evicted_oldest_first_within_both_bounds() -> None:
    msgs = [batch(f"o{i}", 2) for i in range(12)]
    size = len(msgs[0][0])
    assert all(len(d) == size for d, _ in msgs)
    kept = CheckedBatches(max_entries=5, max_bytes=100 * size)
    for i, (data, got) in enumerate(msgs):   # checked, never delivered (duplicates, overflow...)
        kept.put(data, pid(f"o{i}"), got)
        assert len(kept) <= 5
    assert len(kept) == 5 and kept.bytes_kept == sum(len(d) for d, _ in msgs[7:])
    assert kept.take(msgs[6][0], pid("o6")) is None
    assert kept.take(msgs[7][0], pid("o7")) == msgs[7][1]
    by_bytes = CheckedBatches(max_entries=100, max_bytes=3 * size + size // 2)
    for i, (data, got) in enumerate(msgs):
        by_bytes.put(data, pid(f"o{i}"), got)
        assert by_bytes.bytes_kept <= 3 * size + size // 2
    assert len(by_bytes) == 3 and by_bytes.take(msgs[11][0], pid("o11")) == msgs[11][1]
    # the same message checked twice (pushed and pulled) is one entry
    data, got = msgs[0]
    by_bytes.put(data, pid("o0"), got)
    by_bytes.put(data, pid("o0"), got)
    assert len(by_bytes) == 3 and by_bytes.take(data, pid("o0")) == got
    assert by_bytes.take(data, pid("o0")) is None
    # a message over the byte bound is not kept at all
    tiny = CheckedBatches(max_bytes=size - 1)
    tiny.put(data, pid("o0"), got)
    assert len(tiny) == 0 and tiny.bytes_kept == 0
