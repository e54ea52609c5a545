"""What a bulk transfer costs in CPU per MB through the stream stack, on each end, against
the bare socket and the crypto it cannot do without.

    .venv/bin/python -m fognode.tools.bench.stream_bulk [--transfers 60] [--size 580000]
        [--chunk 1048576] [--runs 3] [--stacks fognode,plain,bare]

Every run starts two processes per stack on 127.0.0.1, a listener and a dialer, so that each
end's CPU (`time.process_time` of its process) is its own and the two ends do not share a
loop or the GIL, as between two daemons. The dialer opens one stream and reuses it for every
transfer. A transfer is framed as an FL model fetch (protocols/fl/transfer/models.py): the
fetcher sends a small request frame, the server answers with a small header frame and the
tensor's bytes in frames of `--chunk` bytes (FL's `chunk_size`, 1 MiB by default, so a 0.58 MB
tensor is one frame). `--transfers` transfers go each way (the listener fetches from the
dialer, then the dialer from the listener), after `--warmup` untimed ones each way.
Stacks:
- fognode: node/host.py's overlay (py-libp2p, TCP, Noise, Yamux, every p2pfix module), the
  streams FL uses (node/streams.py framed streams, the handler's with rcmgr's buffer account
  and deadlines);
- plain: py-libp2p's own host (`new_host`, its Noise and Yamux classes, no p2pfix module is
  installed in these processes), node/streams.py's framed stream on its streams, no gate;
- bare (the bound): the same frames (4-byte length, body) on a bare trio TCP socket pair.
The crypto bound is measured in this process in the same run: ChaCha20-Poly1305 (the
`cryptography` class that py-libp2p's Noise library, noiseprotocol, uses) sealing and opening
the same bytes in Noise transport messages of 65,519 plaintext bytes. The figures per stack
and direction are the sender's and the receiver's CPU us per MB (1e6 bytes of tensor) and the
wall MB/s of the transfers (median of the runs, spread printed); the bound rows are bare +
encrypt for the sender and bare + decrypt for the receiver.

`--fresh` (fognode and plain stacks): the dialer fetches from the listener only, each transfer
on a new stream of its own (open, request, header and tensor, close), as FL opens one per
model fetch; rows add the wall milliseconds per transfer. A new Yamux stream starts with the
protocol's 256 KiB receive window, so this is the path that waits for window updates.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Awaitable, Callable, Protocol

import trio

PROTOCOL = "/fognode/bench/bulk/1.0.0"
FRESH_PROTOCOL = "/fognode/bench/bulk-fresh/1.0.0"   # --fresh: one transfer per stream
NOISE_PLAIN = 65535 - 16     # plaintext bytes of one Noise transport message
REQUEST = b"\x82" + os.urandom(60)     # stand-ins of FL's request and header frames: their
HEADER = b"\x83" + os.urandom(120)     # sizes, not their content, matter to the stack


class Framed(Protocol):
    async def send_bytes(self, data: bytes) -> None: ...
    async def recv_bytes(self, *, max_size: int | None = None) -> bytes: ...


class BareFramed:
    """Frames (u32 length, body) on a bare trio SocketStream: the bound. A frame is read
    into its own buffer with `recv_into` (the header with `receive_some`); a large one is
    sent as its length and its body, unjoined."""

    def __init__(self, sock: trio.SocketStream) -> None:
        self._sock = sock
        self._buf = bytearray()

    async def send_bytes(self, data: bytes) -> None:
        if len(data) < 65536:
            await self._sock.send_all(len(data).to_bytes(4, "big") + data)
        else:
            await self._sock.send_all(len(data).to_bytes(4, "big"))
            await self._sock.send_all(data)

    async def _into(self, view: memoryview) -> None:
        """Fill `view` from the socket: what is buffered, then `recv_into` straight into it
        (one copy, kernel to frame)."""
        k = min(len(self._buf), len(view))
        view[:k] = self._buf[:k]
        del self._buf[:k]
        sock = self._sock.socket
        while k < len(view):
            got = await sock.recv_into(view[k:])
            if not got:
                raise EOFError
            k += got

    async def recv_bytes(self, *, max_size: int | None = None) -> bytes:
        while len(self._buf) < 4:
            data = await self._sock.receive_some(1 << 16)
            if not data:
                raise EOFError
            self._buf += data
        n = int.from_bytes(self._buf[:4], "big")
        del self._buf[:4]
        out = bytearray(n)
        await self._into(memoryview(out))
        return out      # a bytearray: no copy into bytes


def _chunks(size: int, chunk: int) -> list[bytes]:
    body = os.urandom(size)
    return [body[i:i + chunk] for i in range(0, size, chunk)]


async def _serve(st: Framed, n: int, chunks: list[bytes]) -> None:
    for _ in range(n):
        await st.recv_bytes()
        await st.send_bytes(HEADER)
        for c in chunks:
            await st.send_bytes(c)


async def _fetch(st: Framed, n: int, chunks: list[bytes], chunk: int) -> None:
    for _ in range(n):
        await st.send_bytes(REQUEST)
        await st.recv_bytes()
        for _ in chunks:
            await st.recv_bytes(max_size=chunk)


class FreshServer:
    """--fresh, the listener: serves one transfer on each new stream and counts them."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.served = 0
        self.changed = trio.Event()

    async def handle(self, st: Framed) -> None:
        await _serve(st, 1, self.chunks)
        self.served += 1
        self.changed.set()

    async def wait_for(self, n: int) -> None:
        while self.served < n:
            await self.changed.wait()
            self.changed = trio.Event()


