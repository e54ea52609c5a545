"""The sans-IO FL session core: what one node does in every session it coordinates, trains in
or aggregates.

core.py: `FlCore` (inputs, outputs, a session's life); coordinator.py: the starter's part
(opt-ins, selection, plans, results); rounds.py: participant and aggregator round state and
timing; election.py: the seeded aggregator order; selection.py: who may take part;
state.py: what a node keeps per session (`Session`, handed to the core and its collaborators);
standby.py: a fallback coordinator's standby state and the failover rules; failover.py: the
core's failover side; hier.py: hierarchical (per-region) rounds.
"""
