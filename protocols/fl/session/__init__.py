"""The sans-IO FL session core: what one node does in every session it coordinates, trains in
or aggregates.

core.py: `FlCore` (inputs, outputs, a session's life); coordinator.py: the starter's part
(opt-ins, selection, plans, results); rounds.py: participant and aggregator round state and
timing; election.py: the seeded aggregator order; selection.py: who may take part;
failover.py: fallback coordinators; hier.py: hierarchical (per-region) rounds.
"""
