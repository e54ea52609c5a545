"""Wire compatibility of fognode's py-libp2p host with a real js-libp2p peer (issue 16).

    .venv/bin/python -m fognode.tools.js_interop [--dir ~/.cache/fognode/js-interop]

Needs `node` (>= 20) and `npm`. The js peer is tools/js_interop/peer.mjs with the exact npm
versions of tools/js_interop/package.json (js-libp2p 2.10: TCP, Noise, Yamux, identify, ping,
GossipSub 14), installed once into --dir by `npm install` (about 40 s; bounded at 300 s). One
fognode overlay (node/host.py, with every node/p2pfix_*.py fix) connects to it on 127.0.0.1
and checks, each under a deadline, whole run bounded at 120 s:
- identify: the js peer's protocols reach our peerstore;
- ping both ways (/ipfs/ping/1.0.0), our dialer and our listener;
- a stream each way (multistream-select, yamux, Noise): 64 KiB echoed byte for byte;
- 4 MiB through a stream to the js peer and back, read while written (many Yamux frames
  and window updates each way);
- GossipSub: 256 B and 2 KiB messages published by us come back through the js peer.
Prints one line per check and exits non-zero if any failed. Kademlia is not exercised: the
overlay speaks /fognode/kad/1.0.0 only (issue 10 item 6), which no js peer serves.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import trio

HERE = Path(__file__).resolve().parent / "js_interop"
ECHO = "/fognode/interop/echo/1.0.0"
TOPIC, ECHO_TOPIC = "fognode/interop/1", "fognode/interop/echo/1"
BLOB = bytes([7]) * 65536
BULK = bytes(range(256)) * 16384      # 4 MiB: many Yamux frames and window updates each way


def prepare(where: Path) -> Path:
    """Copy the js peer into `where` and npm-install its pinned dependencies if missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SystemExit("js_interop: needs node and npm on PATH")
    where.mkdir(parents=True, exist_ok=True)
    fresh = False
    for name in ("package.json", "peer.mjs"):
        src, dst = HERE / name, where / name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)
            fresh = True
    if fresh or not (where / "node_modules").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=where, check=True,
                       timeout=300, stdout=subprocess.DEVNULL)
    return where


