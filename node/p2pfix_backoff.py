"""py-libp2p 0.8.1 fix: a node that PRUNEs a peer keeps a backoff for it, so it does not GRAFT
that peer again inside the backoff and get charged with a GRAFT flood by it; and a backoff
keeps a peer out of the mesh only, not out of gossip (IHAVE).

Symptom (upstream report form). GossipSub v1.1 says that a PRUNE sets a backoff on both ends:
the pruned peer may not GRAFT back before it ends, and neither may the pruner (go-libp2p's
heartbeat adds a backoff for every peer it prunes, `prunePeer` -> `addBackoff`; so does every
PRUNE it sends in `handleGraft`). py-libp2p 0.8.1 records the backoff only on the receiving
side (`handle_prune`): `mesh_heartbeat` prunes a mesh over D_high and `handle_graft` answers
floods, graylisted and backed-off peers with `emit_prune`, all without a backoff of their own.
So the pruner's next heartbeat whose mesh is under D_low may GRAFT the very peers it just
pruned; each of those sees a GRAFT within 10 s of the PRUNE it received
(`_check_graft_flood_protection`), charges 10 points of behaviour penalty
(`penalize_graft_flood`) and answers with PRUNE. fognode's score squares the behaviour penalty
over 20 points (node/peerscore.py): three such GRAFTs make an honest peer negative (pruned,
refused, out of the mesh candidates), four make it graylisted (its RPCs ignored, IWANTs
included). Seen in `python -m fognode.tools.bench.gossip --setups ours --nodes 25 --diag`
(25 daemons, 3 bootstrap dials each): the early nodes reach 13 connections while newcomers
join, prune 7 mesh peers at one heartbeat, re-GRAFT them a few heartbeats later as the
connection manager trims back to its watermark, and end up penalised by their neighbours
(graft_flood_penalties 29-39, scores -18 to -95 in the router dumps); meshes of 0 or 1 follow,
and when such a node is the publisher or a receiver whose one mesh peer ignores it, a whole
40-message burst (one batch) misses it: the benchmark's intermittent "0/40".
Reproduction: four hosts on 127.0.0.1 with GossipSub D=1, D_low=1, D_high=2, three of them
connected only to the first (A); A's mesh fills to 3 and its heartbeat prunes 2; close the
third, A's mesh is empty, and A's next heartbeat GRAFTs one of the two it pruned, which records
`graft_flood_penalties[A] == 10` (tests/node/test_p2pfix.py).

Second symptom. py-libp2p chooses the peers of its heartbeat gossip (IHAVE) with the mesh's
backoff filter (`_handle_topic_heartbeat` -> `_get_in_topic_gossipsub_peers_from_minus(...,
backoff_check=True)`), so a backed-off peer hears of no message at all: a node out of every
neighbour's mesh, or one whose neighbours are all in its backoff (a mesh of 0), gets nothing
by gossip either. In the spec and go-libp2p (`emitGossip`) the backoff is a mesh rule; gossip
goes to any topic peer outside the mesh at or above the gossip threshold. Seen in the same
benchmark: a publisher with a mesh of 0 and 4 backed-off peers (node/p2pfix_floodpublish.py
has the publishing half); 15 s later no node had its burst. Reproduction: after the first
reproduction, A publishes; `A.gossip_heartbeat()` names neither of the two backed-off peers.

Fix. `BackoffKeepingGossipSub` (a subclass; node/scored_pubsub.py's ScoredGossipSub derives
from it and is handed to Pubsub as its router, a constructor option) adds the pruner's
backoff where py-libp2p leaves it out: for every peer the heartbeat prunes (after
`mesh_heartbeat`, before `_emit_control_msgs` sends the PRUNEs), and for every PRUNE sent
through `emit_prune` (`handle_graft`'s refusals, the unsubscribe backoff for `leave`), for the
duration the PRUNE announces. The grafts py-libp2p makes for IP diversity
(`_improve_mesh_diversity`, which does not look at backoffs) leave out backed-off peers. Its
`gossip_heartbeat` adds backed-off topic peers outside the mesh to py-libp2p's IHAVE targets,
up to py-libp2p's own count for the topic (max(6, a quarter of the peers outside the mesh)). What
goes on the wire is unchanged: the same GRAFT and PRUNE messages, fewer GRAFTs. The flood
check and its 10-point charge stay as py-libp2p has them: with both ends keeping the backoff
an honest peer no longer trips them, and a peer that does deserves it. A mesh pruned over
D_high can then stay short of D_low for up to one backoff (60 s) when every other topic peer
is backed off, as in go-libp2p; the node keeps receiving through IHAVE/IWANT (now sent to it)
and the gossip layer's pulls meanwhile, and publishes to all its topic peers
(node/p2pfix_floodpublish.py).
"""
from __future__ import annotations

from typing import Any

from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub


class BackoffKeepingGossipSub(GossipSub):
    """GossipSub that records its own backoff for every peer it PRUNEs, and gossips to
    backed-off peers (module doc). `backoffs_kept` counts the backoffs added where py-libp2p
    would have none, `gossip_to_backed_off` the IHAVEs it would not have sent."""

    backoffs_kept: int = 0
    gossip_to_backed_off: int = 0

    def mesh_heartbeat(self) -> tuple[Any, Any]:
        graft, prune = super().mesh_heartbeat()
        for peer, topics in prune.items():
            for topic in topics:
                self._keep_backoff(peer, topic, False)
        return graft, prune

    async def emit_prune(self, topic: str, to_peer: ID, do_px: bool,
                         is_unsubscribe: bool) -> None:
        self._keep_backoff(to_peer, topic, is_unsubscribe)
        await super().emit_prune(topic, to_peer, do_px, is_unsubscribe)

    def gossip_heartbeat(self) -> Any:
        """py-libp2p's IHAVE targets, plus backed-off peers up to the same count: a backoff
        keeps a peer out of the mesh, not out of gossip (module doc, second symptom)."""
        peers_to_gossip = super().gossip_heartbeat()
        if self.pubsub is None:
            return peers_to_gossip
        for topic, current in [*self.mesh.items(),
                               *[(t, p) for t, p in self.fanout.items() if t not in self.mesh]]:
            known = self.pubsub.peer_topics.get(topic)
            msg_ids = self.mcache.window(topic) if known else None
            if not msg_ids:
                continue
            chosen = {p for p, topics in peers_to_gossip.items() if topic in topics}
            want = self._get_adaptive_gossip_peers_count(
                topic, len(known) - len(current)) - len(chosen)
            if want <= 0:
                continue
            for peer in self._get_in_topic_gossipsub_peers_from_minus(
                    topic, want, set(current) | chosen, False):
                peers_to_gossip[peer][topic] = list(msg_ids)
                self.gossip_to_backed_off += 1
        return peers_to_gossip

    def _improve_mesh_diversity(self, topic: str, current_ips: set[str]) -> list[ID]:
        grafted = super()._improve_mesh_diversity(topic, current_ips)
        keep = []
        for peer in grafted:
            if self._check_back_off(peer, topic):
                self.mesh[topic].discard(peer)
                if self.scorer is not None:
                    self.scorer.on_leave_mesh(peer, topic)
            else:
                keep.append(peer)
        return keep

    def _keep_backoff(self, peer: ID, topic: str, is_unsubscribe: bool) -> None:
        if not self._check_back_off(peer, topic):
            self.backoffs_kept += 1
        self._add_back_off(peer, topic, is_unsubscribe)
