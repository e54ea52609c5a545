"""Flat parameter vectors on the wire: a header frame, then raw little-endian chunks.

A tensor travels as

1. a header (a versioned msgpack map, see `TensorHeader`): dtype ("float32" or "float16"),
   shape, total byte count, chunk size, and the BLAKE2b-256 hash of all the raw bytes;
2. `ceil(nbytes / chunk_size)` raw byte frames of exactly `chunk_size` bytes (the last one
   shorter). The default chunk size is 1 MiB, so libp2p writes are large (one Yamux stream
   moves 200+ MB/s with 1 MiB writes, 16 MB/s with 4 KiB writes).

Nothing is pickled and nothing goes through `torch.load`: the receiver builds a numpy array
from the bytes with an explicit little-endian dtype. The decoder rejects, each with a
`TensorRejected` (a RemoteProtocolError) whose `reason` is a short label for metrics:

- "dtype"     dtype not float32/float16, or not one the receiver accepts,
- "shape"     shape not the one the receiver expects (the model layout),
- "size"      byte count not shape x itemsize, wrong chunk count or chunk length,
- "oversize"  more bytes than the receiver's limit (checked on the header, before any chunk),
- "hash"      the bytes do not hash to the announced hash,
- "nonfinite" NaN or Inf values;
- and, when the decoder writes into a row of the round's update matrix that was taken back
  while the tensor streamed, the row's reason ("superseded", "round closed": not the
  sender's fault).

float16 is an option to halve transfer size; the receiver widens to float32. Encoding to
float16 refuses values outside the float16 range rather than sending Inf.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import numpy as np

from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.node.wire import DIGEST_LEN, Fields

DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 10
MAX_CHUNK_SIZE = 4 << 20   # a stream frame is at most 4 MiB (node/streams.py)
WIRE_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
}
MAX_DIMS = 8


class TensorRejected(RemoteProtocolError):
    """A received tensor is malformed; `reason` is one of dtype, shape, size, oversize, hash,
    nonfinite (a label for metrics), the message says what exactly was wrong."""

    def __init__(self, reason: str, message: str, *, peer: str | None = None) -> None:
        self.reason = reason
        super().__init__(f"tensor rejected ({reason}): {message}", peer=peer)


@dataclass(frozen=True)
class TensorHeader:
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    chunk_size: int
    hash: bytes

    @property
    def num_chunks(self) -> int:
        return 0 if self.nbytes == 0 else -(-self.nbytes // self.chunk_size)

    def to_wire(self) -> dict[str, Any]:
        return {"v": 1, "dtype": self.dtype, "shape": list(self.shape), "nbytes": self.nbytes,
                "chunk": self.chunk_size, "hash": self.hash}


def tensor_hash(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_LEN).digest()


def params_hash(flat: np.ndarray) -> bytes:
    """The model hash used in announcements and receipts: BLAKE2b-256 of the float32 LE bytes."""
    return tensor_hash(np.ascontiguousarray(flat, dtype="<f4").tobytes())


def encode_tensor(arr: np.ndarray, *, wire_dtype: str = "float32",
                  chunk_size: int = DEFAULT_CHUNK_SIZE,
                  known_hash: bytes | None = None) -> tuple[TensorHeader, list[memoryview]]:
    """The header and the chunks of `arr` in `wire_dtype`. `known_hash`: the BLAKE2b of the
    wire bytes, already established by the caller (a held model's hash: transfer/encoded.py),
    put in the header instead of hashing the bytes again. Raises LocalProtocolError for an
    unknown dtype, a bad chunk size, non-finite values or values float16 cannot hold."""
    if wire_dtype not in WIRE_DTYPES:
        raise LocalProtocolError(f"wire dtype must be one of {sorted(WIRE_DTYPES)}, got {wire_dtype!r}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise LocalProtocolError(f"chunk size {chunk_size} is outside [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")
    if arr.ndim > MAX_DIMS:
        raise LocalProtocolError(f"tensor has {arr.ndim} dimensions, at most {MAX_DIMS} travel")
    if not np.issubdtype(arr.dtype, np.floating):
        raise LocalProtocolError(f"only floating tensors travel, got {arr.dtype}")
    if not np.isfinite(arr).all():
        raise LocalProtocolError("refusing to send a tensor with NaN or Inf values")
    dt = WIRE_DTYPES[wire_dtype]
    if wire_dtype == "float16" and arr.size and float(np.abs(arr).max()) > float(np.finfo(np.float16).max):
        raise LocalProtocolError("values exceed the float16 range; send float32")
    raw = np.ascontiguousarray(arr, dtype=dt).tobytes()
    view = memoryview(raw)
    header = TensorHeader(wire_dtype, tuple(int(s) for s in arr.shape), len(raw), chunk_size,
                          tensor_hash(raw) if known_hash is None else known_hash)
    chunks = [view[i:i + chunk_size] for i in range(0, len(raw), chunk_size)]
    return header, chunks


def decode_header(raw: Any, *, expected_shape: tuple[int, ...] | None, max_bytes: int,
                  allowed_dtypes: tuple[str, ...] = tuple(WIRE_DTYPES),
                  peer: str | None = None, what: str = "fl.TensorHeader") -> TensorHeader:
    """Validate a decoded header map against what this receiver accepts (before any chunk)."""
    f = Fields(raw, what, versions={1}, peer=peer)
    dtype = f.str("dtype", max_len=16)
    shape_raw = f.list("shape", max_len=MAX_DIMS)
    nbytes = f.int("nbytes", lo=0, hi=2**62)
    chunk = f.int("chunk", lo=MIN_CHUNK_SIZE, hi=MAX_CHUNK_SIZE)
    h = f.bytes("hash", size=DIGEST_LEN)
    f.done()
    if dtype not in WIRE_DTYPES or dtype not in allowed_dtypes:
        raise TensorRejected("dtype", f"dtype {dtype!r} is not accepted (want one of {list(allowed_dtypes)})", peer=peer)
    shape: list[int] = []
    for s in shape_raw:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise TensorRejected("shape", f"shape {shape_raw!r} must be non-negative integers", peer=peer)
        shape.append(s)
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        raise TensorRejected("shape", f"shape {tuple(shape)} is not the expected {tuple(expected_shape)}", peer=peer)
    if nbytes > max_bytes:
        raise TensorRejected("oversize", f"{nbytes} bytes is over the {max_bytes}-byte limit", peer=peer)
    want = math.prod(shape) * WIRE_DTYPES[dtype].itemsize
    if nbytes != want:
        raise TensorRejected("size", f"{nbytes} bytes announced, shape {tuple(shape)} of {dtype} is {want}", peer=peer)
    return TensorHeader(dtype, tuple(shape), nbytes, chunk, h)


class RowSink(Protocol):
    """Where a decoder writes a float32 tensor (strategies/matrix.py `RowLease`): `row`, the
    array, and `lost()`, None while this transfer may still write it, else the reason it may
    not (the decoder then stops with a TensorRejected of that reason)."""

    @property
    def row(self) -> np.ndarray: ...

    def lost(self) -> str | None: ...


class TensorDecoder:
    """Reassembles one tensor from its chunks (feed them in order, then `finish`).

    A float32 tensor's chunk bytes are written straight into the result (one copy from the
    stream's frames, no reassembly buffer): into `sink.row` when a sink is given (a row of the
    round's update matrix), else into a new array. Each chunk's whole values are checked for
    NaN/Inf while they are in cache; the verdict is given by `finish`, after the hash, as
    before. A float16 tensor is gathered as bytes and widened into the result by `finish`.

    Every violation raises TensorRejected at the first chunk that shows it; a lost sink
    (another stream took its row, or the round closed) raises TensorRejected with the sink's
    reason, and nothing more is written.
    """

    def __init__(self, header: TensorHeader, *, peer: str | None = None,
                 sink: RowSink | None = None) -> None:
        self.header = header
        self.peer = peer
        self._sink = sink
        self._chunks = 0
        self._offset = 0                 # bytes received so far
        self._checked = 0                # float32 values checked for NaN/Inf so far
        self._finite = True
        self._hasher = hashlib.blake2b(digest_size=DIGEST_LEN)
        wire_dt = WIRE_DTYPES[header.dtype]
        if sink is not None:
            out = sink.row
            if out.dtype != WIRE_DTYPES["float32"] or out.shape != header.shape \
                    or not out.flags.c_contiguous or not out.flags.writeable:
                raise LocalProtocolError(f"a tensor of shape {header.shape} cannot be decoded "
                                         f"into a {out.dtype} array of shape {out.shape}")
            self._out = out
        else:
            self._out = np.empty(header.shape, dtype=WIRE_DTYPES["float32"])
        self._direct = wire_dt == WIRE_DTYPES["float32"]
        self._raw: memoryview | bytearray = \
            memoryview(self._out.reshape(-1)).cast("B") if self._direct else bytearray()  # type: ignore[arg-type]

    @property
    def complete(self) -> bool:
        return self._chunks == self.header.num_chunks

    def _check_sink(self) -> None:
        why = self._sink.lost() if self._sink is not None else None
        if why is not None:
            raise TensorRejected(why, f"the update's row was taken back ({why})", peer=self.peer)

    def feed(self, chunk: bytes) -> None:
        h = self.header
        if self._chunks >= h.num_chunks:
            raise TensorRejected("oversize", f"chunk {self._chunks + 1} beyond the announced {h.num_chunks}", peer=self.peer)
        last = self._chunks == h.num_chunks - 1
        want = h.nbytes - h.chunk_size * (h.num_chunks - 1) if last else h.chunk_size
        if len(chunk) != want:
            raise TensorRejected("size", f"chunk {self._chunks} is {len(chunk)} bytes, expected {want}", peer=self.peer)
        self._check_sink()
        self._hasher.update(chunk)
        stop = self._offset + len(chunk)
        if isinstance(self._raw, memoryview):
            self._raw[self._offset:stop] = chunk
            whole = stop // 4                  # values complete so far
            if self._finite and whole > self._checked:
                flat = self._out.reshape(-1)
                self._finite = bool(np.isfinite(flat[self._checked:whole]).all())
                self._checked = whole
        else:
            self._raw += chunk
        self._offset = stop
        self._chunks += 1

    def finish(self) -> np.ndarray:
        """The tensor as float32 (the sink's row, or a new array). Raises TensorRejected if
        incomplete, if the hash does not match, or on NaN/Inf."""
        h = self.header
        if not self.complete:
            raise TensorRejected("size", f"stream ended after {self._chunks} of {h.num_chunks} chunks", peer=self.peer)
        if self._hasher.digest() != h.hash:
            raise TensorRejected("hash", "the bytes do not match the announced BLAKE2b hash", peer=self.peer)
        self._check_sink()
        if not self._direct:
            wide = np.frombuffer(self._raw, dtype=WIRE_DTYPES[h.dtype]).reshape(h.shape)
            np.copyto(self._out, wide)
            self._finite = bool(np.isfinite(self._out).all())
        if not self._finite:
            raise TensorRejected("nonfinite", "the tensor contains NaN or Inf values", peer=self.peer)
        out = self._out
        return out if out.dtype == np.float32 else out.astype(np.float32)


def decode_chunks(header: TensorHeader, chunks: Iterator[bytes] | list[bytes], *,
                  peer: str | None = None) -> np.ndarray:
    """Convenience: feed all `chunks` and finish (TensorRejected on any violation)."""
    dec = TensorDecoder(header, peer=peer)
    for c in chunks:
        dec.feed(bytes(c))
    return dec.finish()
