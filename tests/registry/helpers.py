from __future__ import annotations

import hashlib

from nacl.signing import SigningKey

from fognode.protocols.registry.record import Capabilities, DeviceRecord, make_profile, sign_record

NOW = 1_800_000_000.0


def key(name: str) -> SigningKey:
    return SigningKey(hashlib.sha256(name.encode()).digest())


def caps(**kw: object) -> Capabilities:
    base: dict[str, object] = dict(cores=4, cpu_model="Test CPU", cpu_freq_mhz=2400.0,
                                   memory_bytes=8 * 1024**3, disk_free_bytes=100 * 1024**3,
                                   gpu=None, gpu_memory_bytes=None, battery_present=False,
                                   battery_percent=None, charging=None, os="Linux", arch="x86_64")
    base.update(kw)
    return Capabilities(**base)


def record(k: SigningKey, seq: int = 1, *, issued: float = NOW, ttl: int = 3600,
           region: str = "eu-west", roles: tuple[str, ...] = ("fl",), **capkw: object) -> DeviceRecord:
    return sign_record(k, seq=seq, issued=int(issued), expires=int(issued) + ttl, caps=caps(**capkw),
                       profile=make_profile(region, "server", list(roles), {"cpu_hour": 0.5}))
