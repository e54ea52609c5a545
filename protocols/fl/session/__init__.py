"""The sans-IO FL session core: what one node does in every session it coordinates, trains in
or aggregates.

core.py: `FlCore` (inputs, outputs, a session's life); participant.py and aggregator.py: a
participant's and an aggregator's part of a round; coordinator.py: the starter's state machine
(opt-ins, selection, plans, results) and coordinating.py the core's steps around it;
rounds.py: participant and aggregator round state and timing; election.py: the seeded
aggregator order; selection.py: who may take part; state.py: what a node keeps per session
(`Session`, handed to the core and its collaborators); ending.py: how rounds and sessions end
(and rewards are paid); status.py: `fl.status`; standby.py: a fallback coordinator's standby
state and the failover rules; failover.py: the core's failover side; hier.py: hierarchical
(per-region) rounds.
"""
