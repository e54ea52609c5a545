"""Signed device records: what a device can do and how its operator offers it.

Wire form (one msgpack map, DESIGN.md "Wire and storage formats")::

    {"v": 1, "peer": <peer id>, "pubkey": <32 bytes>, "seq": <int>, "issued": <unix s>,
     "expires": <unix s>, "caps": {...}, "profile": {...}, "sig": <64 bytes>}
    {"v": 2, ...the same..., "harvest": {"available": <bool>, "reason": <str>,
                                          "free_cores": <int>, "free_memory_bytes": <int>}}

`sig` is the device's Ed25519 signature (its peer key) over `pack` of the map without `sig`.
An onion relay adds `"onion": <its onion-key certificate>` (protocols/onion/onionkey.py; at
most MAX_ONION_CERT bytes, checked here only for size: the onion role verifies it); a record
without a relay has no such key, so records from before the field decode and sign as before.
`decode_record` checks shape, sizes, the signature and that `peer` is the peer id of `pubkey`;
freshness (expiry, sequence) is the validator's business because it needs a clock and history.

Versions. The decoder stays strict (an unknown field or version is refused) and a new field
comes with a new version number, so a record means exactly one thing. Version 2 adds
"harvest", the harvest role's announced state: available, or suspended and why, and the cores
and memory its policy lets work use now. A record is encoded at the lowest version that can
carry it: a device without the harvest role (harvest None: unknown, which is not
"available") still publishes version 1, which every node decodes; a version-2 record must
carry the harvest map. Nodes older than version 2 refuse version-2 records (as MALFORMED,
"unknown version"), so they see no record of a harvesting device until they upgrade.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import SIG_LEN, Fields, pack, sign, unpack, verify
from fognode.protocols.registry.errors import Rejected, RejectReason
from fognode.protocols.registry.peerid import PUBKEY_LEN, peer_id_from_pubkey, peer_id_matches

RECORD_VERSION = 1               # a record without the harvest state
HARVEST_RECORD_VERSION = 2       # a record with it
MAX_RECORD_BYTES = 4096          # a record larger than this is refused before decoding
MAX_TTL = 7 * 24 * 3600          # expires - issued may not exceed a week
MAX_ROLES = 32
MAX_PRICES = 32
MAX_NAME = 64                    # region, device type, role and price names
MAX_TEXT = 128                   # CPU model, GPU name, OS, arch
MAX_REASON = 64                  # harvest suspension reason
MAX_ONION_CERT = 512             # bytes of the onion-key certificate (onionkey.MAX_CERT_BYTES)
_U63 = 2**63 - 1


@dataclass(frozen=True)
class Capabilities:
    """Measured facts about a device; None means unknown (never guessed)."""

    cores: int | None = None
    cpu_model: str | None = None
    cpu_freq_mhz: float | None = None
    memory_bytes: int | None = None
    disk_free_bytes: int | None = None
    gpu: str | None = None
    gpu_memory_bytes: int | None = None
    battery_present: bool | None = None
    battery_percent: float | None = None
    charging: bool | None = None
    os: str | None = None
    arch: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def differs_materially(self, other: "Capabilities") -> bool:
        """True when a change is worth a new record (not every percent of battery or disk).

        Battery level counts in steps of 10 points, free disk when it moves by 10 % or more,
        CPU frequency when it moves by 10 % or more; every other field on any change.
        """
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a == b:
                continue
            if a is None or b is None:
                return True
            if f.name == "battery_percent":
                if abs(float(a) - float(b)) >= 10.0:
                    return True
            elif f.name in ("disk_free_bytes", "cpu_freq_mhz"):
                if abs(float(a) - float(b)) >= 0.1 * max(float(a), float(b)):
                    return True
            else:
                return True
        return False


@dataclass(frozen=True)
class DeviceProfile:
    """What the operator configured: region, device type, roles offered and price hints."""

    region: str = ""
    device_type: str = ""
    roles: tuple[str, ...] = ()
    prices: tuple[tuple[str, float], ...] = ()   # (item, price hint), sorted by item

    def to_wire(self) -> dict[str, Any]:
        return {"region": self.region, "device_type": self.device_type,
                "roles": list(self.roles), "prices": dict(self.prices)}

    def price(self, item: str) -> float | None:
        return dict(self.prices).get(item)


@dataclass(frozen=True)
class HarvestInfo:
    """The harvest role's state as the device announces it (DESIGN.md "Harvest and market").

    `available`: the device's policy lets it take work now; else `reason` says why not (a
    short label such as "on_battery", "too_hot", "operator_pause"). `free_cores` and
    `free_memory_bytes` are what the policy lets work use now (0 while suspended)."""

    available: bool
    reason: str = ""
    free_cores: int = 0
    free_memory_bytes: int = 0

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DeviceRecord:
    peer_id: str
    pubkey: bytes
    seq: int
    issued: int
    expires: int
    caps: Capabilities
    profile: DeviceProfile
    sig: bytes
    harvest: HarvestInfo | None = None    # None: the device runs no harvest role (unknown)
    onion: bytes = b""           # the relay's onion-key certificate; b"" for a non-relay

    def body(self) -> dict[str, Any]:
        """The signed part (everything but `sig`), at the lowest version that carries it."""
        body: dict[str, Any] = {
            "v": RECORD_VERSION, "peer": self.peer_id, "pubkey": self.pubkey, "seq": self.seq,
            "issued": self.issued, "expires": self.expires, "caps": self.caps.to_wire(),
            "profile": self.profile.to_wire()}
        if self.harvest is not None:
            body["v"] = HARVEST_RECORD_VERSION
            body["harvest"] = self.harvest.to_wire()
        if self.onion:
            body["onion"] = self.onion
        return body

    def encode(self) -> bytes:
        return pack({**self.body(), "sig": self.sig})

    def is_expired(self, now: float) -> bool:
        return now >= self.expires

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly view for RPC answers."""
        out = {"peer": self.peer_id, "pubkey": self.pubkey.hex(), "seq": self.seq,
               "issued": self.issued, "expires": self.expires, "caps": self.caps.to_wire(),
               "profile": self.profile.to_wire(),
               "harvest": self.harvest.to_wire() if self.harvest is not None else None}
        if self.onion:
            out["onion"] = self.onion.hex()
        return out


