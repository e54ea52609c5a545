// The node: roles' health, peers as a graph (coloured by region), and live charts of peers,
// event-loop lag, gossip rates, CPU and RPC requests (monitor.figures, polled; the ten minutes
// before the page opened from monitor.series when the node keeps history), and the alerts
// (monitor.alerts) when the node has them.
import { rpc, Figures, history, joined } from "../api.js";
import { lineChart, peerGraph, fmtClock } from "../chart.js";
import { h, card, table, badge, shortId, fmtDuration } from "../render.js";

const WINDOW_S = 600;

export async function start(ctx) {
  const roles = h("div"), graph = h("div"), stats = h("div", { class: "stats" });
  const charts = { peers: h("div"), lag: h("div"), gossip: h("div"), cpu: h("div"), rpc: h("div") };
  ctx.main.replaceChildren(h("h1", {}, "This node"), h("div", { class: "grid" },
    card("Roles and health", stats, roles), card("Peers", graph),
    card("Peers over time", charts.peers), card("Event-loop lag (ms)", charts.lag),
    card("Gossip messages per second", charts.gossip), card("CPU (% of one core)", charts.cpu),
    card("Control-socket requests per second", charts.rpc)));
  const alerts = h("div");
  if (ctx.methods.has("monitor.alerts")) ctx.main.querySelector(".grid").prepend(card("Alerts", alerts));
  const figs = new Figures(WINDOW_S / 2);
  // what the node recorded before the page opened (monitor.series), charted before the live points
  const names = { peers: ["node.peers", 1], lag_mean: ["node.loop_lag_mean", 1000], lag_p99: ["node.loop_lag_p99", 1000],
                  gossip_in: ["node.gossip_in_rate", 1], gossip_out: ["node.gossip_out_rate", 1],
                  gossip_drops: ["node.gossip_drops_rate", 1], rpc: ["node.rpc_requests_rate", 1] };
  const past = Object.fromEntries(await Promise.all(Object.entries(names).map(async ([k, [metric, scale]]) =>
    [k, await history(ctx.methods, metric, WINDOW_S, scale)])));
  const xf = { xFormat: fmtClock };

  return async (info) => {
    const [health, peers, devices, f, al] = await Promise.all([
      rpc("monitor.health"), rpc("node.peers"),
      ctx.methods.has("registry.devices") ? rpc("registry.devices") : Promise.resolve([]),
      rpc("monitor.figures"), ctx.methods.has("monitor.alerts") ? rpc("monitor.alerts") : Promise.resolve(null)]);
    if (al) {
      alerts.replaceChildren(table(al.firing || [], [["rule"], ["severity", "severity", (r) => badge(r.severity)],
        ["condition"], ["value"], ["since", "since", (r) => fmtClock(r.since)]], { name: "alerts", empty: "no alert firing" }),
        h("h3", { class: "muted" }, "recent"),
        table(al.recent || [], [["rule"], ["severity"], ["condition"], ["since", "since", (r) => fmtClock(r.since)],
          ["resolved_at", "resolved", (r) => r.resolved_at ? fmtClock(r.resolved_at) : "–"]], { name: "alerts-recent", empty: "none" }));
    }
    figs.add(f);
    stats.replaceChildren(
      h("div", {}, h("div", { class: "muted" }, "status"), badge(health.status)),
      h("div", {}, h("div", { class: "muted" }, "peers"), h("div", { class: "big", "data-figure": "peers" }, String(health.peers))),
      h("div", {}, h("div", { class: "muted" }, "uptime"), h("div", { class: "big" }, fmtDuration(health.uptime_s))));
    const rows = Object.entries(health.roles).map(([name, r]) => ({ name, ...r }));
    roles.replaceChildren(table(rows, [["name", "role"], ["health", "health", (r) => badge(r.health)],
      ["detail", "detail"], ["restarts", "restarts"]], { name: "roles" }));
    const region = new Map(devices.map((d) => [d.peer, d.region]));
    peerGraph(graph, info.peer_id, peers.map((p) => ({ id: p.peer_id, label: shortId(p.peer_id),
      region: region.get(p.peer_id) || "", latency_ms: p.latency_ms })));
    lineChart(charts.peers, { name: "peers", series: [{ name: "peers", points: joined(past.peers, figs.gauge("peers")) }], yMin: 0, ...xf });
    const lag = figs.lag();
    lineChart(charts.lag, { name: "loop-lag", series: [{ name: "mean", points: joined(past.lag_mean, lag.mean) },
                                                       { name: "p99 ≤", points: joined(past.lag_p99, lag.p99) }],
                            yMin: 0, empty: "two readings needed", ...xf });
    lineChart(charts.gossip, { name: "gossip", series: [{ name: "in", points: joined(past.gossip_in, figs.rate("gossip_in")) },
      { name: "out", points: joined(past.gossip_out, figs.rate("gossip_out")) },
      { name: "dropped", points: joined(past.gossip_drops, figs.rate("gossip_drops")) }],
      yMin: 0, empty: "two readings needed", ...xf });
    lineChart(charts.cpu, { name: "cpu", series: [{ name: "cpu %", points: figs.rate("cpu_s", 100) }], yMin: 0,
                            empty: "two readings needed", ...xf });
    lineChart(charts.rpc, { name: "rpc", series: [{ name: "requests/s", points: joined(past.rpc, figs.rate("rpc_requests")) }], yMin: 0,
                            empty: "two readings needed", ...xf });
  };
}
