from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.errors import ConfigError, PermanentRoleError
from fognode.node.events import EventBus, RoleHealthChanged
from fognode.node.health import HealthReport, Status
from fognode.node.role import EmptyConfig, NodeContext, Role
from fognode.node.roles import Supervisor, check_unique
from fognode.node.rpc.methods import MethodTable, rpc_method
from tests.polling import wait_until


def context(tmp_path: Path) -> NodeContext:
    reg = CollectorRegistry()
    # The supervisor never touches the overlay; these roles don't either.
    return NodeContext(peer_id="p", identity=SigningKey.generate(), overlay=None,  # type: ignore[arg-type]
                       events=EventBus(reg), metrics=reg, datadir=tmp_path, genesis={})


class Crashy(Role):
    name = "crashy"
    Config = EmptyConfig
    runs = 0

    @rpc_method("crashy.runs")
    async def rpc_runs(self) -> int:
        """How many times run() was entered."""
        return type(self).runs

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        type(self).runs += 1
        task_status.started()
        if type(self).runs < 3:
            raise RuntimeError(f"boom {type(self).runs}")
        await trio.sleep_forever()


class FailsToStart(Role):
    name = "failstart"
    Config = EmptyConfig

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("port in use")


async def test_crashing_role_is_restarted_with_backoff_and_reported(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    table = MethodTable()
    sup = Supervisor(ctx, table, backoff_initial=0.01)
    health_events = ctx.events.subscribe("t", [RoleHealthChanged])
    Crashy.runs = 0
    async with trio.open_nursery() as n:
        await sup.start(n, Crashy, EmptyConfig())
        await wait_until(lambda: Crashy.runs == 3 and sup.health()["crashy"]["health"] == "healthy")
        assert sup.health()["crashy"]["restarts"] == 2
        spec = table.get("crashy.runs")
        assert spec is not None and await spec.handler() == 3  # methods bound to the live instance
        seen = []
        while len(seen) < 4:
            with trio.fail_after(1):
                seen.append((await health_events.receive()).healthy)  # type: ignore[attr-defined]
        assert seen[:2] == [True, False]
        assert ctx.metrics.get_sample_value("fognode_node_role_restarts_total", {"role": "crashy"}) == 2
        await sup.stop_all(1.0)
        n.cancel_scope.cancel()
    assert sup.health()["crashy"]["health"] == "stopped"
    assert table.get("crashy.runs") is None


async def test_role_failing_at_start_does_not_block_the_others(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    sup = Supervisor(ctx, MethodTable(), backoff_initial=10)
    Crashy.runs = 2
    async with trio.open_nursery() as n:
        with trio.fail_after(2):
            await sup.start(n, FailsToStart, EmptyConfig())
            await sup.start(n, Crashy, EmptyConfig())
        h = sup.health()
        assert h["failstart"]["health"] == "unhealthy" and "port in use" in h["failstart"]["detail"]
        assert h["crashy"]["health"] == "healthy"
        await sup.stop_all(1.0)
        n.cancel_scope.cancel()


class PortTaken(Role):
    name = "porttaken"
    Config = EmptyConfig
    runs = 0

    @rpc_method("porttaken.status")
    async def rpc_status(self) -> str:
        """Status."""
        return "ok"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        type(self).runs += 1
        if type(self).runs == 1:
            task_status.started()
            await trio.sleep(0)
            raise RuntimeError("transient")  # a crash first: restarted
        raise PermanentRoleError("port 9464 is already in use; choose another with --metrics-port")


async def test_permanent_error_stops_restarts_but_not_the_daemon(tmp_path: Path, autojump_clock: Any) -> None:
    ctx = context(tmp_path)
    table = MethodTable()
    fatal: list[str] = []
    sup = Supervisor(ctx, table, backoff_initial=0.01, on_fatal=lambda name, e: fatal.append(name))
    PortTaken.runs = 0
    Crashy.runs = 2
    async with trio.open_nursery() as n:
        with trio.fail_after(5):
            await sup.start(n, PortTaken, EmptyConfig())
            await sup.start(n, Crashy, EmptyConfig())
            await wait_until(lambda: "failed" in sup.health()["porttaken"]["detail"])
        h = sup.health()["porttaken"]
        assert h["health"] == "unhealthy" and h["restarts"] == 1
        assert h["detail"] == ("failed, not restarted: port 9464 is already in use; "
                               "choose another with --metrics-port")
        down = table.down("porttaken")
        assert down is not None and down.reason == h["detail"]
        assert table.get("porttaken.status") is None and table.withdrawn_owner("porttaken.status") == "porttaken"
        await trio.sleep(60)  # virtual time (autojump clock): a restart would have happened by now
        assert PortTaken.runs == 2 and not fatal  # the daemon was not asked to stop
        assert sup.health()["crashy"]["health"] == "healthy"
        await sup.stop_all(1.0)
        n.cancel_scope.cancel()


def test_duplicate_topics_and_bad_ids_are_refused() -> None:
    class A(Role):
        name = "a"
        topics = ("fognode/a/x/1",)

        async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()

    class B(A):
        name = "b"

    with pytest.raises(ConfigError, match="claimed by both role a and role b"):
        check_unique([A, B])

    class C(A):
        name = "c"
        topics = ()
        stream_ids = ("/other/c/1.0.0",)

    with pytest.raises(ConfigError, match="naming rule"):
        check_unique([C])


def test_duplicate_rpc_method_is_refused() -> None:
    t = MethodTable()
    t.add_object(Crashy(None, EmptyConfig()), "crashy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="declared twice"):
        t.add_object(Crashy(None, EmptyConfig()), "other")  # type: ignore[arg-type]


class Counting(Role):
    """A role whose health facts change when told to (and can be made to fail or hold a NaN)."""

    name = "counting"
    Config = EmptyConfig
    facts: dict[str, Any] = {"jobs": 0}
    report = HealthReport.healthy()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    def health_detail(self) -> dict[str, Any]:
        if type(self).facts.get("fail"):
            raise KeyError("gone")
        return dict(type(self).facts)

    def health_report(self) -> HealthReport:
        return type(self).report


async def test_encoded_health_is_read_fresh_and_reencoded_only_on_change(tmp_path: Path) -> None:
    import json

    from fognode.node.rpc.jsonrpc import encode_json

    sup = Supervisor(context(tmp_path), MethodTable())
    Counting.facts = {"jobs": 0, "last": None}
    async with trio.open_nursery() as n:
        with trio.fail_after(5):
            await sup.start(n, Counting, EmptyConfig())
        first = sup.health_encoded()
        assert first == sup.health() and json.loads(first.json) == sup.health()
        assert sup.health_encoded() is first                   # nothing changed: the same answer
        Counting.facts = {"jobs": 1, "last": 2.5}                # a fact changed: read and encoded now
        again = sup.health_encoded()
        assert again is not first and json.loads(again.json)["counting"]["jobs"] == 1
        assert json.loads(encode_json({"roles": again}))["roles"] == sup.health()
        Counting.report = HealthReport(Status.DEGRADED, "slow")   # same facts, another report: encoded now
        degraded = sup.health_encoded()
        row = json.loads(degraded.json)["counting"]
        assert row["status"] == "degraded" and row["reason"] == "slow" and row["jobs"] == 1
        Counting.report = HealthReport(Status.DEGRADED, "slow")   # an equal report: the same answer
        assert sup.health_encoded() is degraded
        Counting.report = HealthReport.healthy()
        assert json.loads(sup.health_encoded().json) == sup.health()
        assert sup.health()["counting"]["status"] == "healthy"
        Counting.facts = {"fail": True}                        # a failing health check shows as degraded
        row = json.loads(sup.health_encoded().json)["counting"]
        assert row["status"] == "degraded" and "KeyError" in row["reason"]
        Counting.facts = {"jobs": 2, "ratio": float("nan")}    # not JSON: refused as before
        with pytest.raises(ValueError, match="Out of range float"):
            sup.health_encoded()
        await sup.stop_all(1.0)
        n.cancel_scope.cancel()
    assert json.loads(sup.health_encoded().json)["counting"]["health"] == "stopped"