def make_profile(region: str, device_type: str, roles: list[str] | tuple[str, ...],
                 prices: dict[str, float] | None = None) -> DeviceProfile:
    """Build a profile in canonical order (roles de-duplicated and sorted, prices sorted)."""
    return DeviceProfile(region=region, device_type=device_type, roles=tuple(sorted(set(roles))),
                         prices=tuple(sorted((prices or {}).items())))


def sign_record(key: SigningKey, *, seq: int, issued: int, expires: int, caps: Capabilities,
                profile: DeviceProfile, harvest: HarvestInfo | None = None,
                onion: bytes = b"") -> DeviceRecord:
    """A record for `key`'s own device, signed by it (`harvest` None: no harvest role;
    `onion`: its onion-key certificate, b"" for a non-relay)."""
    pubkey = bytes(key.verify_key)
    caps = dataclasses.replace(
        caps,
        cpu_freq_mhz=None if caps.cpu_freq_mhz is None else float(caps.cpu_freq_mhz),
        battery_percent=None if caps.battery_percent is None else float(caps.battery_percent))
    profile = dataclasses.replace(profile, prices=tuple((k, float(v)) for k, v in profile.prices))
    unsigned = DeviceRecord(peer_id_from_pubkey(pubkey), pubkey, seq, issued, expires, caps,
                            profile, b"", harvest, onion)
    return dataclasses.replace(unsigned, sig=sign(key, unsigned.body()))


def _opt_str(f: Fields, key: str) -> str | None:
    return f.str(key, max_len=MAX_TEXT, optional=True)


def _decode_caps(f: Fields) -> Capabilities:
    caps = Capabilities(
        cores=f.int("cores", lo=1, hi=1 << 16, optional=True),
        cpu_model=_opt_str(f, "cpu_model"),
        cpu_freq_mhz=f.float("cpu_freq_mhz", lo=0.0, hi=1e6, optional=True),
        memory_bytes=f.int("memory_bytes", lo=0, hi=_U63, optional=True),
        disk_free_bytes=f.int("disk_free_bytes", lo=0, hi=_U63, optional=True),
        gpu=_opt_str(f, "gpu"),
        gpu_memory_bytes=f.int("gpu_memory_bytes", lo=0, hi=_U63, optional=True),
        battery_present=f.bool("battery_present", optional=True),
        battery_percent=f.float("battery_percent", lo=0.0, hi=100.0, optional=True),
        charging=f.bool("charging", optional=True),
        os=_opt_str(f, "os"),
        arch=_opt_str(f, "arch"),
    )
    f.done()
    return caps


def _decode_harvest(f: Fields) -> HarvestInfo:
    h = HarvestInfo(
        available=f.bool("available"),
        reason=f.str("reason", max_len=MAX_REASON),
        free_cores=f.int("free_cores", lo=0, hi=1 << 16),
        free_memory_bytes=f.int("free_memory_bytes", lo=0, hi=_U63),
    )
    f.done()
    if h.available == bool(h.reason):
        f._fail("reason must be empty when available and say why when suspended")
    return h


