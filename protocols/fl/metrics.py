"""The FL role's Prometheus metrics (`fognode_fl_*`), created once per node registry."""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from fognode.node.metrics import metric


@dataclass(frozen=True)
class FlMetrics:
    round: Histogram          # duration of completed rounds this node coordinated
    bytes_in: Counter         # tensor bytes received, by stream
    bytes_out: Counter        # tensor bytes sent, by stream
    rejected: Counter         # updates refused as aggregator, by reason
    rounds: Counter           # rounds seen complete, by role
    train: Histogram          # local training time per round
    transfer: Histogram       # one update send or model fetch, by stream
    aggregate: Histogram      # strategy time per aggregation
    bad_messages: Counter     # malformed FL messages from peers, by channel
    unknown_messages: Counter  # gossip of a type this version does not know (relayed, ignored)
    refused: Counter          # plans and session ends refused, by kind
    task_starts: Counter      # task processes started
    rewards: Counter          # micro-units minted to participants
    stream_opens: Counter     # transfer streams this node opened, by stream and outcome
    stream_open: Histogram    # time to open one transfer stream, by stream
    sessions: Counter         # transfer sessions opened, and transfers that reused one

    @classmethod
    def create(cls, reg: CollectorRegistry) -> FlMetrics:
        return cls(
            round=metric(reg, Histogram, "fognode_fl_round_duration_seconds",
                         "Duration of completed rounds this node coordinated",
                         buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)),
            bytes_in=metric(reg, Counter, "fognode_fl_bytes_received_total",
                            "Tensor bytes received", ["stream"]),
            bytes_out=metric(reg, Counter, "fognode_fl_bytes_sent_total",
                             "Tensor bytes sent", ["stream"]),
            rejected=metric(reg, Counter, "fognode_fl_updates_rejected_total",
                            "Updates refused by this node as aggregator, by reason", ["reason"]),
            rounds=metric(reg, Counter, "fognode_fl_rounds_total",
                          "Rounds this node saw complete", ["role"]),
            train=metric(reg, Histogram, "fognode_fl_training_seconds",
                         "Local training time per round", buckets=(0.1, 0.5, 1, 5, 15, 60, 300)),
            transfer=metric(reg, Histogram, "fognode_fl_transfer_seconds",
                            "Time to send one update or fetch one model", ["stream"],
                            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60)),
            aggregate=metric(reg, Histogram, "fognode_fl_aggregation_seconds",
                             "Time the strategy took to aggregate one round",
                             buckets=(0.001, 0.01, 0.1, 0.5, 1, 5, 30)),
            bad_messages=metric(reg, Counter, "fognode_fl_bad_messages_total",
                                "Malformed FL messages from peers", ["channel"]),
            unknown_messages=metric(reg, Counter, "fognode_fl_unknown_messages_total",
                                    "FL gossip of a message type this version does not know "
                                    "(a newer node's): relayed and ignored"),
            refused=metric(reg, Counter, "fognode_fl_messages_refused_total",
                           "Plans and session ends refused (not from the acting coordinator)",
                           ["kind"]),
            task_starts=metric(reg, Counter, "fognode_fl_task_process_starts_total",
                               "Task processes started (the first, and one after each death)"),
            rewards=metric(reg, Counter, "fognode_fl_rewards_paid_total",
                           "Micro-units minted to participants of rounds this node aggregated"),
            stream_opens=metric(reg, Counter, "fognode_fl_stream_opens_total",
                                "Transfer streams this node opened (xfer = a transfer session)",
                                ["stream", "outcome"]),
            stream_open=metric(reg, Histogram, "fognode_fl_stream_open_seconds",
                               "Time to open one transfer stream", ["stream"],
                               buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60)),
            sessions=metric(reg, Counter, "fognode_fl_transfer_sessions_total",
                            "Transfer sessions opened, and transfers that found one open",
                            ["event"]),
        )
