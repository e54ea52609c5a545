"""Aggregation strategies: the interface (`base`) and one small module per rule, each with its
maths as free functions (fedavg, fedprox, fedavgm, fedopt, qfedavg, median, trimmed_mean, krum,
bulyan, clipping).
Build one with `registry.make_strategy(name, params)`
(or a session's with `registry.build_strategy(spec)`)."""
