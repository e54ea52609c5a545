"""The FL role's tensor transfers over libp2p streams (thin trio adapters around the core).

streams.py: the stream ids, frame bounds and `Link` (what a transfer may touch);
models.py: `/fognode/fl/model/1.0.0` (global models out, fetched in);
updates.py: `/fognode/fl/update/1.0.0` (one update per stream, admitted by its header first);
secagg.py: `/fognode/fl/secagg/1.0.0` (one secure-aggregation message per stream).
"""
