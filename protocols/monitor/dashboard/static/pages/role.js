// The page of a role without a page of its own (harvest, market, onion): first a chart of each
// series the monitor records for the role (monitor.metrics names "<role>.*": harvest state,
// suspensions, CPU and fuel; market offers, contracts, payments, fuel, refusals; onion circuits,
// build time, cells, bytes, SOCKS), the last hour from monitor.series, or the values polled
// while the page is open when the node keeps no history; then every read method of the role
// that needs no argument (the allow-list on the node decides), each shown as key/values and
// tables, with a `state` field kept as a timeline of its changes.
import { rpc, history } from "../api.js";
import { lineChart, fmtClock } from "../chart.js";
import { h, card, generic, table, fmtTime } from "../render.js";

const HISTORY_S = 3600;
const READ_VERBS = new Set(["status", "info", "stats", "show", "list", "sessions", "policy", "history", "offers",
  "requests", "contracts", "agreements", "payments", "jobs", "book", "circuits", "services", "relays", "descriptors"]);

export function forRole(role, disc) {
  const methods = disc.methods.filter((m) => m.role === role && READ_VERBS.has(m.name.split(".")[1])
                                            && m.params.every((p) => !p.required));
  return {
    async start(ctx) {
      const boxes = methods.map((m) => ({ m, body: h("div"), chart: h("div"), series: new Map(), states: [] }));
      const recorded = ctx.methods.has("monitor.metrics")
        ? (await rpc("monitor.metrics")).filter((s) => s.name.startsWith(role + ".")) : [];
      const charts = recorded.map((s) => ({ s, box: h("div"), live: [] }));
      ctx.main.replaceChildren(h("h1", {}, role[0].toUpperCase() + role.slice(1)),
        charts.length ? h("div", { class: "grid", "data-section": "recorded" }, charts.map((c) =>
          card(`${c.s.help}${c.s.unit ? ` (${c.s.unit})` : ""}`, c.box))) : "",
        boxes.length ? h("div", { class: "grid" }, boxes.map((b) =>
          card(`${b.m.name} — ${b.m.summary}`, b.body, b.chart)))
          : h("p", { class: "muted" }, `The ${role} role has no read method this page can show.`));
      return async () => {
        const now = Date.now() / 1000;
        if (charts.length) {
          const latest = new Map((await rpc("monitor.metrics")).map((s) => [s.name, s]));
          await Promise.all(charts.map(async (c) => {
            const l = latest.get(c.s.name);
            if (l && l.value !== null && (!c.live.length || c.live[c.live.length - 1][0] < l.at)) c.live.push([l.at, l.value]);
            if (c.live.length > 1800) c.live.shift();
            const past = await history(ctx.methods, c.s.name, HISTORY_S);
            lineChart(c.box, { name: `series-${c.s.name}`, series: [{ name: c.s.name.split(".")[1], points: past.length ? past : c.live }],
                               yMin: 0, empty: "no sample yet", xFormat: fmtClock });
          }));
        }
        await Promise.all(boxes.map(async (b) => {
          const r = await rpc(b.m.name);
          const parts = [generic(r)];
          if (r && typeof r === "object" && !Array.isArray(r)) {
            for (const [k, v] of Object.entries(r)) {
              if (typeof v === "number" && Number.isFinite(v)) {
                if (!b.series.has(k)) b.series.set(k, []);
                const s = b.series.get(k);
                s.push([now, v]);
                if (s.length > 900) s.shift();
              }
            }
            if (typeof r.state === "string" && (!b.states.length || b.states[b.states.length - 1].state !== r.state)) {
              b.states.push({ since: now, state: r.state, reason: r.reason || r.why || "" });
            }
          }
          if (b.states.length) parts.push(h("h3", { class: "muted" }, "state while this page was open"),
            table(b.states.map((s) => ({ ...s, since: fmtTime(s.since) }))));
          b.body.replaceChildren(...parts);
          if (b.series.size) {
            lineChart(b.chart, { name: `${b.m.name}-figures`, series: [...b.series].slice(0, 6).map(([name, points]) => ({ name, points })),
                                 xFormat: fmtClock });
          }
        }));
      };
    },
  };
}