async def _listener_session(st: Framed, fresh: FreshServer) -> None:
    """The listener's side: commands from the dialer, each answered with this process's CPU
    seconds and wall seconds for it."""
    while True:
        cmd = json.loads(await st.recv_bytes())
        if cmd["op"] == "quit":
            return
        chunks = _chunks(cmd["size"], cmd["chunk"])
        t, w = time.process_time(), time.perf_counter()
        if cmd["op"] == "fetch":
            await _fetch(st, cmd["n"], chunks, cmd["chunk"])
        elif cmd["op"] == "fresh":
            fresh.chunks, fresh.served = chunks, 0
            await st.send_bytes(b"ready")
            await fresh.wait_for(cmd["n"])
        else:
            await _serve(st, cmd["n"], chunks)
        out = {"cpu": time.process_time() - t, "wall": time.perf_counter() - w}
        await st.send_bytes(json.dumps(out).encode())


Opener = Callable[[], Awaitable[Any]]      # --fresh: opens a new FRESH_PROTOCOL stream


async def _fetch_fresh(open_fresh: Opener, n: int, chunks: list[bytes], chunk: int) -> None:
    for _ in range(n):
        st = await open_fresh()
        await _fetch(st, 1, chunks, chunk)
        await st.close()


async def _dialer_session(st: Framed, args: argparse.Namespace,
                          open_fresh: Opener | None = None) -> dict[str, float]:
    chunks = _chunks(args.size, args.chunk)
    out: dict[str, float] = {}
    ops = [("fetch", args.warmup), ("serve", args.warmup), ("fetch", args.transfers),
           ("serve", args.transfers)]
    if args.one_way:        # for a profile: the listener only receives
        ops = ops[::2]
    if args.fresh:
        ops = [("fresh", args.warmup), ("fresh", args.transfers)]
    for op, n in ops:
        cmd = {"op": op, "n": n, "size": args.size, "chunk": args.chunk}
        await st.send_bytes(json.dumps(cmd).encode())
        if op == "fresh":
            await st.recv_bytes()       # the listener's server has the chunks
        t, w = time.process_time(), time.perf_counter()
        if op == "fetch":        # the listener fetches: we serve
            await _serve(st, n, chunks)
        elif op == "fresh":
            assert open_fresh is not None
            await _fetch_fresh(open_fresh, n, chunks, args.chunk)
        else:
            await _fetch(st, n, chunks, args.chunk)
        theirs = json.loads(await st.recv_bytes())
        cpu, wall = time.process_time() - t, time.perf_counter() - w
        if n == args.transfers:
            way = "to listener" if op == "fetch" else "to dialer"
            mine, other = ("send", "recv") if op == "fetch" else ("recv", "send")
            out[f"{way} {mine}"] = cpu
            out[f"{way} {other}"] = theirs["cpu"]
            out[f"{way} wall"] = wall
    await st.send_bytes(json.dumps({"op": "quit"}).encode())
    return out


