"""Composing a network's genesis from the parts each role owns (`fognode init`, `fognode devnet`).

It lives with the tools because it imports the roles (the ledger's genesis); the node core
below them only reads the file (node/daemon.py).

`<datadir>/genesis.json` is shared by every node of a network. Top-level keys:
    chain_id    the network's name; every signed ledger order carries it
    registry    {"pretrusted": [peer ids]}: EigenTrust's pre-trusted peers
    ledger      the ledger's part (validators, balances, emission, fees): fognode.ledger.genesis
"""
from __future__ import annotations

import secrets
from typing import Any

from nacl.signing import SigningKey

from fognode.ledger.genesis import DEV_FUNDING, DEV_STAKE
from fognode.ledger.genesis import dev_genesis as ledger_dev_genesis
from fognode.node.peerid import peer_id_from_pubkey


def dev_chain_id() -> str:
    return f"fog-dev-{secrets.token_hex(4)}"


def dev_genesis(chain_id: str, nodes: list[SigningKey], wallets: list[bytes]) -> dict[str, Any]:
    """A development genesis: every node is a validator and a pre-trusted peer; every wallet
    in `wallets` (32-byte public keys) starts with DEV_FUNDING (1,000 tokens)."""
    pubs = [bytes(k.verify_key) for k in nodes]
    return {
        "chain_id": chain_id,
        "registry": {"pretrusted": [peer_id_from_pubkey(p) for p in pubs]},
        "ledger": ledger_dev_genesis(chain_id, [(p, DEV_STAKE) for p in pubs],
                                     {w: DEV_FUNDING for w in wallets}),
    }
