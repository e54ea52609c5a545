// Federated learning: the sessions this node knows; for the chosen one (a row click, else the
// newest) the loss and accuracy of each round's model, the privacy spent (epsilon) per round,
// round durations and the participants, from `fl.status SESSION --verbose`; rounds appear as
// they complete.
import { rpc } from "../api.js";
import { lineChart, barChart, fmtNumber } from "../chart.js";
import { h, card, table, kv, badge, shortId, fmtTime } from "../render.js";

export async function start(ctx) {
  const sessions = h("div"), summary = h("div"), rounds = h("div");
  const charts = { loss: h("div"), accuracy: h("div"), epsilon: h("div"), duration: h("div") };
  ctx.main.replaceChildren(h("h1", {}, "Federated learning"), h("div", { class: "grid" },
    h("section", { class: "card wide" }, h("h2", {}, "Sessions"), sessions),
    card("Session", summary), card("Loss per round", charts.loss), card("Accuracy per round", charts.accuracy),
    card("Privacy spent (ε, cumulative)", charts.epsilon), card("Round duration (s)", charts.duration),
    h("section", { class: "card wide" }, h("h2", {}, "Rounds"), rounds)));
  let chosen = new URLSearchParams(location.hash.slice(1)).get("session");
  let refresh = null;

  async function update() {
    const list = await rpc("fl.sessions");
    if (!chosen && list.length) chosen = list[0].session_id;
    sessions.replaceChildren(table(list, [
      ["session_id", "session", (r) => h("span", { class: "mono", title: r.session_id }, shortId(r.session_id))],
      ["task"], ["strategy"], ["state", "state", (r) => badge(r.state)], ["role"],
      ["started", "started", (r) => fmtTime(r.started)], ["rounds_done", "rounds", (r) => `${r.rounds_done} / ${r.rounds}`],
      ["reason"]], {
      name: "sessions", empty: "no sessions yet (fognode-cli fl start ...)",
      rowAttrs: (r) => ({ class: r.session_id === chosen ? "selected" : "", "data-session": r.session_id }),
      onClick: (r) => { chosen = r.session_id; location.hash = `session=${r.session_id}`; refresh && refresh(); },
    }));
    if (!chosen) {
      summary.replaceChildren(h("p", { class: "muted" }, "No session to show."));
      return;
    }
    const st = await rpc("fl.status", { session: chosen, verbose: true });
    const hist = st.history || [];
    summary.replaceChildren(h("p", {}, badge(st.state), " ", st.reason || ""),
      kv(st, ["session_id", "task", "strategy", "phase", "role", "rounds_done", "rounds", "min_participants",
              "participants_per_round", "secagg", "hierarchical", "epsilon", "delta", "model_hash"]));
    const pts = (key) => hist.filter((r) => r[key] !== null && r[key] !== undefined).map((r) => [r.round, r[key]]);
    const xTicks = (x0, x1) => hist.map((r) => r.round).filter((x) => x >= x0 && x <= x1);
    const roundAxis = { xFormat: (x) => `r${x}`, xTicks, dots: true, empty: "no round completed yet" };
    lineChart(charts.loss, { name: "fl-loss", series: [{ name: "loss", points: pts("loss") },
                                                       { name: "train loss", points: pts("train_loss") }], ...roundAxis });
    lineChart(charts.accuracy, { name: "fl-accuracy", series: [{ name: "accuracy", points: pts("accuracy") }], yMin: 0, ...roundAxis });
    lineChart(charts.epsilon, { name: "fl-epsilon", series: [{ name: "ε", points: pts("epsilon") }], yMin: 0, ...roundAxis,
                                empty: hist.length ? "no differential privacy in this session" : "no round completed yet" });
    barChart(charts.duration, { name: "fl-duration", bars: hist.map((r) => ({ label: `r${r.round}`, value: r.duration || 0 })),
                                empty: "no round completed yet" });
    rounds.replaceChildren(table(hist, [["round"], ["aggregator", "aggregator", (r) => shortId(r.aggregator)],
      ["participants", "participants", (r) => (r.participants || []).map(shortId).join(", ")],
      ["accepted", "accepted", (r) => String((r.accepted || []).length)],
      ["dropped", "dropped", (r) => String((r.dropped || []).length)],
      ["rejected", "rejected", (r) => String(Object.keys(r.rejected || {}).length)],
      ["loss", "loss", (r) => fmtNumber(r.loss)], ["accuracy", "accuracy", (r) => fmtNumber(r.accuracy)],
      ["epsilon", "ε", (r) => fmtNumber(r.epsilon)], ["duration", "duration s", (r) => fmtNumber(r.duration)],
      ["tries"]], { name: "rounds", empty: "no round completed yet" }));
  }
  refresh = () => update().catch(() => {});
  return update;
}