async def _fognode(args: argparse.Namespace) -> None:
    from nacl.signing import SigningKey
    from prometheus_client import CollectorRegistry

    from fognode.node.events import EventBus
    from fognode.node.host import OverlayConfig, open_overlay

    reg = CollectorRegistry()
    cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], peers_low=0)
    async with open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg) as ov:
        if args.role == "listen":
            done = trio.Event()
            fresh = FreshServer()

            async def handler(st: Any) -> None:
                try:
                    await _listener_session(st, fresh)
                finally:        # the session ended, or the dialer went away
                    done.set()
            ov.set_stream_handler(PROTOCOL, handler)
            ov.set_stream_handler(FRESH_PROTOCOL, fresh.handle)
            print(f"{ov.listen_addrs()[0]}", flush=True)
            await done.wait()
            await trio.sleep(0.2)       # the last frame leaves before the host closes
        else:
            peer = await ov.connect(args.addr)
            await trio.sleep(0.5)       # identify and the gossip streams settle
            st = await ov.open_stream(peer, PROTOCOL)
            out = await _dialer_session(st, args, lambda: ov.open_stream(peer, FRESH_PROTOCOL))
            print(json.dumps(out), flush=True)


async def _plain(args: argparse.Namespace) -> None:
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as x25519
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.security.noise.transport import Transport as Noise
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
    from libp2p.stream_muxer.yamux.yamux import Yamux

    from fognode.node.host import quiet_libp2p_loggers
    from fognode.node.streams import Libp2pFramedStream

    quiet_libp2p_loggers()
    kp = create_new_key_pair(os.urandom(32))
    host = new_host(key_pair=kp, sec_opt={NOISE_ID: Noise(kp, noise_privkey=x25519().private_key)},
                    muxer_opt={TProtocol(YAMUX_ID): Yamux})
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        if args.role == "listen":
            done = trio.Event()
            fresh = FreshServer()

            async def handler(stream: Any) -> None:
                try:
                    await _listener_session(Libp2pFramedStream(stream), fresh)
                finally:
                    done.set()

            async def fresh_handler(stream: Any) -> None:
                st = Libp2pFramedStream(stream)
                await fresh.handle(st)
                await st.close()
            host.set_stream_handler(TProtocol(PROTOCOL), handler)
            host.set_stream_handler(TProtocol(FRESH_PROTOCOL), fresh_handler)
            print(f"{host.get_addrs()[0]}", flush=True)
            await done.wait()
            await trio.sleep(0.2)
        else:
            info = info_from_p2p_addr(multiaddr.Multiaddr(args.addr))
            await host.connect(info)
            stream = await host.new_stream(info.peer_id, [TProtocol(PROTOCOL)])

            async def open_fresh() -> Any:
                s = await host.new_stream(info.peer_id, [TProtocol(FRESH_PROTOCOL)])
                return Libp2pFramedStream(s)
            out = await _dialer_session(Libp2pFramedStream(stream), args, open_fresh)
            print(json.dumps(out), flush=True)


async def _bare(args: argparse.Namespace) -> None:
    if args.role == "listen":
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        print(f"127.0.0.1:{listeners[0].socket.getsockname()[1]}", flush=True)
        sock = await listeners[0].accept()
        await _listener_session(BareFramed(sock), FreshServer())
        await sock.aclose()
    else:
        host, port = args.addr.rsplit(":", 1)
        sock = await trio.open_tcp_stream(host, int(port))
        print(json.dumps(await _dialer_session(BareFramed(sock), args)), flush=True)
        await sock.aclose()


STACKS = {"fognode": _fognode, "plain": _plain, "bare": _bare}


