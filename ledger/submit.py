"""The client side of orders: sign the sender's next order, gather a quorum of votes, apply and
gossip the certificate; and the orders other roles and the wallet RPC make (pay, rewards).

An order is driven in rounds: every committee member that has not voted (and is not being asked
already) is asked over its order stream; this node's own validator answers directly. Those a
quorum needs are asked first (`VoteCollector.first_asks`: with equal stakes and this node a
validator, 2 of the 3 others in a committee of 4: those that signed the sender's previous
certificate, which this node remembers, unless one has many requests waiting; else chosen by
the order's id); the others are
asked after `hedge_delay` seconds if no certificate formed by then, or at once when the first
ones all answered without one (a refusal, a failure). So a validator whose vote would not be
needed neither verifies, locks, signs nor answers the order (it applies the certificate from
gossip), which is a third of the order traffic and of the validators' work in a committee of
4; a slow or silent validator among the first costs up to `hedge_delay` of latency.
`hedge_delay = 0` asks everyone at once (the behaviour before session 23). After each
round the sans-IO `VoteCollector.decide` (client.py) says whether to take the certificate, give
up (a definitive refusal, or the deadline), or ask again after `retry_interval`. The asks run in
the submitter's nursery, so the slowest validator still gets its request answered (its stream
stays usable) after the quorum is reached.

An order is recorded in flight (store) before it is first sent and cleared once its certificate
is stored: after a timeout or a crash, the next submit from the same sender drives it again
instead of signing another order for its sequence (which would be a fork). This node's own
validator decides the order just before, so its lock and the record are one synced write.

A refused order is dropped (and its sequence given to the next order) only when no validator
can hold a lock on it: none voted for it, and every request that may have reached a validator
was answered. A request whose stream never opened (`RequestNotSent`) reached nobody; for an
order driven before (by an earlier submit, or before a crash) every validator silent now counts
as possibly reached. If some validator voted, or may have, the order keeps its sequence
(`OrderStuck`): it stays in flight and the next submit drives it again, because a validator that
voted would see another order for the sequence as a fork. That is FastPay's rule: a correct
client never signs two orders for one sequence, even when the first cannot be certified any more.

An order that took more than SLOW_ORDER seconds from `submit` to final is logged at INFO with
the time of each phase (waiting for the sender's earlier send, re-driving an earlier order, the
durable in-flight record, the votes and rounds, the durable certificate); one line per wallet
per SLOW_LOG_INTERVAL seconds at most.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import trio
from nacl.signing import SigningKey

from fognode.ledger.address import encode_address
from fognode.ledger.client import Decision, VoteCollector
from fognode.ledger.errors import LedgerStorageFailed, OrderRejected, RequestNotSent, WalletError
from fognode.ledger.events import RewardsDistributed
from fognode.ledger.genesis import Genesis
from fognode.ledger.messages import (Certificate, MintOrder, Order, Rejection, SignedOrder, TransferOrder, Vote,
                                     decode_rejection, decode_vote, order_problem, order_request)
from fognode.ledger.ports import Publisher, Requester, Validating
from fognode.ledger.receipts import Receipt
from fognode.ledger.rewards import Allocation, distribute_rewards
from fognode.ledger.settings import Settings
from fognode.ledger.state import LedgerState
from fognode.ledger.store import LedgerStore
from fognode.ledger.wallet import PASSPHRASE_ENV, Keystore
from fognode.node.errors import FognodeError, RemoteProtocolError
from fognode.node.faults import LogRateLimiter
from fognode.node.peerid import peer_id_from_pubkey
from fognode.node.role import NodeContext
from fognode.node.wire import Fields

log = logging.getLogger("fognode.ledger")

SLOW_ORDER = 1.0            # seconds from submit to final above which an order's phases are logged
SLOW_LOG_INTERVAL = 10.0    # seconds between two such lines for one wallet


class _Phases:
    """When each phase of one submit ended (trio's clock), for the slow-order line."""

    __slots__ = ("start", "marks", "rounds")

    def __init__(self) -> None:
        self.start = trio.current_time()
        self.marks: list[tuple[str, float]] = []
        self.rounds = 0

    def mark(self, phase: str) -> None:
        self.marks.append((phase, trio.current_time()))

    def describe(self) -> str:
        out, last = [], self.start
        for phase, t in self.marks:
            out.append(f"{phase} {1000 * (t - last):,.0f} ms")
            last = t
        return ", ".join(out)


class _Round:
    """One round of asks: how many are still out, and the event set when none is (or a
    certificate formed)."""

    __slots__ = ("left", "done")

    def __init__(self) -> None:
        self.left = 0
        self.done = trio.Event()


class NotCertified(FognodeError):
    """The order did not gather a quorum before the deadline; `status` says how far it got."""

    def __init__(self, message: str, status: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status


class OrderStuck(NotCertified):
    """Enough stake refused the order that it cannot be certified now, but some validator voted
    for it (or may have): it keeps its sequence and stays in flight (module docstring)."""


class OrderSubmitter:
    """Orders from this node's wallets. `run()` (in the ledger's nursery) hosts the asks until
    cancelled and unlocks the wallets at start (`unlock_wallets`); `submit` and the order
    makers below wait for a certificate."""

    def __init__(self, ctx: NodeContext, settings: Settings, genesis: Genesis, state: LedgerState,
                 store: LedgerStore, keystore: Keystore, passphrase: str | None, ledger: Validating,
                 requests: Requester, gossip: Publisher) -> None:
        self.ctx = ctx
        self.s = settings
        self.genesis = genesis
        self.state = state
        self.store = store
        self.keystore = keystore
        self.passphrase = passphrase
        self.ledger = ledger
        self.requests = requests
        self.gossip = gossip
        self.me = bytes(ctx.identity.verify_key)
        self._sender_locks: dict[bytes, trio.Lock] = {}
        self._signers: dict[bytes, frozenset[bytes]] = {}    # sender -> signers of its last certificate
        self._unlocking: dict[bytes, trio.Event] = {}      # wallet -> its key derivation running
        self._peer_ids: dict[bytes, str] = {}      # validator key -> its peer id (committee members)
        self._slow_log = LogRateLimiter(interval=SLOW_LOG_INTERVAL)
        self._nursery: trio.Nursery | None = None
        # why this node's last order found no quorum in time (None once one is certified again):
        # the ledger role reports itself degraded meanwhile (LedgerRole.health_report)
        self.quorum_problem: str | None = None

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.unlock_wallets)
                await trio.sleep_forever()
        finally:
            self._nursery = None

    # -- wallets -----------------------------------------------------------------------------------

    def default_wallet(self) -> bytes:
        pub = self.keystore.default()
        if pub is None:
            raise WalletError(f"this node has no wallet: run `fognode init` or set {PASSPHRASE_ENV} and restart")
        return pub

    async def unlock_wallet(self, pubkey: bytes) -> SigningKey:
        """The wallet's signing key (Argon2id runs in a worker thread, the first time only: an
        unlocked key is taken from the keystore's cache without a thread hop; a derivation
        already running for the wallet, `unlock_wallets`' or another send's, is waited for,
        not repeated). Raises WalletError."""
        if pubkey == self.me:
            return self.ctx.identity
        while True:
            cached = self.keystore.unlocked(pubkey)
            if cached is not None:
                return cached
            running = self._unlocking.get(pubkey)
            if running is None:
                break
            await running.wait()      # it failed if nothing is cached now: derive (and fail) here
        if not self.keystore.has(pubkey):
            raise WalletError(f"no wallet {encode_address(pubkey)} on this node")
        done = self._unlocking[pubkey] = trio.Event()
        try:
            return await trio.to_thread.run_sync(self.keystore.unlock, pubkey, self.passphrase)
        finally:
            del self._unlocking[pubkey]
            done.set()

    async def unlock_wallets(self) -> None:
        """At start, once the node is ready (every role started, `node.info` answering), with
        a passphrase: unlock every wallet of the keystore, one after the other in a worker
        thread, so no wallet's first send waits for its Argon2id derivation (about 0.1 s of CPU
        and 64 MiB each; 16 wallets deriving at once on 2 cores held their first sends 1-10 s).
        No secret is exposed that was not: the daemon holds the passphrase for its lifetime. A
        wallet that does not open (another passphrase, unreadable) stays locked, saying why."""
        if self.passphrase is None:
            return
        if (node := self.ctx.services.get("node")) is not None:   # the roles after this one first
            await node.ready.wait()
        try:
            wallets = await trio.to_thread.run_sync(self.keystore.list)
        except WalletError as e:
            log.warning("wallets not unlocked at start: %s", e)
            return
        for w in wallets:
            try:
                await self.unlock_wallet(w.pubkey)
            except WalletError as e:
                log.info("wallet %s stays locked: %s", w.address, e)

    # -- orders --------------------------------------------------------------------------------------

    def _lock_for(self, sender: bytes) -> trio.Lock:
        return self._sender_locks.setdefault(sender, trio.Lock())

    async def submit(self, key: SigningKey, make: Callable[[int, int], Order], timeout: float, *,
                     completed: list[Certificate] | None = None) -> Certificate:
        """Sign the sender's next order (`make(sequence, epoch)`), gather a quorum, apply and
        gossip the certificate. Raises OrderRejected (a definitive refusal; nothing applied)
        or NotCertified (deadline passed: the order stays in flight and is re-driven by the
        next submit from the same sender, never replaced by another one for its sequence),
        or LedgerStorageFailed (the ledger could not write its store and stopped: the order
        was not signed, or it stays in flight if it was). An earlier in-flight order of the
        sender that this call certified first is appended to `completed`."""
        self.ledger.check_usable()
        sender = bytes(key.verify_key)
        phases = _Phases()
        deadline = phases.start + timeout
        lock = self._lock_for(sender)
        if lock.locked():
            await lock.acquire()
            phases.mark("waiting for the wallet's earlier send")
        else:
            lock.acquire_nowait()      # free: no scheduler round (the drive checkpoints anyway)
        try:
            inflight = self.store.inflight(sender)
            if inflight is not None:
                if self.state.account(sender).next_sequence > inflight.order.sequence:
                    self.ledger.forget_inflight(sender)
                else:
                    try:
                        done = await self._drive(inflight, deadline, earlier=True)
                        if completed is not None:
                            completed.append(done)
                    except OrderRejected as e:
                        # refused and locked nowhere (_drive dropped it): this order takes its sequence
                        log.warning("the earlier order %s of %s was refused and dropped: %s",
                                    inflight.tx_id.hex(), encode_address(sender), e)
                    phases.mark("the earlier order in flight")
            seq = self.state.account(sender).next_sequence
            so = SignedOrder.sign(key, make(seq, self.genesis.epoch_at(self.ctx.clock())))
            problem = order_problem(so.order) or self.state.order_problem(so.order)
            if problem:
                raise OrderRejected(*problem)
            # this node's validator decides first: its lock joins the in-flight record's group
            # (one synced write, not two; the vote counts only in a certificate stored after both)
            mine = (self.ledger.validate(self.ctx.peer_id, so)
                    if self.me in self.state.committee_for(so.order.epoch) else [])
            await self.ledger.persist_inflight(so)
            phases.mark("in-flight record")
            cert = await self._drive(so, deadline, phases=phases, mine=mine)
            phases.mark("certificate durable")
            self._log_if_slow(so, phases)
            return cert
        finally:
            lock.release()

    def _log_if_slow(self, so: SignedOrder, phases: _Phases) -> None:
        took = trio.current_time() - phases.start
        if took <= SLOW_ORDER:
            return
        held = self._slow_log.admit(so.order.sender, trio.current_time())
        if held is not None:
            log.info("slow order %s of %s: %.2f s (%s)%s", so.tx_id.hex()[:16], encode_address(so.order.sender),
                     took, phases.describe(), f"; {held} more slow orders of this wallet not logged" if held else "")

    async def _drive(self, so: SignedOrder, deadline: float, *, earlier: bool = False,
                     phases: _Phases | None = None, mine: list[Vote | Rejection] | None = None) -> Certificate:
        """Gather a quorum for `so` until `deadline`. `earlier`: the order was driven before
        (a timeout, a crash), so a validator not answering now may have received it then.
        `phases` gets the votes' phase marked (rounds counted). `mine`: this node's validator
        decided the order already (submit), for the first round."""
        committee = self.state.committee_for(so.order.epoch)
        collector = VoteCollector(so, committee)
        sender, seq = so.key
        prev = self.store.certificate_bytes(self.store.tx_at(sender, seq - 1) or b"") if seq > 0 else None
        request = order_request(so, prev)      # packed once for every validator asked
        asking: set[bytes] = set()
        unanswered: set[bytes] = set()      # asked, the request may have arrived, no answer yet
        while True:
            self.ledger.check_usable()
            if phases is not None:
                phases.rounds += 1
            if mine is not None:
                for r in mine:
                    self._collect(collector, self.me, r)
                mine = None
            elif self.me in committee and self.me not in collector.votes:
                for r in self.ledger.validate(self.ctx.peer_id, so):
                    self._collect(collector, self.me, r)
            # ask every validator that has not voted and is not being asked already: those a
            # quorum needs first, the others after the hedge delay or as soon as the first ones
            # all answered without a certificate (see the module docstring)
            rnd = _Round()
            targets = collector.unasked(self.me, asking)
            if targets:
                end = trio.current_time() + max(0.0, min(self.s.request_timeout + 0.5, deadline - trio.current_time()))
                first = (collector.first_asks(targets, asking, so.tx_id, {v: self.requests.in_flight(v) for v in targets},
                                              self._signers.get(sender, frozenset()))
                         if self.s.hedge_delay > 0 else targets)
                later = [v for v in targets if v not in first]
                self._ask_all(first, rnd, request, collector, asking, unanswered, deadline)
                if later:
                    with trio.move_on_at(min(end, trio.current_time() + self.s.hedge_delay)):
                        await rnd.done.wait()
                    if collector.certificate is None:
                        if rnd.done.is_set():       # the first ones answered: a refusal, or a failure
                            rnd.done = trio.Event()
                        self._ask_all(later, rnd, request, collector, asking, unanswered, deadline)
                if not rnd.done.is_set():      # (set already: no scheduler round)
                    with trio.move_on_at(end):
                        await rnd.done.wait()
            now = trio.current_time()
            decision = collector.decide(now, deadline)
            if decision is Decision.CERTIFIED:
                assert collector.certificate is not None
                self.quorum_problem = None
                if phases is not None:
                    phases.mark(f"votes ({phases.rounds} round{'s' if phases.rounds > 1 else ''}, "
                                f"{len(collector.votes)} votes)")
                return await self._certified(so, collector.certificate)
            if decision is Decision.REJECTED:
                reason = collector.main_reason()
                assert reason is not None      # decide() rejects for a reason
                reasons = "; ".join(f"{v}: {m}" for v, m in collector.reasons().items())
                if earlier:     # silent now, but perhaps reached by an earlier drive
                    unanswered |= {v for v in committee.members
                                   if v not in collector.votes and v not in collector.rejections}
                if collector.votes or unanswered:
                    raise self._stuck(so, collector, unanswered, reasons)
                self.ledger.forget_inflight(sender)
                await self.ledger.flushed()      # wallet.history no longer lists it
                raise OrderRejected(reason, reasons)
            if decision is Decision.EXPIRED:
                voted = sum(committee.stake_of(v) for v in collector.votes)
                self.quorum_problem = (f"the last order gathered votes of {voted} of {committee.total} stake "
                                       f"(quorum {committee.quorum_stake}) before its deadline")
                raise NotCertified(
                    f"order {so.tx_id.hex()} not certified in time: votes from "
                    f"{sum(committee.stake_of(v) for v in collector.votes)} of {committee.total} stake "
                    f"(quorum {committee.quorum_stake}); it stays in flight",
                    {"tx": so.tx_id.hex(), "status": "in_flight", "votes": len(collector.votes),
                     "validators": len(committee.members), "rejections": collector.reasons()})
            await trio.sleep(min(self.s.retry_interval, deadline - now))

    @staticmethod
    def _stuck(so: SignedOrder, collector: VoteCollector, unanswered: set[bytes], reasons: str) -> OrderStuck:
        """The error for a refused order that some validator voted for, or may have."""
        c = collector.committee
        voted = sum(c.stake_of(v) for v in collector.votes)
        maybe = sum(c.stake_of(v) for v in unanswered)
        refused = collector.refused_for_good()
        never = collector.never_certifiable()
        outlook = ("a quorum refused it for good, so it can never be certified; releasing its sequence "
                   "would be sound but is not built (client.py)" if never else
                   "it can be certified only if refusers change their minds (their locks stand)")
        return OrderStuck(
            f"order {so.tx_id.hex()} (sequence {so.order.sequence}) was refused for good by validators with "
            f"{refused} of {c.total} stake ({reasons}), but validators with {voted} stake voted for it"
            f"{f' and {maybe} more may have' if maybe else ''}: it keeps its sequence (another order "
            f"for it would be a fork) and stays in flight; the wallet's next order drives it again; "
            f"{outlook}",
            {"tx": so.tx_id.hex(), "status": "stuck", "votes": len(collector.votes),
             "unanswered": len(unanswered), "validators": len(c.members), "rejections": collector.reasons(),
             "never_certifiable": never})

    async def _certified(self, so: SignedOrder, cert: Certificate) -> Certificate:
        """Store, gossip and clear the in-flight record of the order's certificate. Gossiped
        and returned only once durable (with this node's own lock, service.py)."""
        try:
            self.ledger.ingest(self.ctx.peer_id, [cert])
            await self.ledger.flushed()
        except LedgerStorageFailed as e:
            raise LedgerStorageFailed(
                f"order {so.tx_id.hex()} was certified, but this node could not store its certificate: "
                f"{e}. The order stays in flight: the next send from this wallet after a restart "
                f"completes it", path=e.path, cause=e.cause) from None
        self.gossip.publish_later(cert)
        self._signers[so.key[0]] = frozenset(v for v, _ in cert.votes)
        # cleared after the certificate is stored: a crash (or a failed write) in between
        # leaves an in-flight record whose sequence is applied, which the next submit drops
        try:
            self.ledger.forget_inflight(so.key[0])
        except LedgerStorageFailed:
            pass       # the transfer is final and stored; the ledger stops (reported once)
        return cert

    def _ask_all(self, validators: list[bytes], rnd: _Round, request: bytes, collector: VoteCollector,
                 asking: set[bytes], unanswered: set[bytes], deadline: float) -> None:
        rnd.left += len(validators)
        asking.update(validators)
        for v in validators:
            self._spawn(self._ask, v, request, collector, asking, unanswered, rnd, deadline)

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is None:
            raise NotCertified("the ledger service is not running", {"status": "stopped"})
        self._nursery.start_soon(fn, *args)

    def _collect(self, collector: VoteCollector, validator: bytes, reply: Any) -> None:
        if isinstance(reply, Rejection):
            collector.add_rejection(validator, reply)
        else:
            collector.add_vote(reply)

    async def _ask(self, validator: bytes, request: bytes, collector: VoteCollector,
                   asking: set[bytes], unanswered: set[bytes], rnd: _Round, deadline: float) -> None:
        """Ask one validator (within request_timeout and the order's `deadline`); its answer
        goes to `collector`. `unanswered` holds the validators a request may have reached
        without an answer since (they may hold a lock)."""
        peer = self._peer_ids.get(validator)
        if peer is None:      # base58, about 20 us: once per validator, not per ask
            peer = self._peer_ids[validator] = peer_id_from_pubkey(validator)
        try:
            try:
                raw = await self.requests.request(validator, peer, request, deadline=deadline)
            except RequestNotSent as e:
                log.debug("validator %s not reached: %s", peer, e)
                return
            except BaseException:
                unanswered.add(validator)
                raise
            unanswered.discard(validator)
            f = Fields(raw, "ledger.OrderReply", versions={1}, peer=peer)
            if f.has("vote"):
                reply: Any = decode_vote(f.map("vote"), peer=peer)
                if reply.validator != validator:
                    raise RemoteProtocolError("ledger.OrderReply: vote signed by another validator", peer=peer)
            else:
                reply = decode_rejection(f.map("rejection"), peer=peer)
            f.done()
            self._collect(collector, validator, reply)
        except (FognodeError, trio.TooSlowError) as e:
            log.debug("validator %s did not answer: %s", peer, e)
        finally:
            asking.discard(validator)
            rnd.left -= 1
            if collector.certificate is not None or rnd.left == 0:
                rnd.done.set()

    # -- the orders other roles make -----------------------------------------------------------------

    async def pay(self, to: bytes, amount: int, memo: str = "", *, timeout: float = 30.0,
                  wallet: bytes | None = None) -> Certificate:
        """Transfer from a local wallet (default: the node's). Raises OrderRejected,
        NotCertified, WalletError."""
        key = await self.unlock_wallet(wallet or self.default_wallet())
        fee = self.genesis.fee
        return await self.submit(key, lambda seq, ep: TransferOrder(
            chain=self.genesis.chain_id, epoch=ep, sender=bytes(key.verify_key), sequence=seq, fee=fee,
            recipient=to, amount=amount, memo=memo), timeout)

    async def submit_reward(self, receipt: Receipt, amount: int, *, timeout: float = 30.0) -> Certificate:
        """Mint `amount` to the receipt's beneficiary; this node's default wallet pays the fee."""
        key = await self.unlock_wallet(self.default_wallet())
        fee = self.genesis.fee
        return await self.submit(key, lambda seq, ep: MintOrder(
            chain=self.genesis.chain_id, epoch=ep, sender=bytes(key.verify_key), sequence=seq, fee=fee,
            recipient=receipt.beneficiary, amount=amount, receipt=receipt), timeout)

    async def distribute_rewards(self, allocations: list[Allocation], *, timeout: float = 60.0) -> list[str]:
        """Pay each allocation with a mint order from the default wallet, one after the other;
        returns the transaction ids of those paid. An allocation the validators refuse (e.g. a
        claim paid already) is logged and skipped; NotCertified (a timeout: the order stays in
        flight) stops the distribution. Publishes RewardsDistributed."""
        key = await self.unlock_wallet(self.default_wallet())
        epoch = self.genesis.epoch_at(self.ctx.clock())
        txs: list[str] = []
        total = 0
        for order in distribute_rewards(allocations, chain=self.genesis.chain_id, epoch=epoch,
                                        sender=bytes(key.verify_key), first_sequence=0, fee=self.genesis.fee):
            try:
                cert = await self.submit(key, _renumbered(order), timeout)
            except OrderRejected as e:
                log.warning("reward of %d to %s refused: %s", order.amount, encode_address(order.recipient), e)
                continue
            txs.append(cert.tx_id.hex())
            total += order.amount
        self.ctx.events.publish(RewardsDistributed(distributor=encode_address(bytes(key.verify_key)),
                                                   epoch=epoch, count=len(txs), total=total, txs=tuple(txs)))
        return txs


def _renumbered(o: MintOrder) -> Callable[[int, int], Order]:
    """`o` with the sequence and epoch `submit` assigns."""
    def make(seq: int, epoch: int) -> Order:
        return MintOrder(chain=o.chain, epoch=epoch, sender=o.sender, sequence=seq, fee=o.fee,
                         recipient=o.recipient, amount=o.amount, receipt=o.receipt)
    return make
