"""The ledger role: `[protocols.ledger]` in node.toml, RPC methods wallet.* / ledger.* / stake.*.

The engine (stores, cores, streams, gossip) is `LedgerService` (service.py); this module maps
it to the role interface and the control socket, and offers other roles its `LedgerApi`
(api.py) as ctx.services "ledger". Amounts cross the RPC boundary as decimal
strings ("12.5"); addresses as fog1 strings; transaction ids as hex.

Once the ledger's store failed a write (service.py: disk full), every method answers error
211 with the reason (path and cause) until the daemon, which stops on it, is restarted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from fognode.ledger.address import decode_address, encode_address
from fognode.ledger.audit import compare
from fognode.ledger.amounts import format_amount, parse_amount
from fognode.ledger.errors import (LEDGER_BAD_ADDRESS, LEDGER_BAD_AMOUNT, LEDGER_INVARIANT_BROKEN,
                                   LEDGER_NOT_CERTIFIED, LEDGER_NOT_READY, LEDGER_ORDER_REJECTED,
                                   LEDGER_STORAGE_FAILED, LEDGER_UNKNOWN_TX, LEDGER_UNKNOWN_WALLET,
                                   LEDGER_WALLET_LOCKED, RPC_CODE_OF_REASON, AddressError, AmountError,
                                   LedgerStorageFailed, OrderRejected, WalletError)
from fognode.ledger.messages import BondOrder, Certificate, MintOrder, Order, TransferOrder, UnbondOrder
from fognode.ledger.api import SERVICE_NAME, LedgerApi
from fognode.ledger.certgossip import CERT_TOPIC
from fognode.ledger.order_streams import ORDER_STREAM
from fognode.ledger.service import LedgerService
from fognode.ledger.settings import Settings
from fognode.ledger.submit import NotCertified
from fognode.ledger.sync import SYNC_STREAM
from fognode.node.errors import ConfigError, RpcError
from fognode.node.health import HealthReport, Status
from fognode.node.protocol import NodeContext, Protocol
from fognode.node.rpc.methods import rpc_method


@dataclass(frozen=True)
class LedgerConfig:
    batch_interval: float = 0.2      # seconds certificates gather before one gossip batch
    batch_max: int = 64              # certificates per gossip message at most
    sync_interval: float = 10.0      # seconds between anti-entropy syncs with a random peer
    sync_batch: int = 256            # certificates per sync response
    request_timeout: float = 5.0     # seconds for one validator to answer an order
    retry_interval: float = 1.0      # seconds between rounds asking validators that did not vote
    send_timeout: float = 30.0       # default seconds wallet.send waits for the certificate
    pending_max: int = 10000         # certificates kept waiting for predecessors
    verify_sender: bool = True       # replicas re-check the sender's signature (validators always do)
    uptime_interval: float = 10.0    # seconds between samples of connected peers (uptime receipts)
    uptime_claims: bool = True       # claim this node's uptime reward after each epoch


def _addr(text: str, what: str = "address") -> bytes:
    try:
        return decode_address(text)
    except AddressError as e:
        raise RpcError(LEDGER_BAD_ADDRESS, f"{what}: {e}") from None


def _amount(text: str, what: str = "amount") -> int:
    try:
        return parse_amount(text)
    except AmountError as e:
        raise RpcError(LEDGER_BAD_AMOUNT, f"{what}: {e}") from None


def describe_order(o: Order) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": o.kind.value, "sender": encode_address(o.sender), "sequence": o.sequence,
                         "epoch": o.epoch, "fee": format_amount(o.fee)}
    if isinstance(o, (TransferOrder, MintOrder)):
        d["recipient"] = encode_address(o.recipient)
    if isinstance(o, (TransferOrder, MintOrder, BondOrder, UnbondOrder)):
        d["amount"] = format_amount(o.amount)
    if isinstance(o, TransferOrder):
        d["memo"] = o.memo
    if isinstance(o, MintOrder):
        d["receipt"] = {"kind": o.receipt.kind, "issuer": encode_address(o.receipt.issuer),
                        "epoch": o.receipt.epoch, "id": o.receipt.receipt_id.hex()}
    return d


class LedgerRole(Protocol):
    """Token ledger replica, validator (when in the committee) and wallets."""

    name = "ledger"
    Config = LedgerConfig
    stream_ids = (ORDER_STREAM, SYNC_STREAM)
    topics = (CERT_TOPIC,)

    def __init__(self, ctx: NodeContext, config: LedgerConfig) -> None:
        super().__init__(ctx, config)
        for name in ("batch_interval", "sync_interval", "request_timeout", "retry_interval", "send_timeout",
                     "uptime_interval"):
            value = getattr(config, name)
            if not 0.01 <= value <= 86400:
                raise ConfigError(f"must be between 0.01 and 86400 seconds, got {value}", key=f"protocols.ledger.{name}")
        self.service: LedgerService | None = None
        self.failure: str = ""     # why the ledger stopped (a storage failure), kept after run() ends

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        c = self.config
        try:
            self.service = LedgerService(self.ctx, Settings(
                batch_interval=c.batch_interval, batch_max=c.batch_max, sync_interval=c.sync_interval,
                sync_batch=c.sync_batch, request_timeout=c.request_timeout, retry_interval=c.retry_interval,
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
        return {"applied": s.state.applied, "pending": len(s.replica.pending), "root": s.state.root().hex()[:16],
                "validator": s.validator.is_member(s.genesis.epoch_at(self.ctx.clock()))}

    def health_report(self) -> HealthReport:
        """Unhealthy when its storage failed; degraded when this node's last order found no quorum
        before its deadline (until one is certified again), or when the certificates waiting for
        a missing predecessor fill half of pending_max (this replica is not catching up)."""
        s = self.service
        failure = self.failure or (str(s.failure) if s is not None and s.failure is not None else "")
        if failure:
            return HealthReport(Status.UNHEALTHY, f"storage failed: {failure}")
        if s is not None and s.submitter.quorum_problem:
            return HealthReport(Status.DEGRADED, f"cannot reach a quorum: {s.submitter.quorum_problem}")
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
            pub = _addr(wallet, "wallet")
            if not s.keystore.has(pub):
                raise RpcError(LEDGER_UNKNOWN_WALLET, f"no wallet {wallet} on this node (see wallet.list)")
            return pub
        try:
            return s.submitter.default_wallet()
        except WalletError as e:
            raise RpcError(LEDGER_UNKNOWN_WALLET, str(e)) from None

    async def _submit(self, wallet: str, make: Any, timeout: float) -> Certificate:
        s = self._svc()
        pub = self._wallet(wallet)
        try:
            key = await s.submitter.unlock_wallet(pub)
            return await s.submitter.submit(key, make(bytes(key.verify_key)), timeout if timeout > 0 else self.config.send_timeout)
        except WalletError as e:
            raise RpcError(LEDGER_WALLET_LOCKED, str(e)) from None
        except OrderRejected as e:
            raise RpcError(RPC_CODE_OF_REASON.get(e.reason, LEDGER_ORDER_REJECTED),
                           f"order rejected: {e.reason.value}: {e.message}", {"reason": e.reason.value}) from None
        except NotCertified as e:
            raise RpcError(LEDGER_NOT_CERTIFIED, str(e), e.status) from None
        except LedgerStorageFailed as e:
            raise RpcError(LEDGER_STORAGE_FAILED, f"the ledger stopped: {e}", {"path": e.path, "cause": e.cause}) from None

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
        """List this node's wallets with their balances."""
        s = self._svc()
        try:
            infos = s.keystore.list()
        except WalletError as e:
            raise RpcError(LEDGER_UNKNOWN_WALLET, str(e)) from None
        return [{"address": w.address, "label": w.label, "default": w.default, "dev": w.dev,
                 "balance": self._balance(w.pubkey)["balance"]} for w in infos]

    @rpc_method("wallet.address")
    async def wallet_address(self, wallet: str = "") -> dict[str, Any]:
        """The address of a wallet (default: the node's default wallet)."""
        return {"address": encode_address(self._wallet(wallet))}

    @rpc_method("wallet.balance")
    async def wallet_balance(self, address: str = "") -> dict[str, Any]:
        """Spendable balance, stake and next sequence of ADDRESS (default: the node's wallet)."""
        pub = _addr(address) if address else self._wallet("")
        return self._balance(pub)

    @rpc_method("wallet.send")
    async def wallet_send(self, to: str, amount: str, memo: str = "", wallet: str = "",
                          timeout: float = 0.0) -> dict[str, Any]:
        """Send AMOUNT tokens to address TO and wait until the transfer is final.

        Sends from the node's default wallet unless --wallet is given. Returns the transaction
        id once a quorum of validators certified it. --timeout is in seconds (0: the role's
        send_timeout, 30 by default); on timeout the error (204) says how many validators voted
        and the order stays in flight (the next send from that wallet finishes it first)."""
        recipient = _addr(to, "to")
        micro = _amount(amount)
        s = self._svc()

        def make(sender: bytes) -> Any:
            return lambda seq, ep: TransferOrder(chain=s.genesis.chain_id, epoch=ep, sender=sender, sequence=seq,
                                                 fee=s.genesis.fee, recipient=recipient, amount=micro, memo=memo)
        return self._result(await self._submit(wallet, make, timeout))

    @rpc_method("wallet.history")
    async def wallet_history(self, address: str = "", limit: int = 20) -> list[dict[str, Any]]:
        """Latest transactions of ADDRESS (default: the node's wallet), newest first."""
        pub = _addr(address) if address else self._wallet("")
        s = self._svc()
        return [{"tx": c.tx_id.hex(), "index": i, **describe_order(c.order.order)}
                for i, c in s.store.history(pub, max(1, min(limit, 1000)))]

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
        """A transaction by its hex id, with the validators that certified it."""
        s = self._svc()
        try:
            tx_id = bytes.fromhex(tx)
        except ValueError:
            raise RpcError(LEDGER_UNKNOWN_TX, f"transaction id {tx!r} is not hex") from None
        found = s.store.certificate(tx_id) if len(tx_id) == 32 else None
        if found is None:
            raise RpcError(LEDGER_UNKNOWN_TX, f"no applied transaction {tx} on this replica")
        index, cert = found
        return {"tx": tx, "index": index, "status": "final", **describe_order(cert.order.order),
                "validators": [encode_address(k) for k, _ in cert.votes]}

    @rpc_method("ledger.verify")
    async def ledger_verify(self) -> dict[str, Any]:
        """Check this replica (error 209 if broken): the supply invariant and state root in
        memory, memory against disk, and the stored state against a replay of the stored
        history (every certificate of the apply log from genesis); each problem names the
        record and both values."""
        s = self._svc()
        problems = s.state.invariant_problems()
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

    # -- stake.* ---------------------------------------------------------------------------------

    @rpc_method("stake.bond")
    async def stake_bond(self, amount: str, wallet: str = "", timeout: float = 0.0) -> dict[str, Any]:
        """Lock AMOUNT tokens of the wallet's balance as stake (not spendable while bonded)."""
        micro = _amount(amount)
        s = self._svc()

        def make(sender: bytes) -> Any:
            return lambda seq, ep: BondOrder(chain=s.genesis.chain_id, epoch=ep, sender=sender, sequence=seq,
                                             fee=s.genesis.fee, amount=micro)
        return self._result(await self._submit(wallet, make, timeout))

    @rpc_method("stake.unbond")
    async def stake_unbond(self, amount: str, wallet: str = "", timeout: float = 0.0) -> dict[str, Any]:
        """Start unbonding AMOUNT tokens of stake; spendable after the unbonding period."""
        micro = _amount(amount)
        s = self._svc()

        def make(sender: bytes) -> Any:
            return lambda seq, ep: UnbondOrder(chain=s.genesis.chain_id, epoch=ep, sender=sender, sequence=seq,
                                               fee=s.genesis.fee, amount=micro)
        res = self._result(await self._submit(wallet, make, timeout))
        res["release_epoch"] = res["epoch"] + s.genesis.unbonding_epochs
        return res

    @rpc_method("stake.status")
    async def stake_status(self, address: str = "") -> dict[str, Any]:
        """Bonded stake, unbonding entries and committee seats of ADDRESS (default: the node's
        wallet), with the committees of the current and next epoch and whether they are
        certified."""
        pub = _addr(address) if address else self._wallet("")
        s = self._svc()
        out = self._balance(pub)
        epoch = s.genesis.epoch_at(self.ctx.clock())
        out["epoch"] = epoch
        out["committee_stake"] = format_amount(s.state.committee_for(epoch).stake_of(pub))
        out["next_committee_stake"] = format_amount(s.state.committee_for(epoch + 1).stake_of(pub))
        out["next_committee_certified"] = s.state.committees.certified(epoch + 1) is not None
        out["committees"] = {"current": self._committee(epoch), "next": self._committee(epoch + 1)}
        out["unbonding_epochs"] = s.genesis.unbonding_epochs
        return out