async def run(where: Path) -> list[tuple[str, bool, str]]:
    from libp2p.custom_types import TProtocol
    from libp2p.network.stream.exceptions import StreamEOF
    from libp2p.peer.id import ID
    from nacl.signing import SigningKey
    from prometheus_client import CollectorRegistry

    from fognode.node.events import EventBus
    from fognode.node.host import OverlayConfig, open_overlay
    from fognode.node.ping import libp2p_ping

    results: list[tuple[str, bool, str]] = []
    proc = await trio.lowlevel.open_process(["node", "peer.mjs"], cwd=str(where),
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    buf = b""

    async def line() -> str:
        nonlocal buf
        while b"\n" not in buf:
            chunk = await proc.stdout.receive_some(4096)     # type: ignore[union-attr]
            if not chunk:
                raise RuntimeError("the js peer exited")
            buf += chunk
        out, buf = buf.split(b"\n", 1)
        return out.decode()

    async def ask(cmd: str, want: str) -> str:
        await proc.stdin.send_all((cmd + "\n").encode())     # type: ignore[union-attr]
        while True:
            got = await line()
            if got.startswith(want) or got.startswith("ERR"):
                return got

    async def check(name: str, seconds: float, fn: Callable[[], Any]) -> None:
        t = time.perf_counter()
        try:
            with trio.fail_after(seconds):
                detail = await fn()
            results.append((name, True, f"{detail} ({(time.perf_counter() - t) * 1000:.0f} ms)"))
        except Exception as e:      # each check reports its own failure
            results.append((name, False, f"{type(e).__name__}: {e}"))

    try:
        with trio.fail_after(20):
            js_addr = (await line()).split(" ", 1)[1]
        js_id = js_addr.rsplit("/p2p/", 1)[1]
        reg = CollectorRegistry()
        cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"])
        async with open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg) as ov:
            async def raw_echo(stream: Any) -> None:
                try:
                    while True:
                        await stream.write(await stream.read(65536))
                except StreamEOF:
                    await stream.close()

            ov.host.set_stream_handler(TProtocol(ECHO), raw_echo)
            received: list[bytes] = []

            async def connect() -> str:
                await ov.connect(js_addr)
                return "connected"

            async def identified() -> str:
                while ECHO not in ov.host.get_peerstore().get_protocols(ID.from_base58(js_id)):
                    await trio.sleep(0.05)
                return "js protocols known"

            async def ping_js() -> str:
                return f"rtt {await libp2p_ping(ov.host, js_id) * 1000:.2f} ms"

            async def ping_py() -> str:
                return await ask(f"PING {ov.peer_id}", "PINGED")

            async def stream_to_js() -> str:
                s = await ov.host.new_stream(ID.from_base58(js_id), [TProtocol(ECHO)])
                await s.write(BLOB)
                got = b""
                while len(got) < len(BLOB):
                    got += await s.read(65536)
                await s.close()
                if got != BLOB:
                    raise ValueError(f"echo differs ({len(got)} bytes)")
                return f"{len(got)} bytes echoed"

            async def stream_from_js() -> str:
                answer = await ask(f"ECHO {ov.peer_id} {ECHO}", "ECHOED")
                if answer != f"ECHOED {len(BLOB)}":
                    raise ValueError(answer)
                return answer

            async def bulk_to_js() -> str:
                s = await ov.host.new_stream(ID.from_base58(js_id), [TProtocol(ECHO)])
                parts: list[bytes] = []
                got = 0
                async with trio.open_nursery() as n:
                    n.start_soon(s.write, BULK)
                    while got < len(BULK):
                        parts.append(await s.read(1 << 20))
                        got += len(parts[-1])
                await s.close()
                if b"".join(parts) != BULK:
                    raise ValueError(f"echo differs ({got} bytes)")
                return f"{got} bytes echoed"

            async def gossip() -> str:
                sub = await ov.pubsub.subscribe(ECHO_TOPIC)
                await ov.pubsub.subscribe(TOPIC)

                async def drain() -> None:
                    while True:
                        received.append((await sub.get()).data)

                async with trio.open_nursery() as n:
                    n.start_soon(drain)
                    while not ov.gossipsub.mesh.get(TOPIC):
                        await trio.sleep(0.05)
                    sent = [b"s" * 256, b"L" * 2048]
                    while not all(m in received for m in sent):
                        for m in sent:
                            if m not in received:
                                await ov.pubsub.publish(TOPIC, m)
                        await trio.sleep(0.5)
                    n.cancel_scope.cancel()
                return "256 B and 2 KiB messages relayed back"

            await check("connect (TCP, Noise, Yamux)", 15, connect)
            await check("identify", 15, identified)
            await check("ping py -> js", 10, ping_js)
            await check("ping js -> py", 10, ping_py)
            await check("stream py -> js, 64 KiB echo", 15, stream_to_js)
            await check("stream js -> py, 64 KiB echo", 15, stream_from_js)
            await check("stream py -> js, 4 MiB echo", 30, bulk_to_js)
            await check("GossipSub both ways", 30, gossip)
            await proc.stdin.send_all(b"QUIT\n")
    finally:
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
    return results


async def bounded(where: Path) -> list[tuple[str, bool, str]]:
    with trio.fail_after(120):
        return await run(where)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path.home() / ".cache/fognode/js-interop",
                    help="where the js peer and its node_modules live")
    args = ap.parse_args()
    where = prepare(args.dir)
    results = trio.run(bounded, where)
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name:<32} {detail}")
    sys.exit(0 if results and all(ok for _, ok, _ in results) else 1)


if __name__ == "__main__":
    main()
