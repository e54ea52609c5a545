"""Constant-rate padding for a circuit (issue 14 item 6), an option of the circuit cores.

With a rate r > 0, a circuit end sends exactly one RELAY cell every 1/r seconds in its
direction, whatever its owner has to send: the next queued message if there is one (control
first, then DATA as the windows allow), otherwise a DROP cell addressed to the far end of the
circuit, which every relay forwards like any other cell (they cannot tell it apart) and the
far end discards. The client pads the forward direction itself and asks the last hop with
PADDING_NEGOTIATE to pad the backward direction at the same rate (capped by the relay's
`max_padding_rate`). Data beyond the rate waits in the queue: padding trades latency and
bandwidth (rate x 4 KiB/s per direction) for shape.

What it hides, from an observer of any link of the circuit and from the relays in the middle:
when the circuit's owner sends or receives and how much, as long as the demand stays under the
rate, so a burst (a page load, a key press) cannot be matched with a burst at the other end by
its timing or size. Cells are fixed-size in any mode, so sizes are hidden anyway.

What it does not hide: that the circuit exists, when it was built and when it closes (its
lifetime and its first and last cell), traffic beyond the rate (the queue drains at the rate,
so long transfers still show as a longer busy circuit), the guard's knowledge of who the client
is, anything the endpoint itself sees, and other circuits of the same node. It does not resist
an active adversary at both ends who delays or drops cells to imprint a pattern (that shows up
as gaps at the far end whatever the padding), and each hop adds jitter of its own, so the rate
an outside observer sees downstream is constant only on average.
"""
from __future__ import annotations

import math

MAX_CATCH_UP = 4      # slots sent at once after a late tick; older missed slots are skipped


class ConstantRate:
    """Slot clock: `due(now)` says how many cells to send now; `next_at` when to wake up."""

    def __init__(self, rate: float, now: float) -> None:
        if not rate > 0 or math.isinf(rate):
            raise ValueError("padding rate must be a positive number of cells per second")
        self.rate = rate
        self.interval = 1.0 / rate
        self.origin = now
        self.slot = 1                          # index of the next slot (no drift from summing)

    @property
    def next_at(self) -> float:
        return self.origin + self.slot * self.interval

    def due(self, now: float) -> int:
        if now < self.next_at:
            return 0
        last = int((now - self.origin) * self.rate + 1e-9)
        n = last - self.slot + 1
        self.slot = last + 1
        return min(n, MAX_CATCH_UP)
