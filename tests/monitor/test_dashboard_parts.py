"""The dashboard's parts without a daemon: strict query strings, the read-only allow-list, the
token file, the figures digest of a real registry, and top's model of two readings."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from fognode.protocols.monitor.dashboard.access import readable
from fognode.protocols.monitor.dashboard.assets import PAGES, load_assets
from fognode.protocols.monitor.dashboard.cookie import AccessToken, bearer_token, cookie_token, set_cookie
from fognode.protocols.monitor.core import MonitorCore
from fognode.protocols.monitor.dashboard.query import BadQuery, json_params, parse_query
from fognode.tools.top_model import TopModel, delta_lag, sparkline


@pytest.mark.parametrize("query, param", [
    ("params=1&params=2", "params"),        # twice
    ("token=a&extra=1", "extra"),           # unknown
    ("params", "params"),                   # no '=' (strict parsing)
    ("%ff=1", "%ff"),                       # not UTF-8
])
def test_a_malformed_query_is_refused_naming_the_param(query: str, param: str) -> None:
    with pytest.raises(BadQuery) as e:
        parse_query(query, ("params", "token"))
    assert e.value.param == param and repr(param) in str(e.value)


def test_query_and_params_that_are_fine() -> None:
    assert parse_query("", ("params",)) == {}
    assert parse_query("params=%5B1%5D", ("params",)) == {"params": "[1]"}
    assert json_params(None) is None and json_params("") is None
    assert json_params('{"session": "ab"}') == {"session": "ab"}
    for bad, why in (("{x", "not valid JSON"), ("3", "array or object"), ("[" * 5000, "over 4096")):
        with pytest.raises(BadQuery, match=why) as e:
            json_params(bad)
        assert e.value.param == "params"


def test_only_read_methods_are_readable() -> None:
    for m in ("node.info", "fl.status", "wallet.balance", "monitor.network", "harvest.status", "market.offers",
              "onion.circuits"):
        assert readable(m), m
    for m in ("node.stop", "wallet.send", "wallet.new", "fl.start", "fl.export", "fl.stop", "harvest.pause",
              "harvest.set_policy", "harvest.credit", "registry.mark_offline", "market.cancel", "ledger.tx_x"):
        assert not readable(m), m


def test_token_file_is_0600_matches_in_constant_time_and_is_removed(tmp_path: Path) -> None:
    t = AccessToken(tmp_path)
    t.write()
    assert stat.S_IMODE(os.stat(t.path).st_mode) == 0o600
    assert t.path.read_text().strip() == t.value and len(t.value) >= 40
    assert t.matches(t.value) and not t.matches(t.value[:-1] + "x") and not t.matches(None) and not t.matches("")
    assert not t.matches("é" * 43)                       # non-ASCII: refused, no exception
    assert AccessToken(tmp_path).value != t.value        # a new one per start
    other = AccessToken(tmp_path, "another-run")
    other.remove()                                       # not its file: left alone
    assert t.path.exists()
    t.remove()
    assert not t.path.exists()


def test_cookie_and_bearer_headers() -> None:
    assert cookie_token("a=1; fognode_dashboard=tok; b=2") == "tok"
    assert cookie_token(None) is None and cookie_token("fognode_dashboardx=1") is None
    assert bearer_token("Bearer abc") == "abc" and bearer_token("Basic abc") is None and bearer_token("") is None
    c = set_cookie("tok")
    assert "HttpOnly" in c and "SameSite=Strict" in c and c.startswith("fognode_dashboard=tok;")


def test_every_page_and_asset_is_packaged() -> None:
    assets = load_assets()
    for name in ("index.html", "app.js", "api.js", "chart.js", "render.js", "style.css", "about.html",
                 "pages/node.js", "pages/network.js", "pages/ledger.js", "pages/fl.js", "pages/role.js"):
        assert "/assets/" + name in assets, name
    assert "/" in PAGES and "/fl" in PAGES
    index = assets["/assets/index.html"][1].decode()
    assert "<script>" not in index and "style=" not in index   # nothing inline: the CSP forbids it
    assert "http://" not in index and "https://" not in index   # nothing from elsewhere


def test_figures_digest_a_real_registry() -> None:
    reg = CollectorRegistry()
    c = Counter("fognode_node_gossip_messages_in_total", "in", ["topic"], registry=reg)
    c.labels("a").inc(3)
    c.labels("b").inc(4)
    h = Histogram("fognode_node_event_loop_lag_seconds", "lag", buckets=(0.01, 0.1, 1), registry=reg)
    for v in (0.001, 0.002, 0.05, 2.0):
        h.observe(v)
    core = MonitorCore(series_of=None, rules=[], detectors=True, anomaly_cooldown=600, lag_bound=0.5, hook=False)
    f = core.figures(reg.collect(), 123.0, 4.56789)
    assert f["t"] == 123.0 and f["gossip_in"] == 7 and f["gossip_out"] == 0 and f["peers"] == 0
    assert f["loop_lag"]["count"] == 4 and f["loop_lag"]["sum"] == pytest.approx(2.053)
    assert f["loop_lag"]["buckets"] == [[0.01, 2], [0.1, 3], [1.0, 3], [None, 4]]
    assert f["cpu_s"] == 4.568
    # the same reading feeds the sampler: a second tick's rate is the figures' difference
    core.tick(reg.collect(), {}, 0.0, 1.0)
    c.labels("a").inc(10)
    core.tick(reg.collect(), {}, 10.0, 10.0)
    assert core.latest["node.gossip_in_rate"] == (10.0, 1.0)
    assert core.figures(reg.collect(), 124.0, 0)["gossip_in"] == 17


def test_top_model_turns_two_readings_into_rates_lag_and_rounds() -> None:
    def fig(t: float, n_in: int, lag_buckets: list[list[float | None]], count: int, total: float) -> dict:
        return {"t": t, "cpu_s": t / 10, "gossip_in": n_in, "gossip_out": 0, "gossip_drops": 0, "rpc_requests": 0,
                "rpc_seconds": 0, "peers": 1, "dials": 0,
                "loop_lag": {"count": count, "sum": total, "buckets": lag_buckets}}
    m = TopModel()
    m.ingest({"node.info": {"peer_id": "p"}, "monitor.figures": fig(10, 5, [[0.01, 4], [None, 4]], 4, 0.004),
              "fl.sessions": [], "fl.status": {"s1": {"rounds_table": [{"round": 1}]}}}, now=10)
    assert m.lag is None and "gossip_in" not in m.rates
    m.ingest({"monitor.figures": fig(12, 25, [[0.01, 5], [None, 104]], 104, 10.004),
              "fl.status": {"s1": {"rounds_table": [{"round": 1}, {"round": 2}]}}}, now=12)
    assert m.rates["gossip_in"] == 10 and m.rates["cpu"] == pytest.approx(10)
    assert m.lag == (pytest.approx(0.1), 0.01)          # 100 probes, 99 in +Inf: bound is the last finite
    assert [r.row["round"] for r in m.rounds] == [1, 2]  # each round once, as it completes
    assert m.alerts is None                              # no monitor.alerts on that node
    assert delta_lag({"count": 3, "sum": 1, "buckets": []}, {"count": 3, "sum": 1, "buckets": []}) is None
    assert sparkline([0, 1, 2, 4]) == " ▃▅█"          # 0 is blank, the maximum a full block
    # the harvest, market and onion series monitor.metrics reports (none of a role: no line)
    m.ingest({"monitor.metrics": [{"name": "harvest.running", "value": 0.0}, {"name": "harvest.cpu_rate", "value": 0.5},
                                  {"name": "market.offers", "value": 3.0}, {"name": "market.paid_rate", "value": None},
                                  {"name": "onion.socks_rate", "value": None}]})
    assert m.role_lines() == [("harvest", "suspended", "cpu 0.5 cores"), ("market", "3 offers", "")]
