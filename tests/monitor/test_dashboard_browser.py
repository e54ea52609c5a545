"""The dashboard in a real headless Chromium against real daemons: a 2-node devnet runs a short
FL session while the FL page is open, and the loss chart grows to the session's rounds with
the losses `fl.status` reports; every page loads without a console error; the node and
network pages show the peer and both nodes; no token or a wrong one gets 401; a malformed
query parameter gets 400 naming it; the harvest, market and onion pages chart the series the
monitor records for them; a SIGKILLed node shows offline on the other's network page and the
alert rule the test configures on `network.nodes_offline` fires and shows above the page.
Screenshots go to tmp_path (never the repo)."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fognode.tools.devnet import wait_until

from tests.monitor.browser import ConsoleLog, chromium
from tests.monitor.conftest import MonitoredNet

pytestmark = pytest.mark.slow

ROUNDS = 2
OFFLINE_RULE = ('protocols.monitor.alerts=[{name = "nodes-offline", metric = "network.nodes_offline", op = ">=", '
                'threshold = 1, severity = "critical"}]')


def test_pages_and_a_live_fl_session_in_chromium(monitored_net: MonitoredNet, tmp_path: Path) -> None:
    with chromium() as browser:
        net = monitored_net(2, extra_args=["--set", "protocols.fl.tick_interval=0.1",
                                           "--set", "protocols.monitor.status_interval=0.5",
                                           "--set", "protocols.monitor.sample_interval=0.5",
                                           "--set", OFFLINE_RULE])
        coord, other = net.nodes
        wait_until(lambda: any(p["peer_id"] == other.peer_id for p in coord.rpc("node.peers")), timeout=30,
                   what="the two nodes to connect")
        url = coord.rpc("monitor.dashboard")["url"]
        base = url.split("/?", 1)[0]
        ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
        page = ctx.new_page()
        log = ConsoleLog(page)
        assert page.goto(url).status == 200 and urlsplit(page.url).query == ""   # the token left the URL

        sid = coord.rpc("fl.start", {"task": "synthetic", "rounds": ROUNDS, "min_participants": 2,
                                     "participants": 2, "strategy": "fedavg", "deadline": 20.0,
                                     "optin_seconds": 2.0, "dp_clip": 5.0, "dp_noise": 0.5,
                                     "task_params": {"max_samples": 100}})["session_id"]
        page.goto(f"{base}/fl")
        page.wait_for_selector("body[data-ready='1']", state="attached", timeout=20_000)
        # the chart grows as rounds complete (the page polls); then it holds every round
        loss = page.locator(f"svg[data-chart='fl-loss'] path[data-series='loss'][data-points='{ROUNDS}']")
        loss.wait_for(state="attached", timeout=120_000)
        history = coord.rpc("fl.status", {"session": sid, "verbose": True})["history"]
        assert [h["round"] for h in history] == list(range(1, ROUNDS + 1))
        drawn = [float(v) for v in (loss.get_attribute("data-values") or "").split(",")]
        assert drawn == pytest.approx([h["loss"] for h in history])
        acc = page.locator("svg[data-chart='fl-accuracy'] path[data-series='accuracy']")
        assert acc.get_attribute("data-points") == str(ROUNDS)
        assert page.locator("svg[data-chart='fl-epsilon'] path[data-series='ε']").get_attribute(
            "data-points") == str(ROUNDS)                                   # DP on: epsilon per round
        assert page.locator("table[data-table='rounds'] tbody tr").count() == ROUNDS
        assert page.locator(f"table[data-table='sessions'] tr[data-session='{sid}']").count() == 1
        page.screenshot(path=str(tmp_path / "fl.png"), full_page=True)

        page.goto(base + "/")
        page.wait_for_selector("body[data-ready='1']", state="attached", timeout=20_000)
        page.locator(f"svg[data-chart='peers-graph'] circle[data-peer='{other.peer_id}']").wait_for(
            state="attached", timeout=10_000)
        roles = len(node_roles := other.rpc("node.info")["roles"])      # every built-in role runs
        assert page.locator("table[data-table='roles'] tbody tr").count() == roles, node_roles
        # two readings of monitor.figures: the loop-lag chart has a point
        page.locator("svg[data-chart='loop-lag'] path[data-series='mean']:not([data-points='0'])").wait_for(
            state="attached", timeout=20_000)
        page.screenshot(path=str(tmp_path / "node.png"), full_page=True)

        page.goto(base + "/network")
        page.wait_for_selector("body[data-ready='1']", state="attached", timeout=20_000)
        page.locator("[data-figure='healthy']").filter(has_text="2").wait_for(timeout=30_000)
        assert page.locator("table[data-table='network'] tbody tr").count() == 2

        page.goto(base + "/ledger")
        page.wait_for_selector("body[data-ready='1']", state="attached", timeout=20_000)
        assert page.locator("table[data-table='committee'] tbody tr").count() == 2
        page.locator("svg[data-chart='supply'] path[data-series='supply']").wait_for(state="attached")
        page.screenshot(path=str(tmp_path / "ledger.png"), full_page=True)

        # the harvest, market and onion pages chart what the monitor records for them
        for role, series in (("harvest", "running"), ("market", "offers"), ("onion", "circuits_open")):
            page.goto(f"{base}/{role}")
            page.wait_for_selector("body[data-ready='1']", state="attached", timeout=20_000)
            page.locator(f"svg[data-chart='series-{role}.{series}'] path[data-series='{series}']"
                         ":not([data-points='0'])").wait_for(state="attached", timeout=20_000)
            assert page.locator("[data-section='recorded'] svg[data-chart^='series-']").count() >= 4, role
            page.screenshot(path=str(tmp_path / f"{role}.png"), full_page=True)
        assert log.errors == [], log.errors

        # a malformed query parameter: 400 naming it (the browser has the cookie)
        bad = page.goto(f"{base}/api/rpc/fl.status?params=%7Bsession")
        assert bad is not None and bad.status == 400 and "'params'" in bad.text()
        bad = page.goto(f"{base}/api/rpc/fl.sessions?since=1")
        assert bad is not None and bad.status == 400 and "'since'" in bad.text()
        ctx.close()

        # without the cookie: 401 everywhere, and a wrong token does not set one
        stranger = browser.new_context()
        p2 = stranger.new_page()
        for target in ("/", "/fl", "/assets/app.js", "/api/rpc/node.info", "/?token=wrong"):
            r = p2.goto(base + target)
            assert r is not None and r.status == 401, target
        assert stranger.cookies() == []
        stranger.close()

        # SIGKILL the other node: the network page shows it offline (not heard for 3 status intervals)
        ctx = browser.new_context()
        page = ctx.new_page()
        log = ConsoleLog(page)
        page.goto(url)
        page.goto(base + "/network")
        page.locator("[data-figure='healthy']").filter(has_text="2").wait_for(timeout=30_000)
        assert page.locator("#alerts").get_attribute("data-firing") == "0"
        net.kill(1)
        page.locator("[data-figure='offline']").filter(has_text="1").wait_for(timeout=30_000)
        row = page.locator(f"table[data-table='network'] tbody tr:has(span[title='{other.peer_id}'])")
        assert row.locator(".badge").inner_text() == "offline"
        assert page.locator("[data-figure='healthy']").inner_text() == "1"
        # the rule on network.nodes_offline fires, and the page shows it
        banner = page.locator("#alerts [data-alert='nodes-offline']")
        banner.wait_for(timeout=30_000)
        assert "(critical): network.nodes_offline >= 1" in banner.inner_text()
        (fired,) = coord.rpc("monitor.alerts")["firing"]
        assert fired["rule"] == "nodes-offline" and fired["value"] == 1
        page.screenshot(path=str(tmp_path / "offline.png"), full_page=True)
        assert log.errors == [], log.errors
        ctx.close()
