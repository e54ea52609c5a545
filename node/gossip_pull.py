"""The serving side of `/fognode/gossip/pull/1.0.0`: a peer asks for seqs of one origin.

Request `{"v": 1, "t": topic, "o": origin public key, "e": epoch, "s": [seqs]}` (at most
MAX_PULL_SEQS seqs, each a positive integer); the answer is one frame `{"v": 1, "m": raw
envelope}` per message we hold (our own ring when the origin is us in this epoch, else the
relay cache), then `{"v": 1, "end": true, "g": [...]}` listing the seqs we published and no
longer keep. A relayed envelope's own signature is checked before it is served (gossip
accepts envelopes on the strength of the libp2p message signature alone: gossip_envelope's
`signed_by_origin`), and a bad one is dropped from the cache. A malformed request raises RemoteProtocolError naming the peer (the stream
guard resets the stream and charges the peer). The pulling side is node/gossip.py's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from fognode.node.errors import RemoteProtocolError
from fognode.node.gossip_envelope import MessageStore, open_envelope
from fognode.node.gossip_tracking import MAX_PULL_SEQS
from fognode.node.wire import Fields

if TYPE_CHECKING:
    from fognode.node.streams import Libp2pFramedStream


async def serve_pull(fs: "Libp2pFramedStream", store: MessageStore, *, own_key: bytes,
                     epoch: int, served: Callable[[str], None]) -> None:
    """Answer one pull request on `fs` from `store`; `served(topic)` per message sent."""
    f = Fields(await fs.recv(max_size=64 * 1024), "gossip pull request", versions={1},
               peer=fs.remote_peer)
    topic = f.str("t", max_len=256)
    origin = f.bytes("o", size=32)
    asked_epoch = f.int("e", lo=0, hi=2**63 - 1)
    seqs = f.list("s", max_len=MAX_PULL_SEQS)
    f.done()
    gone = []
    for s in seqs:
        if not isinstance(s, int) or isinstance(s, bool) or s < 1:
            raise RemoteProtocolError("gossip pull request: seqs must be positive integers",
                                      peer=fs.remote_peer)
        raw = None
        if origin == own_key and asked_epoch == epoch:
            raw = store.get_own(topic, s)
            if raw is None and store.own_gone(topic, s):
                gone.append(s)
        else:
            raw = store.get_relayed(topic, origin, asked_epoch, s)
            if raw is not None and not signature_holds(raw):
                store.forget_relayed(topic, origin, asked_epoch, s)   # the origin's fault
                raw = None
        if raw is not None:
            await fs.send({"v": 1, "m": raw})
            served(topic)
    await fs.send({"v": 1, "end": True, "g": gone})



def signature_holds(raw: bytes) -> bool:
    """True when the envelope `raw` decodes and its own signature holds."""
    try:
        open_envelope(raw, max_size=len(raw))
    except RemoteProtocolError:
        return False
    return True
