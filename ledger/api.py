"""What the ledger offers other roles through `ctx.services` ("ledger" -> `LedgerApi`).

Roles (fl today; harvest and market next) pay, mint rewards against receipts they issue, teach
the ledger's validators to price their receipts and read balances, through this facade only:
never through the engine (service.py) or its members. `ledger_api(ctx.services)` is the one
typed look-up: the facade, or None when no ledger runs on this node.

Every method is a thin view of the engine; only `pay`, `submit_reward`, `distribute_rewards`,
the escrow orders (`open_escrow`, `lock_collateral`, `pay_debit_note`, `refund_escrow`,
`slash`: they wait for a certificate: OrderRejected, NotCertified, WalletError,
LedgerStorageFailed), `sign_debit_note` (it may unlock a wallet) and `wait_applied` block.

Escrows (escrow.py for the rules, escrow_client.py for the wallet side): the market opens one
per agreement (`escrow_id(customer, agreement hash)`), pays the provider against debit notes
the customer signs, refunds the rest after the deadline, slashes collateral on a breach
report signed by the agreement's witnesses.

Reward pools (rewardpool.py for the rules, rewardpool_client.py for the wallet side): FL funds
one per session from the starter's wallet (`open_pool`), pays each round's receipts out of it
(`pay_from_pool`) and closes it after its deadline (`close_pool`: the rest goes back to the
funder). These block like the escrow orders.
"""
from __future__ import annotations

from typing import Any

from fognode.ledger.address import decode_address
from fognode.ledger.certcheck import verify_certificate
from fognode.ledger.escrow import Escrow
from fognode.ledger.escrow_client import EscrowClient
from fognode.ledger.escrow_orders import BreachReport, DebitNote
from fognode.ledger.messages import Certificate
from fognode.ledger.receipts import Receipt, ReceiptVerifier
from fognode.ledger.rewardpool import RewardPool
from fognode.ledger.rewardpool_client import PoolClient
from fognode.ledger.rewards import Allocation
from fognode.ledger.service import LedgerService
from fognode.node.peerid import peer_id_from_pubkey, pubkey_from_peer_id
from fognode.node.role import Services

SERVICE_NAME = "ledger"


