from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.node.wire import pack
from fognode.protocols.fl.transfer.tensors import (
    MIN_CHUNK_SIZE,
    TensorDecoder,
    TensorRejected,
    decode_chunks,
    decode_header,
    encode_tensor,
    params_hash,
    tensor_hash,
)


def _wire(header_map: dict) -> object:
    # what the receiver's msgpack decoder hands over (canonical encoding, then decoding)
    return msgpack.unpackb(pack(header_map), raw=False, strict_map_key=True)


def roundtrip(arr: np.ndarray, **kw: object) -> np.ndarray:
    h, chunks = encode_tensor(arr, **kw)  # type: ignore[arg-type]
    h2 = decode_header(_wire(h.to_wire()), expected_shape=arr.shape, max_bytes=1 << 30)
    return decode_chunks(h2, [bytes(c) for c in chunks])


def test_round_trip_float32_is_exact_and_chunked() -> None:
    arr = np.random.default_rng(0).standard_normal(700_000).astype(np.float32)
    h, chunks = encode_tensor(arr)
    assert h.nbytes == 2_800_000 and len(chunks) == 3 and h.num_chunks == 3
    assert all(len(c) == 1 << 20 for c in chunks[:-1])
    assert h.hash == params_hash(arr)
    assert np.array_equal(roundtrip(arr), arr)


def test_float16_halves_the_bytes_and_widens_back() -> None:
    arr = np.random.default_rng(1).standard_normal(5000).astype(np.float32)
    h, _ = encode_tensor(arr, wire_dtype="float16", chunk_size=MIN_CHUNK_SIZE)
    assert h.nbytes == 10_000 and h.dtype == "float16"
    out = roundtrip(arr, wire_dtype="float16", chunk_size=MIN_CHUNK_SIZE)
    assert out.dtype == np.float32 and np.allclose(out, arr, atol=1e-2, rtol=1e-3)


def test_encoder_refuses_what_it_must_not_send() -> None:
    with pytest.raises(LocalProtocolError, match="NaN"):
        encode_tensor(np.array([1.0, np.nan], np.float32))
    with pytest.raises(LocalProtocolError, match="float16 range"):
        encode_tensor(np.array([1e6], np.float32), wire_dtype="float16")
    with pytest.raises(LocalProtocolError, match="wire dtype"):
        encode_tensor(np.zeros(3, np.float32), wire_dtype="int8")
    with pytest.raises(LocalProtocolError, match="floating"):
        encode_tensor(np.zeros(3, np.int32))


@pytest.mark.parametrize("mutate,reason", [
    (lambda m: m.update(dtype="int32"), "dtype"),
    (lambda m: m.update(shape=[11]), "shape"),
    (lambda m: m.update(nbytes=m["nbytes"] + 4), "size"),
    (lambda m: m.update(shape=[-1]), "shape"),
])
def test_header_rejections(mutate, reason) -> None:  # type: ignore[no-untyped-def]
    h, _ = encode_tensor(np.zeros(10, np.float32))
    m = h.to_wire()
    mutate(m)
    with pytest.raises(TensorRejected) as ei:
        decode_header(_wire(m), expected_shape=(10,) if reason != "shape" or m["shape"] != [11] else (10,),
                      max_bytes=1 << 20)
    assert ei.value.reason == reason
    assert isinstance(ei.value, RemoteProtocolError)


def test_header_rejects_oversize_before_any_chunk_and_unallowed_dtype() -> None:
    h, _ = encode_tensor(np.zeros(1000, np.float32))
    with pytest.raises(TensorRejected) as ei:
        decode_header(_wire(h.to_wire()), expected_shape=(1000,), max_bytes=3999)
    assert ei.value.reason == "oversize"
    h16, _ = encode_tensor(np.zeros(1000, np.float32), wire_dtype="float16")
    with pytest.raises(TensorRejected) as ei:
        decode_header(_wire(h16.to_wire()), expected_shape=(1000,), max_bytes=1 << 20,
                      allowed_dtypes=("float32",))
    assert ei.value.reason == "dtype"


def test_header_malformed_fields_are_remote_errors() -> None:
    h, _ = encode_tensor(np.zeros(4, np.float32))
    for bad in ({**h.to_wire(), "extra": 1}, {**h.to_wire(), "v": 2}, {**h.to_wire(), "hash": b"x"},
                {**h.to_wire(), "chunk": 1}, "not a map"):
        with pytest.raises(RemoteProtocolError):
            decode_header(_wire(bad) if isinstance(bad, dict) else bad, expected_shape=(4,),
                          max_bytes=1 << 20)


def test_chunk_level_rejections() -> None:
    arr = np.arange(3000, dtype=np.float32)
    h, chunks = encode_tensor(arr, chunk_size=MIN_CHUNK_SIZE)
    raw = [bytes(c) for c in chunks]
    # a short chunk
    d = TensorDecoder(h)
    with pytest.raises(TensorRejected) as ei:
        d.feed(raw[0][:-1])
    assert ei.value.reason == "size"
    # one chunk too many
    d = TensorDecoder(h)
    for c in raw:
        d.feed(c)
    with pytest.raises(TensorRejected) as ei:
        d.feed(raw[0])
    assert ei.value.reason == "oversize"
    # stream ended early
    d = TensorDecoder(h)
    d.feed(raw[0])
    with pytest.raises(TensorRejected) as ei:
        d.finish()
    assert ei.value.reason == "size"
    # a flipped byte
    bad = bytearray(raw[1])
    bad[5] ^= 0xFF
    with pytest.raises(TensorRejected) as ei:
        decode_chunks(h, [raw[0], bytes(bad), *raw[2:]])
    assert ei.value.reason == "hash"


def test_nan_and_inf_are_rejected_even_with_a_matching_hash() -> None:
    for poison in (np.nan, np.inf, -np.inf):
        raw = np.array([1.0, poison, 2.0], dtype="<f4").tobytes()
        m = {"v": 1, "dtype": "float32", "shape": [3], "nbytes": 12, "chunk": MIN_CHUNK_SIZE,
             "hash": tensor_hash(raw)}
        h = decode_header(_wire(m), expected_shape=(3,), max_bytes=100)
        with pytest.raises(TensorRejected) as ei:
            decode_chunks(h, [raw])
        assert ei.value.reason == "nonfinite"


def test_empty_tensor_round_trips() -> None:
    out = roundtrip(np.zeros(0, np.float32))
    assert out.shape == (0,)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=600),
       st.sampled_from([MIN_CHUNK_SIZE, 4096]))
def test_round_trip_property(values: list[float], chunk: int) -> None:
    arr = np.array(values, dtype=np.float32)
    assert np.array_equal(roundtrip(arr, chunk_size=chunk), arr)
