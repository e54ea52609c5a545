"""The contribution ledger over a real LevelDB: sessions, receipts signed by the party that
received the work (forged, foreign, self-issued and duplicate ones refused), totals, the
reliability score and BOINC's consecutive-valid count, and everything surviving a reopen."""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import plyvel
import pytest
from hypothesis import given, settings, strategies as st
from nacl.signing import SigningKey

from fognode.node.peerid import peer_id_from_pubkey
from fognode.node.wire import pack, unpack
from fognode.protocols.fl.rewards.receipts import AcceptedUpdate, RoundReceipt
from fognode.protocols.harvest.contribution import ContributionLedger, SessionState, reliability_of
from fognode.protocols.harvest.contribution_store import ContributionStore, HarvestStorageFailed
from fognode.protocols.harvest.meter import Usage
from fognode.protocols.harvest.receipts import (FL_ROUND, MARKET_JOB, Outcome, ReceiptRefused,
                                                RefuseReason, sign_work_receipt, verify_evidence)

NOW = 1_800_000_000.0


def key(name: str) -> SigningKey:
    return SigningKey(hashlib.sha256(name.encode()).digest())


def pid(name: str) -> str:
    return peer_id_from_pubkey(bytes(key(name).verify_key))


ME, AGG, OTHER, CUSTOMER = pid("me"), pid("agg"), pid("other"), pid("customer")
SID = hashlib.blake2b(b"session", digest_size=32).digest()


def round_receipt(accepted: dict[str, float], *, signer: str = "agg", aggregator: str | None = None,
                  round_no: int = 1, reward: int = 1_000_000, sid: bytes = SID) -> bytes:
    k = key(signer)
    r = RoundReceipt(sid, round_no, 0, aggregator or peer_id_from_pubkey(bytes(k.verify_key)),
                     bytes(k.verify_key), b"\1" * 32, b"\2" * 32,
                     tuple(AcceptedUpdate(p, w, 10) for p, w in accepted.items()), reward, NOW)
    return pack(r.signed(k).to_wire())


def job_receipt(worker: str = ME, *, signer: str = "customer", outcome: Outcome = Outcome.VALIDATED,
                tokens: int = 500, job: bytes = b"\7" * 32) -> bytes:
    return sign_work_receipt(key(signer), worker=worker, job=job, outcome=outcome, tokens=tokens,
                             cpu_seconds=1.5, fuel=123, time=NOW).encode()


def refused(fn, *args, **kw) -> RefuseReason:
    with pytest.raises(ReceiptRefused) as e:
        fn(*args, **kw)
    return e.value.reason


@pytest.fixture
def ledger(tmp_path: Path):
    led = ContributionLedger(ContributionStore(tmp_path / "c"), ME, NOW)
    yield led
    led.close()


def test_fl_receipts_credit_validated_and_rejected_work() -> None:
    c = verify_evidence(FL_ROUND, round_receipt({ME: 0.25, OTHER: 0.75}), ME)
    assert c.outcome is Outcome.VALIDATED and c.issuer == AGG and c.ref == SID.hex()
    assert c.tokens == 250_000     # round_reward x weight_ppm / 10^6, as the ledger mints
    c = verify_evidence(FL_ROUND, round_receipt({OTHER: 1.0}), ME)
    assert c.outcome is Outcome.REJECTED and c.tokens == 0


def test_forged_self_issued_and_malformed_receipts_are_refused() -> None:
    # signed by someone other than the aggregator it names
    assert refused(verify_evidence, FL_ROUND, round_receipt({ME: 1.0}, signer="mallory",
                                                            aggregator=AGG), ME) \
        is RefuseReason.BAD_SIGNATURE
    # altered after signing: the weight moved to me
    raw = unpack(round_receipt({ME: 0.1, OTHER: 0.9}))
    raw["accepted"] = [[ME, 0.9, 10], [OTHER, 0.1, 10]]
    assert refused(verify_evidence, FL_ROUND, pack(raw), ME) is RefuseReason.BAD_SIGNATURE
    # the aggregator attesting its own update
    assert refused(verify_evidence, FL_ROUND, round_receipt({ME: 1.0}, signer="me"), ME) \
        is RefuseReason.SELF_ISSUED
    assert refused(verify_evidence, FL_ROUND, b"\xc1garbage", ME) is RefuseReason.MALFORMED
    assert refused(verify_evidence, "bitcoin", b"", ME) is RefuseReason.UNKNOWN_KIND
    # market receipts: forged, foreign, self-issued, altered
    raw = unpack(job_receipt())
    raw["tokens"] = 10**9
    assert refused(verify_evidence, MARKET_JOB, pack(raw), ME) is RefuseReason.BAD_SIGNATURE
    assert refused(verify_evidence, MARKET_JOB, job_receipt(OTHER), ME) is RefuseReason.FOREIGN
    assert refused(verify_evidence, MARKET_JOB, job_receipt(signer="me"), ME) is RefuseReason.SELF_ISSUED
    raw = unpack(job_receipt())
    raw["outcome"] = "great"
    with pytest.raises(ReceiptRefused, match="outcome"):
        verify_evidence(MARKET_JOB, pack(raw), ME)
    raw = unpack(job_receipt())
    raw["cpu_seconds"] = 2    # an integer where a float belongs: not canonical
    assert refused(verify_evidence, MARKET_JOB, pack(raw), ME) is not None
    assert refused(verify_evidence, MARKET_JOB, b"x" * (70 * 1024), ME) is RefuseReason.MALFORMED


