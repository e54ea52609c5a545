"""The ledger role: `[protocols.ledger]` in node.toml, RPC methods wallet.* / ledger.* / stake.* /
escrow.* / pool.* (rewardpool_rpc.py).

The engine (stores, cores, streams, gossip) is `LedgerService` (service.py); this module maps
it to the role interface and the control socket, and offers other roles its `LedgerApi`
(api.py) as ctx.services "ledger". Amounts cross the RPC boundary as decimal
strings ("12.5"); addresses as fog1 strings; transaction ids as hex.

Once the ledger's store failed a write (service.py: disk full), every method answers error
211 with the reason (path and cause) until the daemon, which stops on it, is restarted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import trio

from fognode.ledger.address import encode_address
from fognode.ledger.audit import compare
from fognode.ledger.amounts import format_amount
from fognode.ledger.errors import (LEDGER_BAD_DEBIT_NOTE, LEDGER_ESCROW_UNKNOWN, LEDGER_INVARIANT_BROKEN,
                                   LEDGER_NOT_READY, LEDGER_STORAGE_FAILED, LEDGER_UNKNOWN_TX,
                                   LEDGER_UNKNOWN_WALLET, LEDGER_WALLET_LOCKED, LedgerStorageFailed,
                                   WalletError)
from fognode.ledger.escrow_client import EscrowClient
from fognode.ledger.escrow_orders import decode_debit_note
from fognode.ledger.escrow_view import describe_escrow
from fognode.ledger.history_view import describe_order, history_row
from fognode.ledger.messages import BondOrder, Certificate, TransferOrder, UnbondOrder
from fognode.ledger.api import SERVICE_NAME, LedgerApi
from fognode.ledger.certgossip import CERT_TOPIC
from fognode.ledger.order_streams import ORDER_STREAM
from fognode.ledger.rewardpool_rpc import PoolRpc
from fognode.ledger.rpc_params import order_errors, parse_address, parse_amount_param, parse_hex32
from fognode.ledger.service import LedgerService
from fognode.ledger.settings import Settings
from fognode.ledger.sync import SYNC_STREAM
from fognode.ledger.vote_watch import VoteWatch
from fognode.node.errors import ConfigError, FognodeError, RpcError
from fognode.node.health import HealthReport, Status
from fognode.node.role import NodeContext, Role
from fognode.node.rpc.methods import rpc_method
from fognode.node.wire import pack, unpack


@dataclass(frozen=True)
class LedgerConfig:
    batch_interval: float = 0.2      # seconds certificates gather before one gossip batch
    batch_max: int = 64              # certificates per gossip message at most
    sync_interval: float = 10.0      # seconds between anti-entropy syncs with a random peer
    sync_batch: int = 256            # certificates per sync response
    request_timeout: float = 5.0     # seconds for one validator to answer an order
    retry_interval: float = 1.0      # seconds between rounds asking validators that did not vote
    hedge_delay: float = 0.25        # seconds before validators a quorum does not need are asked too (0: all at once)
    send_timeout: float = 30.0       # default seconds wallet.send waits for the certificate
    pending_max: int = 10000         # certificates kept waiting for predecessors
    verify_sender: bool = True       # replicas re-check the sender's signature (validators always do)
    uptime_interval: float = 10.0    # seconds between samples of connected peers (uptime receipts)
    uptime_claims: bool = True       # claim this node's uptime reward after each epoch

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key (load_config calls it: the daemon stops)."""
        bounds = [(n, 0.01, 86400) for n in ("batch_interval", "sync_interval", "request_timeout", "retry_interval",
                                             "send_timeout", "uptime_interval")]
        for name, lo, hi in bounds + [("hedge_delay", 0, 86400), ("batch_max", 1, 10**6), ("sync_batch", 1, 10**6)]:
            if not lo <= (value := getattr(self, name)) <= hi:    # a batch_max or sync_batch of 0 moved nothing
                raise ConfigError(f"must be between {lo} and {hi}, got {value}", key=f"protocols.ledger.{name}")


