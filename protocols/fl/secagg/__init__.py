"""Secure aggregation for FL rounds (Bonawitz et al. 2017, SecAgg+ graphs of Bell et al. 2020).

core.py: the sans-IO participant and aggregator state machines; messages.py: their wire
messages; masking.py: quantisation into the ring, mask expansion, neighbour graphs;
shamir.py: secret sharing over GF(2^521 - 1); round.py: the per-round configuration every node
derives from the plan, and the stream framing; session.py: the FL core's secure-aggregation
rounds (participant and aggregator side).
"""