def _crypto(total: int) -> dict[str, float]:
    """CPU seconds to seal and to open `total` bytes in Noise transport messages."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    aead = ChaCha20Poly1305(os.urandom(32))
    plain = os.urandom(NOISE_PLAIN)
    count = -(-total // NOISE_PLAIN)
    nonces = [b"\x00" * 4 + i.to_bytes(8, "little") for i in range(count)]
    sealed = aead.encrypt(nonces[0], plain, b"")
    t = time.process_time()
    for nonce in nonces:     # each message dropped as the stack drops it once sent
        aead.encrypt(nonce, plain, b"")
    enc = time.process_time() - t
    t = time.process_time()
    for _ in nonces:
        aead.decrypt(nonces[0], sealed, b"")
    return {"encrypt": enc, "decrypt": time.process_time() - t}


def _one_run(stack: str, args: argparse.Namespace) -> dict[str, float]:
    me = ["-m", __spec__.name] if __spec__ else [os.path.abspath(__file__)]   # or run as a file
    base = [sys.executable, *me, "--stack", stack,
            "--transfers", str(args.transfers), "--size", str(args.size),
            "--chunk", str(args.chunk), "--warmup", str(args.warmup)] + \
        (["--one-way"] if args.one_way else []) + (["--fresh"] if args.fresh else [])
    listener = subprocess.Popen(base + ["--role", "listen"], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        addr = listener.stdout.readline().strip()
        if not addr:
            raise RuntimeError(f"the {stack} listener did not start")
        dialer = subprocess.run(base + ["--role", "dial", "--addr", addr], stdout=subprocess.PIPE,
                                text=True, timeout=600, check=True)
        listener.wait(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    return json.loads(dialer.stdout.strip().splitlines()[-1])


def _fmt(xs: list[float], digits: int = 0) -> str:
    return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--transfers", type=int, default=60)
    ap.add_argument("--size", type=int, default=580_000)
    ap.add_argument("--chunk", type=int, default=1 << 20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stacks", default="fognode,plain,bare")
    ap.add_argument("--one-way", action="store_true",
                    help="only the dialer sends (for py-spy: the listener is the receiver)")
    ap.add_argument("--fresh", action="store_true",
                    help="each transfer on a new stream, the listener serving (module doc)")
    ap.add_argument("--stack", choices=sorted(STACKS), help=argparse.SUPPRESS)
    ap.add_argument("--role", choices=("listen", "dial"), help=argparse.SUPPRESS)
    ap.add_argument("--addr", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        trio.run(STACKS[args.stack], args)
        return
    stacks = args.stacks.split(",")
    if args.fresh:
        stacks = [s for s in stacks if s != "bare"]
    mb = args.transfers * args.size / 1e6
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in stacks}
    crypto: list[dict[str, float]] = []
    for _ in range(args.runs):
        for s in stacks:
            runs[s].append(_one_run(s, args))
        crypto.append(_crypto(args.transfers * args.size))
    how = "a new stream per transfer" if args.fresh else "one reused stream"
    print(f"bulk transfers on {how}, two processes on 127.0.0.1: {args.transfers} "
          f"transfers of {args.size} bytes {'to the dialer' if args.fresh else 'each way'} in "
          f"{args.chunk}-byte frames, median of {args.runs} runs (min-max); "
          f"load {open('/proc/loadavg').read().split()[0]}")
    print(f"{'stack, direction':<26}{'send CPU us/MB':>22}{'recv CPU us/MB':>22}{'wall MB/s':>20}"
          + (f"{'wall ms/transfer':>22}" if args.fresh else ""))
    ways = ("to dialer",) if args.fresh else \
        ("to listener",) if args.one_way else ("to listener", "to dialer")
    for s in stacks:
        for way in ways:
            send = [r[f"{way} send"] / mb * 1e6 for r in runs[s]]
            recv = [r[f"{way} recv"] / mb * 1e6 for r in runs[s]]
            rate = [mb / r[f"{way} wall"] for r in runs[s]]
            ms = [r[f"{way} wall"] / args.transfers * 1e3 for r in runs[s]]
            print(f"{s + ', ' + way:<26}{_fmt(send):>22}{_fmt(recv):>22}{_fmt(rate, 1):>20}"
                  + (f"{_fmt(ms, 2):>22}" if args.fresh else ""))
    enc = [c["encrypt"] / mb * 1e6 for c in crypto]
    dec = [c["decrypt"] / mb * 1e6 for c in crypto]
    print(f"{'crypto alone':<26}{_fmt(enc):>22}{_fmt(dec):>22}{'-':>20}")
    if "bare" in stacks and not args.one_way and not args.fresh:
        bare_s = statistics.median(r[f"{w} send"] for r in runs["bare"]
                                   for w in ("to listener", "to dialer")) / mb * 1e6
        bare_r = statistics.median(r[f"{w} recv"] for r in runs["bare"]
                                   for w in ("to listener", "to dialer")) / mb * 1e6
        bs, br = bare_s + statistics.median(enc), bare_r + statistics.median(dec)
        print(f"{'bound: bare + crypto':<26}{bs:>22.0f}{br:>22.0f}{'-':>20}")
        for s in stacks:
            if s == "bare":
                continue
            send = statistics.median(r[f"{w} send"] for r in runs[s]
                                     for w in ("to listener", "to dialer")) / mb * 1e6
            recv = statistics.median(r[f"{w} recv"] for r in runs[s]
                                     for w in ("to listener", "to dialer")) / mb * 1e6
            print(f"{s + ' / bound':<26}{send / bs:>21.2f}x{recv / br:>21.2f}x{'-':>20}")


if __name__ == "__main__":
    main()
