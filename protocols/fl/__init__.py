"""Serverless federated learning (issue 5): sessions, rounds, aggregation strategies
(`strategies/`), and privacy (`privacy/`: central differential privacy with an RDP accountant,
and secure aggregation after Bonawitz et al. 2017 with SecAgg+ neighbour graphs)."""