class LedgerApi:
    def __init__(self, service: LedgerService) -> None:
        self._svc = service
        self._escrows = EscrowClient(service.submitter, service.state, service.ctx.clock)
        self._pools = PoolClient(service.submitter, service.state, service.ctx.clock,
                                 pending=lambda pool: bool(service.replica.waiting_on_pool(pool)))

    # -- reading -----------------------------------------------------------------------------------

    def balance(self, address: bytes) -> int:
        """Spendable micro-units of `address` in the current epoch."""
        return self._svc.balance(address)

    def verify_payment_capability(self, address: bytes | str, amount: int) -> bool:
        """True when `address` (raw or fog1) can pay `amount` micro-units plus the chain's fee
        right now. Raises AddressError for a malformed fog1 string."""
        key = decode_address(address) if isinstance(address, str) else address
        return self.balance(key) >= amount + self._svc.genesis.fee

    def epoch_at(self, when: float) -> int:
        """The ledger epoch at wall-clock time `when` (receipts name their epoch)."""
        return self._svc.genesis.epoch_at(when)

    def order_fee(self) -> int:
        """The chain's fee per order in micro-units (paid by the order's sender)."""
        return self._svc.genesis.fee

    def current_epoch(self) -> int:
        """The ledger epoch now."""
        return self._svc.genesis.epoch_at(self._svc.ctx.clock())

    def verify_certificate(self, cert: Certificate) -> None:
        """Check offline that `cert` is a quorum certificate of its epoch's committee (and the
        sender's signature); CertificateRejected naming what failed. Nothing is applied."""
        verify_certificate(cert, self._svc.state.committee_for(cert.order.order.epoch))

    def default_wallet(self) -> bytes:
        """The node's default wallet's public key. Raises WalletError if it has none."""
        return self._svc.submitter.default_wallet()

    async def wait_applied(self, tx_id: bytes, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until this replica applied `tx_id`; False if not."""
        return await self._svc.wait_applied(tx_id, timeout)

    # -- paying --------------------------------------------------------------------------------------

    async def pay(self, to: bytes, amount: int, memo: str = "", *, timeout: float = 30.0,
                  wallet: bytes | None = None) -> Certificate:
        """Transfer from a local wallet (default: the node's). Raises OrderRejected,
        NotCertified, WalletError."""
        return await self._svc.submitter.pay(to, amount, memo, timeout=timeout, wallet=wallet)

    async def submit_reward(self, receipt: Receipt, amount: int, *, timeout: float = 30.0) -> Certificate:
        """Mint `amount` to the receipt's beneficiary; this node's default wallet pays the fee."""
        return await self._svc.submitter.submit_reward(receipt, amount, timeout=timeout)

    async def distribute_rewards(self, allocations: list[Allocation], *, timeout: float = 60.0) -> list[str]:
        """Mint each allocation, one after the other (submit.py); the transaction ids paid."""
        return await self._svc.submitter.distribute_rewards(allocations, timeout=timeout)

    # -- escrows ---------------------------------------------------------------------------------------

    def escrow_id(self, customer: bytes, agreement: bytes) -> bytes:
        """The id of the escrow `customer` opens for `agreement` (the agreement's 32-byte hash)."""
        return self._escrows.escrow_id(customer, agreement)

    def escrow(self, escrow: bytes) -> Escrow | None:
        """The escrow as this replica holds it, or None (not opened, or not here yet)."""
        return self._escrows.escrow(escrow)

    def escrows_of(self, party: bytes) -> list[tuple[bytes, Escrow]]:
        """(id, escrow) of every escrow whose customer or payee is `party`."""
        return self._escrows.escrows_of(party)

    async def open_escrow(self, agreement: bytes, payee: bytes, amount: int, deadline: int, grace: int, *,
                          uptime_ppm: int = 0, penalty: int = 0, witnesses: tuple[bytes, ...] = (),
                          threshold: int = 0, wallet: bytes | None = None, timeout: float = 30.0) -> Certificate:
        """Lock `amount` from a local wallet (the customer; default the node's) for
        `agreement`, payable to `payee` until `deadline` (unix seconds); the escrow id is
        `cert.order.order.escrow`. SLA terms for slashing: guaranteed `uptime_ppm`, `penalty`
        per breached window, `threshold` signatures of `witnesses` make a breach report."""
        return await self._escrows.open(agreement, payee, amount, deadline, grace, uptime_ppm=uptime_ppm,
                                        penalty=penalty, witnesses=witnesses, threshold=threshold,
                                        wallet=wallet, timeout=timeout)

    async def lock_collateral(self, escrow: bytes, amount: int, *, wallet: bytes | None = None,
                              timeout: float = 30.0) -> Certificate:
        """Lock `amount` of a local wallet (the payee) into the escrow as collateral."""
        return await self._escrows.lock_collateral(escrow, amount, wallet=wallet, timeout=timeout)

    async def sign_debit_note(self, escrow: bytes, due: int, *, wallet: bytes | None = None) -> DebitNote:
        """As the customer, sign that `due` micro-units are owed in total under `escrow`."""
        return await self._escrows.sign_debit_note(escrow, due, wallet=wallet)

    async def pay_debit_note(self, note: DebitNote, *, wallet: bytes | None = None,
                             timeout: float = 30.0) -> Certificate:
        """As the payee, collect what `note` says is due beyond what was paid already."""
        return await self._escrows.pay_debit_note(note, wallet=wallet, timeout=timeout)

    async def refund_escrow(self, escrow: bytes, *, wallet: bytes | None = None,
                            timeout: float = 30.0) -> Certificate:
        """Close the escrow: the unpaid rest to the customer, the unslashed collateral to the payee."""
        return await self._escrows.refund(escrow, wallet=wallet, timeout=timeout)

    async def slash(self, report: BreachReport, *, wallet: bytes | None = None,
                    timeout: float = 30.0) -> Certificate:
        """As the customer, take the escrow's penalty out of the collateral on a breach report."""
        return await self._escrows.slash(report, wallet=wallet, timeout=timeout)

    # -- reward pools ---------------------------------------------------------------------------------

    def pool_id(self, funder: bytes, session: bytes) -> bytes:
        """The id of the pool `funder` opens for `session` (a 32-byte hash)."""
        return self._pools.pool_id(funder, session)

    def pool(self, pool: bytes) -> RewardPool | None:
        """The pool as this replica holds it, or None (not funded, or not here yet)."""
        return self._pools.pool(pool)

    def pools_of(self, funder: bytes) -> list[tuple[bytes, RewardPool]]:
        """(id, pool) of every pool `funder` funded."""
        return self._pools.pools_of(funder)

    @property
    def fee(self) -> int:
        """The chain's fee per order (micro-units)."""
        return self._svc.genesis.fee

    async def open_pool(self, session: bytes, receipt_kind: str, amount: int, deadline: int, grace: int, *,
                        wallet: bytes | None = None, timeout: float = 30.0) -> Certificate:
        """Lock `amount` of a local wallet (default: the node's) into the reward pool of
        `session` for receipts of `receipt_kind`, payable until `deadline` (unix seconds)."""
        return await self._pools.open(session, receipt_kind, amount, deadline, grace, wallet=wallet, timeout=timeout)

    async def pay_from_pool(self, pool: bytes, allocations: list[Allocation], *, timeout: float = 60.0) -> list[str]:
        """Pay each allocation from `pool` (this node's default wallet pays the fees); the
        transaction ids paid (refused ones are logged and skipped)."""
        return await self._pools.pay_all(pool, allocations, timeout=timeout)

    async def close_pool(self, pool: bytes, *, wallet: bytes | None = None, timeout: float = 30.0) -> Certificate:
        """Close `pool` on the payouts this replica applied; the rest goes back to its funder."""
        return await self._pools.close(pool, wallet=wallet, timeout=timeout)

    # -- receipts (the evidence reward mints carry) ----------------------------------------------------

    def register_receipt_verifier(self, verifier: ReceiptVerifier) -> None:
        """Teach this node's validator to check and price receipts of `verifier.kind`."""
        self._svc.receipts.register(verifier)

    def issue_receipt(self, kind: str, beneficiary: bytes, body: dict[str, Any], epoch: int | None = None) -> Receipt:
        """A receipt signed by this node's identity key (the role that earned/observed it)."""
        ep = self._svc.genesis.epoch_at(self._svc.ctx.clock()) if epoch is None else epoch
        return Receipt.issue(self._svc.ctx.identity, kind, beneficiary, ep, body)

    # -- addresses -------------------------------------------------------------------------------------

    @staticmethod
    def peer_of(address: bytes) -> str:
        """The peer id of the node whose identity key is `address`."""
        return peer_id_from_pubkey(address)

    @staticmethod
    def address_of_peer(peer_id: str) -> bytes:
        """The ledger address (identity key) of the node `peer_id`."""
        return pubkey_from_peer_id(peer_id)


def ledger_api(services: Services) -> LedgerApi | None:
    """The ledger this node runs, or None (not enabled, not started yet, or stopped)."""
    api = services.get(SERVICE_NAME)
    if api is None:
        return None
    if not isinstance(api, LedgerApi):
        raise TypeError(f"ctx.services {SERVICE_NAME!r} holds {type(api).__name__}, not a LedgerApi")
    return api
