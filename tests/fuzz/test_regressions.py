"""Decoder bugs the fuzzer found, each with the input that showed it (also replayed from
tests/fuzz/crashes/ by test_fuzz_short.py): before the fix each raised something other than
a RemoteProtocolError, which the stream guard logs as a local bug (ERROR with a traceback)
and does not charge to the peer."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from nacl.signing import SigningKey

from fognode.ledger.messages import MintOrder, decode_signed_order
from fognode.ledger.receipts import Receipt, decode_receipt, uptime_claim
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields, pack, plain, unpack
from fognode.protocols.fl.messages import UpdateHeader

CRASHES = Path(__file__).resolve().parent / "crashes"
K = SigningKey(b"\x03" * 32)
PUB = bytes(K.verify_key)


def _receipt_wire(body: dict[Any, Any]) -> dict[str, Any]:
    ok = Receipt.issue(K, "uptime", PUB, 4, {"seconds": 60, "claim": uptime_claim(4)})
    return {**ok.to_wire(), "body": body}


def test_fuzzer_input_nan_in_a_receipt_body() -> None:
    """Found by ledger_receipt: an fl_update receipt whose body carries a NaN deep inside
    (the announcement's min_rep). Receipt.__post_init__ hashes the body with pack(), which
    raised LocalProtocolError("wire floats must be finite")."""
    [crash] = sorted((CRASHES / "ledger_receipt").iterdir())
    with pytest.raises(RemoteProtocolError, match="ledger.Receipt: field 'body': wire floats must be finite"):
        decode_receipt(unpack(crash.read_bytes()), peer="p")


@pytest.mark.parametrize("bad,match", [
    ({"x": float("nan")}, "finite"),
    ({"x": [1, {"y": float("-inf")}]}, "finite"),
    ({b"bytes-key": 1}, "map keys must be str"),
    ({"t": msgpack.Timestamp(1, 0)}, "Timestamp cannot go on the wire"),
])
def test_receipt_body_that_cannot_be_reencoded_is_the_peers_fault(bad: dict[Any, Any], match: str) -> None:
    """The same bug through every path: a bare receipt, and a mint order carrying it (what
    a client sends on /fognode/ledger/order and what certificates carry)."""
    with pytest.raises(RemoteProtocolError, match=match):
        decode_receipt(_receipt_wire(bad), peer="p")
    ok = Receipt.issue(K, "uptime", PUB, 4, {"seconds": 60, "claim": uptime_claim(4)})
    mint = MintOrder(chain="c", epoch=5, sender=PUB, sequence=0, fee=0, recipient=PUB, amount=1, receipt=ok)
    order = {**mint.body(), "receipt": _receipt_wire(bad)}
    with pytest.raises(RemoteProtocolError, match=match):
        decode_signed_order({"v": 1, "order": order, "sig": b"s" * 64}, peer="p")


def test_bytes_map_keys_are_refused_by_fields() -> None:
    """msgpack (strict_map_key) lets bytes keys through; Fields.done() sorted the unknown
    keys to name them and raised TypeError comparing bytes with str."""
    raw = unpack(pack({"v": 1, "a": 1})[:-3] + b"\xc4\x01k\x01")  # {"v": 1, b"k": 1}
    assert isinstance(raw, dict) and any(isinstance(k, bytes) for k in raw)
    with pytest.raises(RemoteProtocolError, match="map keys must be strings"):
        Fields(raw, "m", versions={1}).done()
    with pytest.raises(RemoteProtocolError, match="map keys must be strings"):
        Fields({"v": 1, "x": 1, b"y": 2}, "m")


def test_msgpack_timestamps_come_through_unpack_but_no_decoder_takes_them() -> None:
    """Found by wire_unpack: ext type -1 (msgpack's timestamp) is decoded by msgpack itself,
    before the no-ext hook; every typed Fields getter and `plain` refuse it."""
    [crash] = sorted((CRASHES / "wire_unpack").iterdir())
    v = unpack(crash.read_bytes())
    assert isinstance(v, msgpack.Timestamp)
    f = Fields({"n": v, "s": v, "b": v, "f": v, "m": v}, "m")
    for getter in (f.int, f.str, f.bytes, f.float, f.map):
        with pytest.raises(RemoteProtocolError, match="must be"):
            getter({f.int: "n", f.str: "s", f.bytes: "b", f.float: "f", f.map: "m"}[getter])
    with pytest.raises(RemoteProtocolError, match="Timestamp"):
        plain([v], "m")


def test_fuzzer_input_nan_in_a_regional_updates_member_figures() -> None:
    """Found by fl_stream (the re-encoding check): a regional update header listed a member
    with train loss NaN; MemberMeta took any float (Fields.float refuses non-finite ones), so
    NaN reached the aggregator's quality figures and re-encoded as -1.0."""
    [crash] = sorted((CRASHES / "fl_stream").iterdir())
    data = crash.read_bytes()
    with pytest.raises(RemoteProtocolError, match="the figures finite"):
        UpdateHeader.decode(unpack(data[1:]), expected_shape=(4, 8), max_bytes=1 << 20, peer="p")
