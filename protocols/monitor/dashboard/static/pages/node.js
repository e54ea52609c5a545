// The node: roles' health, peers as a graph (coloured by region), and live charts of peers,
// event-loop lag, gossip rates, CPU and RPC requests (monitor.figures, polled; seeded from
// monitor.series when the node keeps history).
import { rpc, Figures, history } from "../api.js";
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
  const figs = new Figures(WINDOW_S / 2);
  const past = ctx.methods.has("monitor.series") ? await history(ctx.methods, "peers", WINDOW_S) : null;
  const withPast = (live) => past && past.length ? past.filter((p) => p[0] < (live[0]?.[0] ?? Infinity)).concat(live) : live;
  const xf = { xFormat: fmtClock };

  return async (info) => {
    const [health, peers, devices, f] = await Promise.all([
      rpc("monitor.health"), rpc("node.peers"),
      ctx.methods.has("registry.devices") ? rpc("registry.devices") : Promise.resolve([]),
      rpc("monitor.figures")]);
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
    lineChart(charts.peers, { name: "peers", series: [{ name: "peers", points: withPast(figs.gauge("peers")) }], yMin: 0, ...xf });
    const lag = figs.lag();
    lineChart(charts.lag, { name: "loop-lag", series: [{ name: "mean", points: lag.mean }, { name: "p99 ≤", points: lag.p99 }],
                            yMin: 0, empty: "two readings needed", ...xf });
    lineChart(charts.gossip, { name: "gossip", series: [{ name: "in", points: figs.rate("gossip_in") },
      { name: "out", points: figs.rate("gossip_out") }, { name: "dropped", points: figs.rate("gossip_drops") }],
      yMin: 0, empty: "two readings needed", ...xf });
    lineChart(charts.cpu, { name: "cpu", series: [{ name: "cpu %", points: figs.rate("cpu_s", 100) }], yMin: 0,
                            empty: "two readings needed", ...xf });
    lineChart(charts.rpc, { name: "rpc", series: [{ name: "requests/s", points: figs.rate("rpc_requests") }], yMin: 0,
                            empty: "two readings needed", ...xf });
  };
}
