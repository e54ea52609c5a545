"""A job's pipes (executor.py's helpers): `feed` writes its stdin and closes it, `collect`
reads one of its output streams to EOF into a buffer, bounded (stdout: up to the job's output
limit; stderr: its last STDERR_TAIL bytes). Both await the pipe and are cancellable; a pipe the
job closed or broke ends them quietly (its exit says why)."""
from __future__ import annotations

import trio

STDERR_TAIL = 4096


async def feed(proc: trio.Process, data: bytes) -> None:
    """Write `data` to the job's stdin, then close it."""
    assert proc.stdin is not None
    try:
        if data:
            await proc.stdin.send_all(data)
        await proc.stdin.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the job closed its stdin or died; its exit says why


async def collect(stream: trio.abc.ReceiveStream | None, buf: bytearray, limit: int | None) -> bool:
    """Read `stream` to EOF into `buf`: everything up to `limit` bytes, or (None) only the
    last STDERR_TAIL bytes. True when the job wrote more than `limit` (reading stopped there,
    `buf` holds the first `limit` bytes), False at EOF."""
    if stream is None:
        return False
    while True:
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        if not data:
            return False
        buf += data
        if limit is None:
            del buf[:-STDERR_TAIL]
        elif len(buf) > limit:
            del buf[limit:]
            return True
