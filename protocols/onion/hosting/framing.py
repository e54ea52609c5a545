"""Length-prefixed frames over a trio stream (a circuit stream or the host's local TCP
connection): u32 big-endian length, then the bytes, as node/streams.py frames libp2p streams.

`FrameReader.recv(max_size)` awaits one whole frame (a longer announced length is the
sender's fault: HostingWireError; the stream ending mid-frame or before one: StreamClosed).
`send_frame` awaits until the stream took the frame. Both are cancellable.
"""
from __future__ import annotations

import struct
from typing import Any

import trio

from fognode.node.errors import StreamClosed
from fognode.node.wire import pack, unpack
from fognode.protocols.onion.hosting.wire import HostingWireError

_HEADER = struct.Struct(">I")


async def send_frame(stream: trio.abc.SendStream, data: bytes) -> None:
    await stream.send_all(_HEADER.pack(len(data)) + data)


async def send_obj(stream: trio.abc.SendStream, obj: Any) -> None:
    await send_frame(stream, pack(obj))


class FrameReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self._buf = bytearray()

    async def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            chunk = await self.stream.receive_some(max(65536, n - len(self._buf)))
            if not chunk:
                raise StreamClosed("the stream ended" + (" mid-frame" if self._buf else ""))
            self._buf += chunk

    async def recv(self, max_size: int) -> bytes:
        await self._fill(_HEADER.size)
        (n,) = _HEADER.unpack_from(self._buf)
        if n > max_size:
            raise HostingWireError(f"frame of {n} bytes announced, over the limit of {max_size}")
        await self._fill(_HEADER.size + n)
        data = bytes(self._buf[_HEADER.size:_HEADER.size + n])
        del self._buf[:_HEADER.size + n]
        return data

    async def recv_obj(self, max_size: int, what: str) -> Any:
        return unpack(await self.recv(max_size), max_size=max_size, what=what)
