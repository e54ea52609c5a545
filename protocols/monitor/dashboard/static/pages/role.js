// The page of a role that has no page of its own yet (harvest, market, onion): every read
// method of the role that needs no argument (the allow-list on the node decides), each shown
// as key/values and tables; numeric top-level figures are charted while the page is open,
// and a `state` field is kept as a timeline of its changes.
import { rpc } from "../api.js";
import { lineChart, fmtClock } from "../chart.js";
import { h, card, generic, table, fmtTime } from "../render.js";

const READ_VERBS = new Set(["status", "info", "stats", "show", "list", "sessions", "policy", "history", "offers",
  "requests", "contracts", "agreements", "payments", "jobs", "book", "circuits", "services", "relays", "descriptors"]);

export function forRole(role, disc) {
  const methods = disc.methods.filter((m) => m.role === role && READ_VERBS.has(m.name.split(".")[1])
                                            && m.params.every((p) => !p.required));
  return {
    async start(ctx) {
      const boxes = methods.map((m) => ({ m, body: h("div"), chart: h("div"), series: new Map(), states: [] }));
      ctx.main.replaceChildren(h("h1", {}, role[0].toUpperCase() + role.slice(1)),
        boxes.length ? h("div", { class: "grid" }, boxes.map((b) =>
          card(`${b.m.name} — ${b.m.summary}`, b.body, b.chart)))
          : h("p", { class: "muted" }, `The ${role} role has no read method this page can show.`));
      return async () => {
        const now = Date.now() / 1000;
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