def _decode_profile(f: Fields) -> DeviceProfile:
    region = f.str("region", max_len=MAX_NAME)
    device_type = f.str("device_type", max_len=MAX_NAME)
    roles = f.list("roles", max_len=MAX_ROLES)
    for r in roles:
        if not isinstance(r, str) or not r or len(r) > MAX_NAME:
            f._fail(f"roles must be non-empty strings of at most {MAX_NAME} characters")
    prices = f.map("prices", max_len=MAX_PRICES)
    for k, p in prices.items():
        if len(k) > MAX_NAME or isinstance(p, bool) or not isinstance(p, (int, float)) \
                or not (0.0 <= float(p) < 1e18):
            f._fail(f"price hint {k[:MAX_NAME]!r} must be a non-negative number")
    f.done()
    if list(roles) != sorted(set(roles)):
        f._fail("roles must be sorted and unique")
    return DeviceProfile(region=region, device_type=device_type, roles=tuple(roles),
                         prices=tuple(sorted((k, float(p)) for k, p in prices.items())))


def decode_record(data: bytes, *, peer: str | None = None) -> DeviceRecord:
    """Decode and authenticate a record from remote bytes.

    Raises `Rejected` with reason OVERSIZE, MALFORMED (shape, types, ranges, capabilities),
    UNSIGNED (no signature), FOREIGN_KEY (the peer id is not that of the public key) or
    BAD_SIGNATURE (not signed by that key, e.g. a forged or altered record).
    """
    if len(data) > MAX_RECORD_BYTES:
        raise Rejected(RejectReason.OVERSIZE,
                       f"device record is {len(data)} bytes, over {MAX_RECORD_BYTES}", peer=peer)
    try:
        raw = unpack(data, max_size=MAX_RECORD_BYTES, what="device record")
        f = Fields(raw, "device record", versions={RECORD_VERSION, HARVEST_RECORD_VERSION},
                   peer=peer)
        if not f.has("sig"):
            raise Rejected(RejectReason.UNSIGNED, "device record carries no signature", peer=peer)
        sig = f.bytes("sig", max_len=SIG_LEN)
        peer_id = f.str("peer", max_len=128)
        pubkey = f.bytes("pubkey", size=PUBKEY_LEN)
        seq = f.int("seq", lo=0, hi=_U63)
        issued = f.int("issued", lo=0, hi=_U63)
        expires = f.int("expires", lo=0, hi=_U63)
        caps = _decode_caps(f.sub("caps", "device record capabilities"))
        profile = _decode_profile(f.sub("profile", "device record profile"))
        harvest = None
        if f.version == HARVEST_RECORD_VERSION:   # version 1 has no harvest field (done() says so)
            harvest = _decode_harvest(f.sub("harvest", "device record harvest state"))
        onion = f.bytes("onion", max_len=MAX_ONION_CERT, optional=True, default=b"")
        f.done()
    except Rejected:
        raise
    except RemoteProtocolError as e:
        raise Rejected(RejectReason.MALFORMED, str(e), peer=peer) from None
    if not sig:
        raise Rejected(RejectReason.UNSIGNED, "device record has an empty signature", peer=peer)
    if not issued < expires <= issued + MAX_TTL:
        raise Rejected(RejectReason.MALFORMED,
                       f"device record lifetime {expires - issued} s is not in (0, {MAX_TTL}]", peer=peer)
    if not peer_id_matches(peer_id, pubkey):
        raise Rejected(RejectReason.FOREIGN_KEY,
                       f"record claims peer {peer_id} but carries another peer's key", peer=peer)
    signed = {k: v for k, v in raw.items() if k != "sig"}
    if not verify(pubkey, signed, sig):
        raise Rejected(RejectReason.BAD_SIGNATURE,
                       f"record for {peer_id} is not signed by its key", peer=peer)
    rec = DeviceRecord(peer_id, pubkey, seq, issued, expires, caps, profile, sig, harvest, onion)
    if pack(rec.body()) != pack(signed):
        raise Rejected(RejectReason.MALFORMED,
                       "device record is not in canonical form (e.g. an integer where a float "
                       "belongs)", peer=peer)
    return rec


def changed_fields(old: DeviceRecord, new: DeviceRecord) -> tuple[str, ...]:
    """The capability and profile fields (and "harvest") that differ between two records."""
    out = [f.name for f in dataclasses.fields(Capabilities)
           if getattr(old.caps, f.name) != getattr(new.caps, f.name)]
    out += [f"profile.{f.name}" for f in dataclasses.fields(DeviceProfile)
            if getattr(old.profile, f.name) != getattr(new.profile, f.name)]
    if old.harvest != new.harvest:
        out.append("harvest")
    return tuple(out)


def harvest_differs_materially(old: HarvestInfo | None, new: HarvestInfo | None) -> bool:
    """True when a new harvest state is worth a new record: availability, the reason or the
    free cores changed, or free memory moved by 10 % or more (not every megabyte)."""
    if old is None or new is None:
        return old is not new
    if (old.available, old.reason, old.free_cores) != (new.available, new.reason, new.free_cores):
        return True
    a, b = old.free_memory_bytes, new.free_memory_bytes
    return abs(a - b) >= 0.1 * max(a, b) if a != b else False
