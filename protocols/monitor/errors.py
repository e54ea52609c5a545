"""Monitor RPC error codes (node/rpc/methods.py CODE_RANGES["monitor"]: 8xx).

The monitor had no range in DESIGN.md's list; 8xx is the next free one, added to CODE_RANGES
next to the others so a code says which role answered.
"""
from __future__ import annotations

MONITOR_UNKNOWN_METRIC = 800   # monitor.series: no such series (data: the known names)
MONITOR_BAD_RANGE = 801        # monitor.series: since/until/step wrong (data: {"field": name})
MONITOR_HISTORY_OFF = 802      # monitor.series: history is disabled (protocols.monitor.history)
MONITOR_UNKNOWN_EVENT = 803    # monitor.events: a --type names no event seen on this node
