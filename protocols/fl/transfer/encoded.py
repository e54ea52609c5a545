"""The wire form of the models a node serves, encoded once per model (`EncodedModels`)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from fognode.protocols.fl.session.state import ModelBundle
from fognode.protocols.fl.transfer.tensors import TensorHeader, encode_tensor

Encoded = tuple[str, TensorHeader, list[Any]]     # a tensor's name, header and chunks


class EncodedModels:
    """The wire form (`encode_tensor`: checked, converted, hashed, chunked) of the last
    `size` models this node served, by (session, model hash): every participant of a round
    fetches the same base model from the same few sources, and each served copy was encoded
    (and hashed) again. A model's content is fixed by its hash, so the cached chunks (views of
    immutable bytes) are the ones a fresh encoding would give. The params are not hashed here
    at all: their header carries the model hash, which is BLAKE2b of their float32 bytes
    (`params_hash`) and was computed or checked when the session kept the model."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._models: OrderedDict[tuple[bytes, bytes, int], list[Encoded]] = OrderedDict()

    def get(self, sid: bytes, model_hash: bytes, bundle: ModelBundle, chunk_size: int) -> list[Encoded]:
        key = (sid, model_hash, chunk_size)
        got = self._models.get(key)
        if got is None:
            # the params' float32 bytes hash to `model_hash` (every model a session keeps was
            # hashed or checked against its hash on the way in: state.py `keep_model`'s
            # callers), so they are not hashed again; the state's tensors are
            got = self._models[key] = \
                [("params", *encode_tensor(bundle.params, chunk_size=chunk_size, known_hash=model_hash))] \
                + [(n, *encode_tensor(t, chunk_size=chunk_size)) for n, t in sorted(bundle.state.items())]
            while len(self._models) > self.size:
                self._models.popitem(last=False)
        self._models.move_to_end(key)
        return got
