from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.node.wire import Fields, pack, sign, unpack, verify


def test_pack_is_canonical_whatever_the_key_order() -> None:
    assert pack({"b": 1, "a": {"d": b"x", "c": [1, 2]}}) == pack({"a": {"c": [1, 2], "d": b"x"}, "b": 1})


def test_signature_round_trip_and_tamper() -> None:
    k = SigningKey.generate()
    body = {"v": 1, "amount": 10}
    sig = sign(k, body)
    assert verify(bytes(k.verify_key), body, sig)
    assert not verify(bytes(k.verify_key), {"v": 1, "amount": 11}, sig)
    assert not verify(b"short", body, sig)


@pytest.mark.parametrize("data", [b"\xc1", b"\x92\x01", b"\xd4\x01\x00", b"\x81\x01\x02"])
def test_unpack_rejects_garbage(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        unpack(data)


def test_unpack_round_trips_valid_data() -> None:
    obj = {"v": 1, "b": b"\x00\xff", "l": [1, -2, 3.5, None, True], "m": {"s": "text"}}
    assert unpack(pack(obj)) == obj


def test_unpack_rejects_oversize() -> None:
    with pytest.raises(RemoteProtocolError, match="over the"):
        unpack(pack(b"x" * 100), max_size=50)


def test_fields_names_the_bad_field() -> None:
    f = Fields({"v": 1, "n": "x"}, "T", versions={1})
    with pytest.raises(RemoteProtocolError, match="'n' must be an integer"):
        f.int("n")
    with pytest.raises(RemoteProtocolError, match="unknown version 2"):
        Fields({"v": 2}, "T", versions={1})
    g = Fields({"v": 1, "a": 1, "zz": 0}, "T", versions={1})
    g.int("a")
    with pytest.raises(RemoteProtocolError, match="unknown field"):
        g.done()


def test_pack_rules_hold_on_the_fast_path_and_for_subclasses() -> None:
    """Exact built-in types take node.wire's fast path, subclasses the isinstance one: both give
    the same canonical bytes and refuse the same values, at any depth."""
    import enum
    from collections import OrderedDict

    import msgpack

    class Kind(enum.IntEnum):
        A = 7

    class Key(str):
        pass

    value = {"b": (1, [2.5, None]), "a": OrderedDict(z=b"x", y=True), "c": [{"k": Kind.A}], Key("d"): "s"}
    expected = msgpack.packb({"a": {"y": True, "z": b"x"}, "b": [1, [2.5, None]], "c": [{"k": 7}], "d": "s"},
                             use_bin_type=True)
    assert pack(value) == expected
    for bad, says in [({"a": {1: 2}}, "keys must be str"), ([{"a": float("nan")}], "finite"),
                      ({"a": (float("-inf"),)}, "finite"), ({"a": [object()]}, "cannot go on the wire"),
                      (OrderedDict([(b"k", 1)]), "keys must be str")]:
        with pytest.raises(LocalProtocolError, match=says):
            pack(bad)