def test_the_ledger_counts_sessions_credits_and_reliability(ledger: ContributionLedger) -> None:
    t = ledger.totals()
    assert (t.sessions, t.validated, t.tokens, t.consecutive_valid) == (0, 0, 0, 0)
    assert t.reliability == pytest.approx(0.25)
    # an FL receipt for a session this device did no work for is foreign
    assert refused(ledger.credit, FL_ROUND, round_receipt({ME: 1.0}), NOW) is RefuseReason.FOREIGN
    fl = ledger.start("fl", SID.hex(), NOW)
    ledger.meter(fl.session_id, Usage(cpu_s=3.0, wall_s=10.0, peak_rss_bytes=50 << 20,
                                      mem_byte_s=1e6))
    for rnd in (1, 2, 3):
        ledger.credit(FL_ROUND, round_receipt({ME: 0.5, OTHER: 0.5}, round_no=rnd), NOW + rnd)
    assert refused(ledger.credit, FL_ROUND, round_receipt({ME: 0.5, OTHER: 0.5}, round_no=1), NOW) \
        is RefuseReason.DUPLICATE
    assert ledger.totals().consecutive_valid == 3
    ledger.credit(FL_ROUND, round_receipt({OTHER: 1.0}, round_no=4), NOW + 4)   # rejected
    assert ledger.totals().consecutive_valid == 0
    ledger.credit(FL_ROUND, round_receipt({ME: 1.0}, round_no=5), NOW + 5)
    done = ledger.stop(fl.session_id, SessionState.COMPLETED, NOW + 6)
    assert (done.validated, done.rejected, done.tokens) == (4, 1, 2_500_000)
    job = ledger.start("market", (b"\7" * 32).hex(), NOW + 7)
    ledger.credit(MARKET_JOB, job_receipt(), NOW + 8)
    ledger.stop(job.session_id, SessionState.ABANDONED, NOW + 9, "suspended past its deadline")
    assert refused(ledger.credit, MARKET_JOB, job_receipt(OTHER), NOW) is RefuseReason.FOREIGN
    t = ledger.totals()
    assert (t.sessions, t.completed, t.abandoned, t.validated, t.rejected) == (2, 1, 1, 5, 1)
    assert t.tokens_by_kind == {FL_ROUND: 2_500_000, MARKET_JOB: 500} and t.tokens == 2_500_500
    assert t.consecutive_valid == 2 and t.cpu_seconds == 3.0
    assert t.reliability == pytest.approx(reliability_of(1, 1, 5, 1)) == pytest.approx(0.5 * 6 / 8)
    assert [s.kind for s in ledger.sessions()] == ["market", "fl"]
    assert ledger.sessions(state=SessionState.ABANDONED)[0].reason == "suspended past its deadline"
    assert ledger.stop(fl.session_id, SessionState.ABANDONED, NOW + 10).state is SessionState.COMPLETED


def test_sessions_and_credits_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c"
    led = ContributionLedger(ContributionStore(path), ME, NOW)
    fl = led.start("fl", SID.hex(), NOW)
    led.credit(FL_ROUND, round_receipt({ME: 1.0}), NOW + 1)
    led.stop(fl.session_id, SessionState.COMPLETED, NOW + 2, usage=Usage(cpu_s=4.5))
    running = led.start("manual", "left running", NOW + 3)
    led.meter(running.session_id, Usage(cpu_s=1.0))
    before = led.totals()
    led.close()
    # tamper with the stored credit: a different receipt under the same key
    db = plyvel.DB(str(path))
    key_, value = next(iter(db.iterator(prefix=b"c/")))
    raw = unpack(value)
    forged = unpack(raw["evidence"])
    forged["reward"] = 10**12
    db.put(key_, pack({**raw, "evidence": pack(forged)}))
    db.put(b"c/" + (99).to_bytes(8, "big"), pack({"kind": FL_ROUND, "evidence": round_receipt({ME: 1.0}, round_no=9), "received": NOW}))
    db.close()
    led = ContributionLedger(ContributionStore(path), ME, NOW + 100)
    try:
        after = led.totals()
        # the forged credit is skipped; the added one is a genuine receipt for a session we worked in
        assert after.validated == 1 and after.tokens == 1_000_000
        assert after.cpu_seconds == before.cpu_seconds == 5.5
        s = led.get(running.session_id)
        assert s is not None and s.state is SessionState.ABANDONED and s.ended == NOW + 100
        assert "without closing" in s.reason and s.usage.cpu_s == 1.0
        assert led.get(fl.session_id).state is SessionState.COMPLETED   # type: ignore[union-attr]
        assert after.completed == 1 and after.abandoned == 1
    finally:
        led.close()


