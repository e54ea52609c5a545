"""The onion role's Prometheus metrics (per node registry; they survive role restarts through
node.metrics.metric), names `fognode_onion_<name>_<unit>`."""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fognode.node.metrics import metric


@dataclass(frozen=True)
class OnionMetrics:
    circuits: Gauge                 # this node's own circuits, by state
    relay_circuits: Gauge           # circuits this node relays
    build_seconds: Histogram
    circuits_closed: Counter        # own circuits, by reason and whether they had been built
    cells_relayed: Counter
    link_bytes: Counter             # bytes on the relay streams, by direction
    stream_bytes: Counter           # bytes of this node's circuit streams (clients, services), by direction
    neighbours: Gauge
    peer_faults: Counter
    socks: Counter                  # SOCKS port outcomes and bytes (socks_server.SocksServer.stats)
    descriptors_rejected: Counter   # by where (dht: stored here; fetch: as a client) and reason
    descriptor_puts: Counter        # by outcome
    introductions: Counter          # service side, by outcome
    hs_connects: Counter            # client side, by outcome

    @staticmethod
    def create(reg: CollectorRegistry) -> "OnionMetrics":
        return OnionMetrics(
            circuits=metric(reg, Gauge, "fognode_onion_circuits", "This node's own circuits, by state", ["state"]),
            relay_circuits=metric(reg, Gauge, "fognode_onion_relay_circuits", "Circuits this relay carries"),
            build_seconds=metric(reg, Histogram, "fognode_onion_circuit_build_seconds",
                                 "Time to build a circuit (all hops answered)",
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)),
            circuits_closed=metric(reg, Counter, "fognode_onion_circuits_closed_total",
                                   "This node's own circuits closed, by reason and whether built",
                                   ["reason", "built"]),
            cells_relayed=metric(reg, Counter, "fognode_onion_cells_relayed_total",
                                 "RELAY cells this relay passed on to a neighbour"),
            link_bytes=metric(reg, Counter, "fognode_onion_link_bytes_total",
                              "Bytes on relay streams (framed cells), by direction", ["direction"]),
            stream_bytes=metric(reg, Counter, "fognode_onion_stream_bytes_total",
                                "Payload bytes of this node's circuit streams, by direction", ["direction"]),
            neighbours=metric(reg, Gauge, "fognode_onion_neighbours", "Neighbours with an open link"),
            peer_faults=metric(reg, Counter, "fognode_onion_peer_faults_total",
                               "Cells dropped or circuits torn down for a neighbour's fault, by reason", ["reason"]),
            socks=metric(reg, Counter, "fognode_onion_socks_events_total",
                         "SOCKS port connections by outcome, and bytes spliced (bytes_up, bytes_down)", ["event"]),
            descriptors_rejected=metric(reg, Counter, "fognode_onion_descriptors_rejected_total",
                                        "Hidden-service descriptors refused, by where and reason", ["where", "reason"]),
            descriptor_puts=metric(reg, Counter, "fognode_onion_descriptor_puts_total",
                                   "Descriptor puts to the DHT by this node's services, by outcome", ["outcome"]),
            introductions=metric(reg, Counter, "fognode_onion_introductions_total",
                                 "INTRODUCE2 received by this node's services, by outcome", ["outcome"]),
            hs_connects=metric(reg, Counter, "fognode_onion_hs_connects_total",
                               "Connections to .fog services made through this node, by outcome", ["outcome"]),
        )