class LedgerRole(PoolRpc, Role):
    """Token ledger replica, validator (when in the committee) and wallets."""

    name = "ledger"
    Config = LedgerConfig
    stream_ids = (ORDER_STREAM, SYNC_STREAM)
    topics = (CERT_TOPIC,)

    def __init__(self, ctx: NodeContext, config: LedgerConfig) -> None:
        super().__init__(ctx, config)
        config.validate()
        self.service: LedgerService | None = None
        self.failure: str = ""     # why the ledger stopped (a storage failure), kept after run() ends
        self.votes = VoteWatch(after=2 * config.request_timeout + 2 * config.sync_interval)
        self._root_hex: tuple[bytes, str] | None = None     # health_detail: (root, its first 16 hex digits)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        c = self.config
        try:
            self.service = LedgerService(self.ctx, Settings(
                batch_interval=c.batch_interval, batch_max=c.batch_max, sync_interval=c.sync_interval,
                sync_batch=c.sync_batch, request_timeout=c.request_timeout, retry_interval=c.retry_interval,
                hedge_delay=c.hedge_delay,
                pending_max=c.pending_max, verify_sender=c.verify_sender, uptime_interval=c.uptime_interval,
                uptime_claims=c.uptime_claims))
        except LedgerStorageFailed as e:     # the store cannot even be opened (disk full?)
            self.failure = str(e)
            raise
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.service.run)
                self.ctx.services.provide(SERVICE_NAME, LedgerApi(self.service))
                task_status.started()
        finally:
            if self.service is not None and self.service.failure is not None:
                self.failure = str(self.service.failure)
            self.ctx.services.withdraw(SERVICE_NAME)
            self.service = None

    def health_detail(self) -> dict[str, Any]:
        s = self.service
        if s is None:
            return {}
        if s.failure is not None:
            return {"storage_failed": str(s.failure)}
        root = s.state.root()      # memoised per accumulator (state.py); its hex per root object here
        memo = self._root_hex
        if memo is None or memo[0] is not root:
            memo = self._root_hex = (root, root.hex()[:16])
        return {"applied": s.state.applied, "pending": len(s.replica.pending), "root": memo[1],
                "validator": s.validator.is_member(s.genesis.epoch_at(self.ctx.clock()))}

    def health_report(self) -> HealthReport:
        """Unhealthy when its storage failed; degraded when this node's last order found no quorum
        before its deadline (until one is certified again), when orders this validator signed
        are not certified within 2 request timeouts + 2 sync intervals (vote_watch.py: no quorum,
        seen without an order of its own), or when the certificates waiting for a missing
        predecessor fill half of pending_max (this replica is not catching up)."""
        s = self.service
        failure = self.failure or (str(s.failure) if s is not None and s.failure is not None else "")
        if failure:
            return HealthReport(Status.UNHEALTHY, f"storage failed: {failure}")
        if s is not None and s.submitter.quorum_problem:
            return HealthReport(Status.DEGRADED, f"cannot reach a quorum: {s.submitter.quorum_problem}")
        unfollowed = self.votes.check(s.locks, s.state, self.ctx.clock()) if s is not None else ""
        if unfollowed:
            return HealthReport(Status.DEGRADED, unfollowed)
        if s is not None and len(s.replica.pending) >= self.config.pending_max // 2:
            return HealthReport(Status.DEGRADED, f"{len(s.replica.pending)} certificates wait for missing "
                                                 "predecessors: this replica is not catching up")
        return HealthReport.healthy()

    # -- helpers ---------------------------------------------------------------------------------

    def _svc(self) -> LedgerService:
        if self.service is not None and self.service.failure is not None:
            self.failure = str(self.service.failure)
        if self.failure:
            raise RpcError(LEDGER_STORAGE_FAILED, f"the ledger stopped: {self.failure}")
        if self.service is None:
            raise RpcError(LEDGER_NOT_READY, "the ledger role is not running yet")
        return self.service

    def _wallet(self, wallet: str) -> bytes:
        s = self._svc()
        if wallet:
            pub = parse_address(wallet, "wallet")
            if not s.keystore.has(pub):
                raise RpcError(LEDGER_UNKNOWN_WALLET, f"no wallet {wallet} on this node (see wallet.list)")
            return pub
        try:
            return s.submitter.default_wallet()
        except WalletError as e:
            raise RpcError(LEDGER_UNKNOWN_WALLET, str(e)) from None

    async def _submit(self, wallet: str, make: Any, timeout: float) -> dict[str, Any]:
        """Submit the wallet's next order; its result (`_result`), saying also which earlier
        in-flight order of the wallet this call completed first, if any."""
        s = self._svc()
        pub = self._wallet(wallet)
        earlier: list[Certificate] = []
        with order_errors():
            key = await s.submitter.unlock_wallet(pub)
            cert = await s.submitter.submit(key, make(bytes(key.verify_key)),
                                            timeout if timeout > 0 else self.config.send_timeout,
                                            completed=earlier)
        res = self._result(cert)
        if earlier:
            e = earlier[0]
            res["completed_earlier"] = {"tx": e.tx_id.hex(), **{k: v for k, v in describe_order(e.order.order).items()
                                                                 if k in ("kind", "sequence", "recipient", "amount")}}
        return res

    def _result(self, cert: Certificate) -> dict[str, Any]:
        return {"tx": cert.tx_id.hex(), "status": "final", **describe_order(cert.order.order),
                "validators": len(cert.votes)}

    def _committee(self, epoch: int) -> dict[str, Any]:
        """The committee of `epoch` as this replica knows it: certified for that epoch, or
        inherited from the latest certified one before it (or genesis); for an epoch not
        certified yet, also the member list this replica computes from stake."""
        s = self._svc()
        book = s.state.committees
        c = s.state.committee_for(epoch)
        cert = book.certified(epoch)
        src = max((e for e in book.certs if e <= epoch), default=0)
        out: dict[str, Any] = {
            "epoch": epoch, "certified": cert is not None, "from_epoch": src,
            "source": "certified" if cert is not None else ("inherited" if src else "genesis"),
            "members": [{"address": encode_address(k), "stake": format_amount(v)} for k, v in c.members.items()],
            "quorum_stake": format_amount(c.quorum_stake)}
        if cert is None and epoch >= 2:
            out["computed"] = [{"address": encode_address(k), "stake": format_amount(v)}
                               for k, v in s.state.computed_members(epoch)]
        era = book.era_start(epoch)
        out["took_over_at"] = era
        if era and s.me in c:
            waiting = s.handover.status()
            out["handover"] = ("complete" if era in s.validator.handovers else
                               {"waiting": True, "stake": format_amount(waiting["stake"]),
                                "needed": format_amount(waiting["needed"] + 1)} if waiting and waiting["epoch"] == era
                               else "not started")
        return out

    def _balance(self, pub: bytes) -> dict[str, Any]:
        s = self._svc()
        a = s.state.account(pub)
        epoch = s.genesis.epoch_at(self.ctx.clock())
        return {"address": encode_address(pub), "balance": format_amount(a.spendable(epoch)),
                "bonded": format_amount(a.bonded),
                "unbonding": [{"amount": format_amount(x), "release_epoch": e} for e, x in a.unbonding],
                "next_sequence": a.next_sequence}

    # -- wallet.* --------------------------------------------------------------------------------

    @rpc_method("wallet.new")
    async def wallet_new(self, label: str = "") -> dict[str, Any]:
        """Create a new wallet key in this node's keystore, encrypted with FOGNODE_PASSPHRASE."""
        s = self._svc()
        if s.passphrase is None:
            raise RpcError(LEDGER_WALLET_LOCKED, "the daemon has no passphrase: start it with FOGNODE_PASSPHRASE set")
        try:
            pub = await trio.to_thread.run_sync(s.keystore.create, s.passphrase, label)
        except WalletError as e:
            raise RpcError(LEDGER_UNKNOWN_WALLET, str(e)) from None
        return {"address": encode_address(pub), "label": label}

    @rpc_method("wallet.list")
    async def wallet_list(self) -> list[dict[str, Any]]:
        """List this node's wallets with their balances and whether each is unlocked (held in memory)."""
        s = self._svc()
        try:
            infos = s.keystore.list()
        except WalletError as e:
            raise RpcError(LEDGER_UNKNOWN_WALLET, str(e)) from None
        return [{"address": w.address, "label": w.label, "default": w.default, "dev": w.dev,
                 "unlocked": s.keystore.unlocked(w.pubkey) is not None,
                 "balance": self._balance(w.pubkey)["balance"]} for w in infos]

    @rpc_method("wallet.address")
    async def wallet_address(self, wallet: str = "") -> dict[str, Any]:
        """The address of a wallet (default: the node's default wallet)."""
        return {"address": encode_address(self._wallet(wallet))}

    @rpc_method("wallet.balance")
    async def wallet_balance(self, address: str = "") -> dict[str, Any]:
        """Spendable balance, stake and next sequence of ADDRESS (default: the node's wallet)."""
        pub = parse_address(address) if address else self._wallet("")
        return self._balance(pub)

    @rpc_method("wallet.send")
    async def wallet_send(self, to: str, amount: str, memo: str = "", wallet: str = "",
                          timeout: float = 0.0) -> dict[str, Any]:
        """Send AMOUNT tokens to address TO and wait until the transfer is final.

        Sends from the node's default wallet unless --wallet is given. Returns the transaction
        id once a quorum of validators certified it. --timeout is in seconds (0: the role's
        send_timeout, 30 by default); on timeout the error (204) says how many validators voted
        and the order stays in flight (the next send from that wallet finishes it first, and
        its result says so under `completed_earlier`)."""
        recipient = parse_address(to, "to")
        micro = parse_amount_param(amount)
        s = self._svc()

        def make(sender: bytes) -> Any:
            return lambda seq, ep: TransferOrder(chain=s.genesis.chain_id, epoch=ep, sender=sender, sequence=seq,
                                                 fee=s.genesis.fee, recipient=recipient, amount=micro, memo=memo)
        return await self._submit(wallet, make, timeout)

    @rpc_method("wallet.history")
    async def wallet_history(self, address: str = "", limit: int = 20, verbose: bool = False) -> list[dict[str, Any]]:
        """Latest transactions of ADDRESS (default: the node's wallet), newest first: when this
        node applied each, its direction (in, out, self, stake, unstake, escrow), the
        counterparty, the amount from the wallet's side, the kind and the status; an order
        this node signed that is not certified yet comes first as `in flight`. --verbose gives
        every field of each order and full ids."""
        pub = parse_address(address) if address else self._wallet("")
        s = self._svc()
        rows = []
        pending = s.store.inflight(pub)
        if pending is not None and s.state.account(pub).next_sequence <= pending.order.sequence:
            rows.append(history_row(pending.order, pending.tx_id, pub, time=None, status="in flight",
                                    verbose=verbose))
        for i, c in s.store.history(pub, max(1, min(limit, 1000))):
            row = history_row(c.order.order, c.tx_id, pub, time=s.store.applied_at(c.tx_id), status="final",
                              verbose=verbose)
            if verbose:
                row["index"] = i
            rows.append(row)
        return rows[:max(1, min(limit, 1000))]

    # -- ledger.* --------------------------------------------------------------------------------

    @rpc_method("ledger.info")
    async def ledger_info(self) -> dict[str, Any]:
        """Chain id, epoch, committee, supply and this replica's position."""
        s = self._svc()
        g = s.genesis
        epoch = g.epoch_at(self.ctx.clock())
        c = s.state.committee_for(epoch)
        return {"chain_id": g.chain_id, "epoch": epoch, "validator": s.validator.is_member(epoch),
                "committees": {"current": self._committee(epoch), "next": self._committee(epoch + 1)},
                "committee": [{"address": encode_address(k), "stake": format_amount(v)} for k, v in c.members.items()],
                "quorum_stake": format_amount(c.quorum_stake), "fee": format_amount(g.fee),
                "fee_destination": g.fee_destination.value, "applied": s.state.applied,
                "pending": len(s.replica.pending), "supply": format_amount(s.state.supply.total),
                "staked": format_amount(s.state.total_staked()), "state_root": s.state.root().hex(),
                "mint_budget": format_amount(g.emission.budget(epoch)),
                "minted_this_epoch": format_amount(s.state.minted_by_epoch.get(epoch, 0))}

    @rpc_method("ledger.tx")
    async def ledger_tx(self, tx: str) -> dict[str, Any]:
        """A transaction by its hex id, with when this node applied it and the validators that
        certified it; also an order of this node's wallets that is still in flight."""
        s = self._svc()
        try:
            tx_id = bytes.fromhex(tx)
        except ValueError:
            raise RpcError(LEDGER_UNKNOWN_TX, f"transaction id {tx!r} is not hex") from None
        found = s.store.certificate(tx_id) if len(tx_id) == 32 else None
        if found is None:
            pending = next((so for so in s.store.inflight_orders() if so.tx_id == tx_id), None)
            if pending is not None and s.state.account(pending.order.sender).next_sequence <= pending.order.sequence:
                return {"tx": tx, "status": "in flight", **describe_order(pending.order),
                        "note": "signed by a wallet of this node, not certified yet: the wallet's next "
                                "order drives it again first"}
            raise RpcError(LEDGER_UNKNOWN_TX, f"no applied transaction {tx} on this replica, and no order "
                                              f"of this node's wallets in flight with that id")
        index, cert = found
        return {"tx": tx, "index": index, "status": "final", "time": s.store.applied_at(tx_id),
                **describe_order(cert.order.order), "validators": [encode_address(k) for k, _ in cert.votes]}

    @rpc_method("ledger.verify")
    async def ledger_verify(self) -> dict[str, Any]:
        """Check this replica (error 209 if broken): the supply invariant and state root in
        memory, memory against disk, and the stored state against a replay of the stored
        history (every certificate of the apply log from genesis); each problem names the
        record and both values."""
        s = self._svc()
        problems = s.state.invariant_problems()
        async with s.writer.quiesced():      # no group half-installed while memory meets disk
            on_disk = s.store.load_state()
            problems += compare(s.state, on_disk, s.store.log_length(), "memory holds", "the disk holds")
        problems += await s.audit()
        out = {"ok": not problems, "supply": format_amount(s.state.supply.total),
               "minted": format_amount(s.state.supply.minted), "burned": format_amount(s.state.supply.burned),
               "held": format_amount(s.state.holdings()), "state_root": s.state.root().hex(),
               "applied": s.state.applied, "problems": problems}
        if problems:
            raise RpcError(LEDGER_INVARIANT_BROKEN, "ledger invariants broken: " + "; ".join(problems), out)
        return out

    @rpc_method("ledger.state_root")
    async def ledger_state_root(self) -> dict[str, Any]:
        """The state root (replicas with the same certificates have the same root)."""
        s = self._svc()
        return {"state_root": s.state.root().hex(), "applied": s.state.applied}

    @rpc_method("ledger.stats")
    async def ledger_stats(self) -> dict[str, Any]:
        """Counters: applied, pending, refused and rejected by reason, duplicates, forks, and
        the outcome of this node's latest uptime reward claims by epoch."""
        s = self._svc()
        return {"applied": s.state.applied, "pending": len(s.replica.pending),
                "pending_refused": s.replica.pending.refused, "duplicates": s.replica.duplicates,
                "certificates_refused": {r.value: n for r, n in s.replica.refused.items()},
                "orders_rejected": {r.value: n for r, n in s.validator.rejected.items()},
                "locks": len(s.locks), "forks": s.forks_seen, "accounts": len(s.state.accounts),
                "uptime_rewards": {str(e): outcome for e, outcome in sorted(s.uptime.claimed.items())}}

    # -- escrow.* (escrow.py; the market role uses api.py) -------------------------------------------

    def _escrows(self) -> EscrowClient:
        s = self._svc()
        return EscrowClient(s.submitter, s.state, self.ctx.clock)

    @rpc_method("ledger.escrow")
    async def ledger_escrow(self, escrow: str) -> dict[str, Any]:
        """The escrow ESCROW (hex id) as this replica holds it: parties, amounts, terms, state."""
        eid = parse_hex32(escrow, "escrow")
        e = self._escrows().escrow(eid)
        if e is None:
            raise RpcError(LEDGER_ESCROW_UNKNOWN, f"no escrow {escrow} on this replica")
        return describe_escrow(eid, e)

    @rpc_method("ledger.escrows")
    async def ledger_escrows(self, address: str = "") -> list[dict[str, Any]]:
        """The escrows whose customer or payee is ADDRESS (default: the node's wallet)."""
        pub = parse_address(address) if address else self._wallet("")
        return [describe_escrow(k, e) for k, e in self._escrows().escrows_of(pub)]

    @rpc_method("escrow.open")
    async def escrow_open(self, payee: str, amount: str, seconds: int, grace: int = 600, agreement: str = "",
                          wallet: str = "", timeout: float = 0.0) -> dict[str, Any]:
        """Lock AMOUNT for PAYEE until SECONDS from now; after that the rest can be refunded.

        --agreement is the agreement's hash (64 hex digits; default: a fresh random id); the
        payee may close the escrow itself --grace seconds after the deadline."""
        to, micro, w = parse_address(payee, "payee"), parse_amount_param(amount), self._wallet(wallet)
        ag = parse_hex32(agreement, "agreement") if agreement else os.urandom(32)
        with order_errors():
            cert = await self._escrows().open(ag, to, micro, int(self.ctx.clock()) + seconds, grace, wallet=w,
                                              timeout=timeout or self.config.send_timeout)
        return self._result(cert)

    @rpc_method("escrow.note")
    async def escrow_note(self, escrow: str, due: str, wallet: str = "") -> dict[str, Any]:
        """As the customer, sign a debit note: DUE tokens owed in total under ESCROW (hex)."""
        eid, micro, w = parse_hex32(escrow, "escrow"), parse_amount_param(due, "due"), self._wallet(wallet)
        with order_errors():
            note = await self._escrows().sign_debit_note(eid, micro, wallet=w)
        return {"escrow": escrow, "due": format_amount(micro), "note": pack(note.to_wire()).hex()}

    @rpc_method("escrow.pay")
    async def escrow_pay(self, note: str, wallet: str = "", timeout: float = 0.0) -> dict[str, Any]:
        """As the payee, collect what the debit NOTE (hex, from escrow.note) says is due."""
        try:
            n = decode_debit_note(unpack(bytes.fromhex(note), what="debit note"))
        except (ValueError, FognodeError) as e:
            raise RpcError(LEDGER_BAD_DEBIT_NOTE, f"note: {e}") from None
        w = self._wallet(wallet)
        with order_errors():
            cert = await self._escrows().pay_debit_note(n, wallet=w, timeout=timeout or self.config.send_timeout)
        return self._result(cert)

    @rpc_method("escrow.refund")
    async def escrow_refund(self, escrow: str, wallet: str = "", timeout: float = 0.0) -> dict[str, Any]:
        """Close ESCROW (hex): the unpaid rest to the customer, the collateral to the payee."""
        eid, w = parse_hex32(escrow, "escrow"), self._wallet(wallet)
        with order_errors():
            cert = await self._escrows().refund(eid, wallet=w, timeout=timeout or self.config.send_timeout)
        return self._result(cert)

    # -- stake.* ---------------------------------------------------------------------------------

    @rpc_method("stake.bond")
    async def stake_bond(self, amount: str, wallet: str = "", timeout: float = 0.0) -> dict[str, Any]:
        """Lock AMOUNT tokens of the wallet's balance as stake (not spendable while bonded)."""
        micro = parse_amount_param(amount)
        s = self._svc()

        def make(sender: bytes) -> Any:
            return lambda seq, ep: BondOrder(chain=s.genesis.chain_id, epoch=ep, sender=sender, sequence=seq,
                                             fee=s.genesis.fee, amount=micro)
        return await self._submit(wallet, make, timeout)

    @rpc_method("stake.unbond")
    async def stake_unbond(self, amount: str, wallet: str = "", timeout: float = 0.0) -> dict[str, Any]:
        """Start unbonding AMOUNT tokens of stake; spendable after the unbonding period."""
        micro = parse_amount_param(amount)
        s = self._svc()

        def make(sender: bytes) -> Any:
            return lambda seq, ep: UnbondOrder(chain=s.genesis.chain_id, epoch=ep, sender=sender, sequence=seq,
                                               fee=s.genesis.fee, amount=micro)
        res = await self._submit(wallet, make, timeout)
        res["release_epoch"] = res["epoch"] + s.genesis.unbonding_epochs
        return res

    @rpc_method("stake.status")
    async def stake_status(self, address: str = "") -> dict[str, Any]:
        """Bonded stake, unbonding entries and committee seats of ADDRESS (default: the node's
        wallet), the time to the next epoch, and the committees of the current and next epoch
        and whether they are certified.

        Validator key versus wallet address: a committee seat belongs to the account that
        bonded the stake, and a node votes with its identity key (`validator_key`). Stake
        bonded from any other wallet counts toward a seat that no node signs for, unless some
        node runs with that key as its identity; `seat_note` says which case ADDRESS is."""
        pub = parse_address(address) if address else self._wallet("")
        s = self._svc()
        out = self._balance(pub)
        now = self.ctx.clock()
        epoch = s.genesis.epoch_at(now)
        out["epoch"] = epoch
        out["next_epoch_at"] = s.genesis.epoch_start(epoch + 1)
        out["next_epoch_in"] = f"{max(0.0, s.genesis.epoch_start(epoch + 1) - now):.0f} s"
        out["validator_key"] = encode_address(s.me)
        out["seat_note"] = (
            "ADDRESS is this node's validator key: stake bonded from it gives this node a committee seat"
            if pub == s.me else
            "ADDRESS is not this node's validator key: a seat won by its stake is voted for only by a node "
            f"whose identity is this key; to make this node a validator, bond from {encode_address(s.me)}")
        out["committee_stake"] = format_amount(s.state.committee_for(epoch).stake_of(pub))
        out["next_committee_stake"] = format_amount(s.state.committee_for(epoch + 1).stake_of(pub))
        out["next_committee_certified"] = s.state.committees.certified(epoch + 1) is not None
        out["committees"] = {"current": self._committee(epoch), "next": self._committee(epoch + 1)}
        out["unbonding_epochs"] = s.genesis.unbonding_epochs
        return out