def test_a_store_held_by_another_process_is_a_storage_error(tmp_path: Path) -> None:
    store = ContributionStore(tmp_path / "c")
    try:
        with pytest.raises(HarvestStorageFailed, match="could not be written"):
            ContributionStore(tmp_path / "c")
    finally:
        store.close()


def test_market_receipts_need_the_customer_a_job_this_device_ran_and_count_once(
        ledger: ContributionLedger) -> None:
    """Mirrors the FL receipt rules for the market's job receipts (issue 12 item 5)."""
    job = b"\5" * 32
    # no market session for that job: this device did no work for it
    assert refused(ledger.credit, MARKET_JOB, job_receipt(job=job), NOW) is RefuseReason.FOREIGN
    s = ledger.start("market", job.hex(), NOW)
    # signed by someone else than the customer it names (a forgery), for another device,
    # by the worker itself
    forged = unpack(sign_work_receipt(key("mallory"), worker=ME, job=job, outcome=Outcome.VALIDATED,
                                      tokens=9, cpu_seconds=0.0, fuel=1, time=NOW).encode())
    forged["issuer"] = CUSTOMER
    assert refused(ledger.credit, MARKET_JOB, pack(forged), NOW) is RefuseReason.BAD_SIGNATURE
    assert refused(ledger.credit, MARKET_JOB, job_receipt(OTHER, job=job), NOW) is RefuseReason.FOREIGN
    assert refused(ledger.credit, MARKET_JOB, job_receipt(signer="me", job=job), NOW) \
        is RefuseReason.SELF_ISSUED
    good = job_receipt(job=job, tokens=700)
    c = ledger.credit(MARKET_JOB, good, NOW + 1)
    assert (c.issuer, c.ref, c.tokens, c.outcome) == (CUSTOMER, job.hex(), 700, Outcome.VALIDATED)
    # replayed, and a second receipt for the same job newly signed: not credited twice
    assert refused(ledger.credit, MARKET_JOB, good, NOW) is RefuseReason.DUPLICATE
    assert refused(ledger.credit, MARKET_JOB, job_receipt(job=job, tokens=701), NOW) \
        is RefuseReason.DUPLICATE
    done = ledger.stop(s.session_id, SessionState.COMPLETED, NOW + 2)
    assert (done.validated, done.rejected, done.tokens) == (1, 0, 700)
    # a rejected receipt (outvoted) for another job counts against reliability, no tokens
    lost = b"\6" * 32
    s2 = ledger.start("market", lost.hex(), NOW + 3)
    ledger.credit(MARKET_JOB, job_receipt(job=lost, outcome=Outcome.REJECTED, tokens=0), NOW + 4)
    ledger.stop(s2.session_id, SessionState.ABANDONED, NOW + 5, "outvoted")
    t = ledger.totals()
    assert (t.validated, t.rejected, t.consecutive_valid, t.tokens_by_kind[MARKET_JOB]) == (1, 1, 0, 700)
    assert t.reliability == pytest.approx(reliability_of(1, 1, 1, 1))


def _history(led: ContributionLedger, days: int = 6, first: int = 0) -> list[bytes]:
    """Two FL sessions (one with a restart) and two market jobs a day, with credits."""
    jobs = []
    for d in range(first, first + days):
        t = NOW + d * 86_400
        sid = hashlib.blake2b(b"fl%d" % d, digest_size=32).digest()
        for attempt in range(2):
            s = led.start("fl", sid.hex(), t + attempt)
            led.meter(s.session_id, Usage(cpu_s=1.25, wall_s=4.0, mem_byte_s=3e9, fuel=0))
            led.stop(s.session_id, SessionState.COMPLETED if attempt else SessionState.ABANDONED,
                     t + attempt + 0.5, "restarted")
        led.credit(FL_ROUND, round_receipt({ME: 0.5, OTHER: 0.5}, sid=sid), t + 3)
        for j in range(2):
            job = hashlib.blake2b(b"job%d.%d" % (d, j), digest_size=32).digest()
            jobs.append(job)
            s = led.start("market", job.hex(), t + 10 + j)
            led.meter(s.session_id, Usage(cpu_s=0.5, wall_s=2.0, mem_byte_s=1e9, fuel=1000 + j))
            outcome = Outcome.REJECTED if (d, j) == (1, 1) else Outcome.VALIDATED
            led.credit(MARKET_JOB, job_receipt(job=job, outcome=outcome, tokens=10 * (d + 1)),
                       t + 11 + j)
            led.stop(s.session_id, SessionState.COMPLETED, t + 12 + j)
    return jobs


