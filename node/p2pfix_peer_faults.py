"""py-libp2p 0.8.1 fix: bad frames on `/meshsub/*` and `/ipfs/id/push/1.0.0` are charged to
the peer that sent them.

Symptom (upstream report form), libp2p==0.8.1 pinned:
- `libp2p/pubsub/pubsub.py: Pubsub.continuously_read_stream` catches `MessageTooLarge` (an RPC
  whose varint prefix announces more than `max_inbound_rpc_size`) itself: it logs a WARNING,
  resets the stream and drops the peer's pubsub state, and nothing outside learns whose fault
  it was. `Pubsub.stream_handler` does the same for `ParseError` (a length prefix that is no
  varint) at DEBUG. Garbage that does parse as a varint but not as protobuf (`DecodeError`)
  escapes and was already charged (node/host_lifecycle.py `libp2p_fault`).
- `libp2p/identity/identify_push/identify_push.py: identify_push_handler_for` catches every
  exception of the push it reads (oversized, not a varint, not protobuf) and logs it at ERROR.
Reproduction: a py-libp2p host on 127.0.0.1 opens streams on those protocols and writes one such
frame on each (fognode: tools/bench/attacks/malformed_frames.py); the victim's
`fognode_node_remote_protocol_errors_total` stayed at 0 and its peer score did not move.

Fix. Both let the exception reach the guard every libp2p handler runs in (node/streams.py
`guard_raw`, installed by host_lifecycle.harden_handlers), which resets the stream, reports the
fault once (a rate-limited WARNING, the metric) and charges the peer (overlay.penalize):
- `ChargingPubsub(ScoredPubsub)` hands py-libp2p's read loop a `_ResetWatch` around the
  stream. In 0.8.1 that loop resets the stream it reads in exactly one case, the oversized RPC,
  so a reset seen there is raised again as `MessageTooLarge` once the loop returned. Its
  `stream_handler` does what 0.8.1's does (reset, drop the peer's pubsub state) and then
  re-raises a `ParseError` instead of swallowing it. A plain stream error stays quiet as before.
- `identify_push_handler(host)` replaces 0.8.1's handler: the same steps (read one
  varint-prefixed Identify within PUSH_TIMEOUT, update the peerstore with py-libp2p's own
  `update_peerstore_from_identify`) with a smaller size limit (MAX_PUSH; 0.8.1 reads up to
  1 MiB) and a peer's bad bytes raised, not logged. A push that does not arrive within
  PUSH_TIMEOUT is dropped without a charge (a slow link is no fault).
Limits: a pubsub RPC whose signed peer record does not verify is still only logged by 0.8.1
(rate-limited by faults.Libp2pErrorLimiter), not charged; a frame cut short by the end of the
stream counts as a clean close in 0.8.1's read loop (the resource manager's deadlines bound it).
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, cast

import trio
from libp2p.exceptions import ParseError
from libp2p.identity.identify.pb.identify_pb2 import Identify
from libp2p.identity.update import update_peerstore_from_identify
from libp2p.io.exceptions import MessageTooLarge
from libp2p.network.stream.exceptions import StreamError
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

from fognode.node.scored_pubsub import ScoredPubsub

MAX_PUSH = 64 * 1024     # bytes of one identify push (go-libp2p allows 8 KiB per message)
PUSH_TIMEOUT = 10.0      # seconds to receive a push (0.8.1's own bound)


class _ResetWatch:
    """A pubsub stream as py-libp2p's read loop sees it: every attribute is the stream's;
    `reset()` also notes that the loop gave up on the peer's bytes."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.reset_by_reader = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def reset(self) -> None:
        self.reset_by_reader = True
        await self._stream.reset()


class ChargingPubsub(ScoredPubsub):
    """ScoredPubsub whose read loop raises a peer's oversized or unparseable RPC frame to the
    handler guard instead of swallowing it (module doc). Takes ScoredPubsub's arguments."""

    async def continuously_read_stream(self, stream: Any) -> None:
        """py-libp2p's loop; raises MessageTooLarge after it refused an oversized RPC."""
        watched = _ResetWatch(stream)
        await super().continuously_read_stream(cast(Any, watched))
        if watched.reset_by_reader:
            raise MessageTooLarge(f"a pubsub RPC over {self.max_inbound_rpc_size} bytes")

    async def stream_handler(self, stream: Any) -> None:
        """0.8.1's handler, with the peer's faults raised (to streams.guard_raw)."""
        try:
            await self.continuously_read_stream(stream)
        except (StreamError, ParseError) as e:
            try:
                await stream.reset()
            except Exception:   # already gone
                pass
            self._handle_dead_peer(stream.muxed_conn.peer_id)
            if isinstance(e, ParseError):
                raise
        # MessageTooLarge passes: 0.8.1's loop reset the stream and dropped the peer already


def identify_push_handler(host: Any) -> Callable[[Any], Awaitable[None]]:
    """The `/ipfs/id/push/1.0.0` handler (module doc). Raises ParseError, MessageTooLarge or
    protobuf's DecodeError for a peer's bad push; closes the stream after a good one."""

    async def handle(stream: Any) -> None:
        data = None
        try:
            with trio.move_on_after(PUSH_TIMEOUT):
                data = await read_varint_prefixed_bytes_limited(stream, MAX_PUSH)
        except (StreamError, MuxedStreamError):   # closed or reset before a whole push: 0.8.1
            data = None                             # ignores it too
        if data is None:
            try:
                await stream.reset()
            except Exception:   # already gone
                pass
            return
        msg = Identify()
        msg.ParseFromString(data)
        await update_peerstore_from_identify(host.get_peerstore(), stream.muxed_conn.peer_id, msg)
        try:
            await stream.close()
        except Exception:   # the pusher went away after its push: nothing to release
            pass

    return handle
