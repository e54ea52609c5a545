// The network: every node's last status (monitor.network, gossiped by each node), with its
// registry record (region, type, online) where known; a node not heard from for three
// status intervals shows as offline (the node says so: monitor.network's `offline`); an alert
// rule on the series network.nodes_offline fires on it, shown above the page (app.js).
import { rpc } from "../api.js";
import { barChart } from "../chart.js";
import { h, card, table, badge, shortId, fmtDuration } from "../render.js";

export async function start(ctx) {
  const summary = h("div", { class: "stats" }), list = h("div"), chart = h("div");
  ctx.main.replaceChildren(h("h1", {}, "The network"), h("div", { class: "grid" },
    card("Summary", summary), card("Peers of each node", chart), h("section", { class: "card wide" }, h("h2", {}, "Nodes"), list)));
  const config = await rpc("node.config");
  const interval = (config.protocols.monitor || {}).status_interval || 10;

  return async (info) => {
    const [nodes, devices] = await Promise.all([rpc("monitor.network"),
      ctx.methods.has("registry.devices") ? rpc("registry.devices") : Promise.resolve([])]);
    const dev = new Map(devices.map((d) => [d.peer, d]));
    const rows = nodes.map((n) => {
      const d = dev.get(n.peer_id) || {};
      const state = (n.offline ?? n.seen_s_ago > 3 * interval) ? "offline" : n.healthy ? "healthy" : "degraded";
      return { ...n, state, region: d.region || "", type: d.type || "", me: n.peer_id === info.peer_id };
    });
    const count = (s) => rows.filter((r) => r.state === s).length;
    summary.replaceChildren(...["healthy", "degraded", "offline"].map((s) =>
      h("div", {}, h("div", { class: "muted" }, s), h("div", { class: "big", "data-figure": s }, String(count(s))))));
    list.replaceChildren(table(rows, [
      ["peer_id", "node", (r) => h("span", { class: "mono", title: r.peer_id }, shortId(r.peer_id) + (r.me ? " (this node)" : ""))],
      ["state", "state", (r) => badge(r.state)], ["region", "region"], ["type", "type"], ["peers", "peers"],
      ["uptime_s", "uptime", (r) => fmtDuration(r.uptime_s)], ["version", "version"],
      ["seen_s_ago", "last heard", (r) => `${fmtDuration(r.seen_s_ago)} ago`]], { name: "network" }));
    barChart(chart, { name: "network-peers", bars: rows.map((r) => ({ label: "…" + r.peer_id.slice(-6), value: r.peers })) });
  };
}
