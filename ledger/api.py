"""What the ledger offers other roles through `ctx.services` ("ledger" -> `LedgerApi`).

Roles (fl today; harvest and market next) pay, mint rewards against receipts they issue, teach
the ledger's validators to price their receipts and read balances, through this facade only:
never through the engine (service.py) or its members. `ledger_api(ctx.services)` is the one
typed look-up: the facade, or None when no ledger runs on this node.

Every method is a thin view of the engine; only `pay`, `submit_reward`, `distribute_rewards`
(they wait for a certificate: OrderRejected, NotCertified, WalletError, LedgerStorageFailed)
and `wait_applied` block.
"""
from __future__ import annotations

from typing import Any

from fognode.ledger.address import decode_address
from fognode.ledger.messages import Certificate
from fognode.ledger.receipts import Receipt, ReceiptVerifier
from fognode.ledger.rewards import Allocation
from fognode.ledger.service import LedgerService
from fognode.node.peerid import peer_id_from_pubkey, pubkey_from_peer_id
from fognode.node.protocol import Services

SERVICE_NAME = "ledger"


class LedgerApi:
    def __init__(self, service: LedgerService) -> None:
        self._svc = service

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
