"""What the monitor offers other roles through `ctx.services` under "monitor".

`MonitorService`: the recorded series and their values (`series`, `latest`, `names`), the
health roll-up (`health`), the alerts (`alerts`) and the recent events (`events`). All are
synchronous reads of the role's memory and ring files; none blocks on the network.
The web dashboard and `fognode-cli top` read the same through the RPC methods
`monitor.series`, `monitor.metrics`, `monitor.health`, `monitor.alerts`, `monitor.events`.
"""
from __future__ import annotations

from typing import Any, Callable

from fognode.protocols.monitor.core import MonitorCore
from fognode.protocols.monitor.eventlog import EventLog
from fognode.protocols.monitor.series import Point, SeriesSet


class MonitorService:
    def __init__(self, core: MonitorCore, series_of: Callable[[str], SeriesSet] | None, log: EventLog,
                 health: Callable[[], dict[str, Any]], clock: Callable[[], float]) -> None:
        self._core = core
        self._series_of = series_of
        self._log = log
        self._health = health
        self._clock = clock

    def names(self) -> list[str]:
        """The series the monitor records."""
        return [s.name for s in self._core.table]

    def latest(self, name: str) -> tuple[float, float] | None:
        """(time, value) of the newest sample of a series, None before its first."""
        return self._core.latest.get(name)

    def series(self, name: str, since: float, until: float, step: float | None = None) -> list[Point]:
        """Recorded points (series.SeriesSet.query); [] when history is off. Raises
        SeriesQueryError for a bad range, KeyError for an unknown series."""
        if name not in self.names():
            raise KeyError(name)
        if self._series_of is None:
            return []
        return self._series_of(name).query(since, until, step, self._clock())

    def health(self) -> dict[str, Any]:
        return self._health()

    def alerts(self) -> dict[str, list[dict[str, Any]]]:
        a = self._core.alerts
        return {"firing": [x.to_dict() for x in a.firing()], "recent": [x.to_dict() for x in a.recent()]}

    def events(self, kinds: tuple[str, ...] = (), limit: int = 100) -> list[dict[str, Any]]:
        return self._log.recent(kinds, limit)
