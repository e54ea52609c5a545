"""Keys, offers and demands for the market's sans-IO tests."""
from __future__ import annotations

import hashlib

from nacl.signing import SigningKey

from fognode.protocols.market.messages import Demand, Offer, sign_demand, sign_offer
from fognode.protocols.registry.peerid import peer_id_from_pubkey

NOW = 1_800_000_000.0


def key(name: str) -> SigningKey:
    return SigningKey(hashlib.sha256(name.encode()).digest())


def peer(k: SigningKey) -> str:
    return peer_id_from_pubkey(bytes(k.verify_key))


def offer(k: SigningKey, id: str = "o1", *, seq: int = 1, service: str = "compute.wasm",
          cores: int = 4, memory_mib: int = 4096, disk_mib: int = 10_000, region: str = "eu-west",
          prices: dict[str, int] | None = None, uptime_bp: int = 9900, issued: float = NOW,
          ttl: int = 3600) -> Offer:
    return sign_offer(k, id=id, seq=seq, service=service, cores=cores, memory_mib=memory_mib,
                      disk_mib=disk_mib, region=region,
                      prices=prices if prices is not None else {"fuel": 10, "cpu_s": 2},
                      uptime_bp=uptime_bp, issued=int(issued), valid_until=int(issued) + ttl)


def demand(k: SigningKey, constraints: str = "", *, id: str = "d1",
           service: str = "compute.wasm", usage: dict[str, int] | None = None,
           budget: int = 10_000, replication: int = 1, issued: float = NOW,
           ttl: int = 600) -> Demand:
    return sign_demand(k, id=id, service=service, constraints=constraints,
                       usage=usage if usage is not None else {"fuel": 100},
                       budget=budget, replication=replication, issued=int(issued),
                       deadline=int(issued) + ttl)