def test_history_is_bounded_and_folding_keeps_totals_and_reliability(tmp_path: Path) -> None:
    full = ContributionLedger(ContributionStore(tmp_path / "full"), ME, NOW)
    small = ContributionLedger(ContributionStore(tmp_path / "small"), ME, NOW, keep=5)
    try:
        _history(full)
        jobs = _history(small)
        want, got = full.totals(), small.totals()
        assert len(full.sessions(limit=1000)) == 24
        kept = small.sessions(limit=1000)
        assert len(kept) <= 5 and len(small.days()) >= 5
        assert kept[0].started == max(s.started for s in full.sessions(limit=1000))
        for f in ("sessions", "completed", "abandoned", "validated", "rejected", "tokens",
                  "tokens_by_kind", "fuel", "consecutive_valid", "running"):
            assert getattr(got, f) == getattr(want, f), f
        for f in ("cpu_seconds", "wall_seconds", "memory_mb_hours", "reliability"):
            assert getattr(got, f) == pytest.approx(getattr(want, f)), f
        assert got.rejected == 1 and got.consecutive_valid == 12   # 3 a day after day 1
        # a folded job's receipt replayed: no record of that work, not credited again
        assert refused(small.credit, MARKET_JOB, job_receipt(job=jobs[0], tokens=10), NOW) \
            is RefuseReason.FOREIGN
        small.close()
        db = plyvel.DB(str(tmp_path / "small"))
        stored = sum(1 for _ in db.iterator(prefix=b"s/")) + sum(1 for _ in db.iterator(prefix=b"c/"))
        db.close()
        assert stored <= 10, "sessions and credits on disk are bounded too"
        small = ContributionLedger(ContributionStore(tmp_path / "small"), ME, NOW + 10**6, keep=5)
        again = small.totals()
        assert (again.sessions, again.validated, again.rejected, again.tokens,
                again.consecutive_valid) == (want.sessions, want.validated, want.rejected,
                                             want.tokens, want.consecutive_valid)
        assert again.reliability == pytest.approx(want.reliability)
        # a running session's work item is never folded, and the fold goes on as work ends
        s = small.start("manual", "long", NOW + 10**6)
        _history(small, days=1, first=10)
        assert small.get(s.session_id) is not None and len(small.sessions(limit=1000)) <= 6
    finally:
        full.close()
        small.close()


def _running_exact(led: ContributionLedger) -> None:
    assert led.running_count() == len(led.running())


@settings(max_examples=25)
@given(st.lists(st.tuples(st.sampled_from(["start", "meter", "credit", "complete", "abandon"]),
                          st.integers(0, 3)), max_size=16))
def test_running_count_equals_the_running_sessions_after_every_change(ops: list[tuple[str, int]]) -> None:
    """running_count() (node.info's running_sessions, O(1)) equals len(running()) after a start,
    a meter, a credit (a session's counters change), a stop (completed, abandoned, or of a
    session already ended), a fold of old history (keep=2) and a reopen (left-running sessions
    are closed as abandoned)."""
    with tempfile.TemporaryDirectory() as d:
        led = ContributionLedger(ContributionStore(Path(d) / "c"), ME, NOW, keep=2)
        sessions: list[bytes] = []
        try:
            for i, (what, n) in enumerate(ops):
                t = NOW + i
                job = bytes([n]) * 32
                if what == "start":
                    sessions.append(led.start("market", job.hex(), t).session_id)
                elif what == "credit":
                    try:
                        led.credit(MARKET_JOB, job_receipt(job=job), t)
                    except ReceiptRefused:
                        pass                   # no session for that job yet, or credited already
                elif sessions:
                    sid = sessions[n % len(sessions)]
                    if what == "meter":
                        led.meter(sid, Usage(cpu_s=float(i)))
                    elif led.get(sid) is not None:     # not folded away
                        led.stop(sid, SessionState.COMPLETED if what == "complete" else SessionState.ABANDONED, t)
                _running_exact(led)
        finally:
            led.close()
        led = ContributionLedger(ContributionStore(Path(d) / "c"), ME, NOW + 100, keep=2)
        try:
            _running_exact(led)
            assert led.running_count() == 0
        finally:
            led.close()
