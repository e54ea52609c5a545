// The wallet and the ledger: balance, stake, supply and the replica's position, the
// committee, the wallet's latest transactions; supply and applied certificates charted.
import { rpc, history } from "../api.js";
import { lineChart, fmtClock } from "../chart.js";
import { h, card, table, kv, shortId } from "../render.js";

export async function start(ctx) {
  const wallet = h("div"), ledger = h("div"), committee = h("div"), hist = h("div");
  const supplyChart = h("div"), appliedChart = h("div");
  ctx.main.replaceChildren(h("h1", {}, "Wallet and ledger"), h("div", { class: "grid" },
    card("Wallet", wallet), card("Ledger", ledger), card("Supply", supplyChart), card("Certificates applied", appliedChart),
    card("Committee", committee), h("section", { class: "card wide" }, h("h2", {}, "Latest transactions"), hist)));
  const supply = await history(ctx.methods, "ledger.supply", 3600, 1e-6);   // recorded in micro-units
  const applied = [];

  return async () => {
    const [bal, li, txs] = await Promise.all([rpc("wallet.balance"), rpc("ledger.info"), rpc("wallet.history", { limit: 50 })]);
    const now = Date.now() / 1000;
    supply.push([now, Number(li.supply)]);
    applied.push([now, li.applied]);
    for (const a of [supply, applied]) if (a.length > 1800) a.shift();
    wallet.replaceChildren(kv(bal, ["address", "balance", "bonded", "next_sequence"]));
    ledger.replaceChildren(kv(li, ["chain_id", "epoch", "validator", "supply", "staked", "applied", "pending", "fee",
                                   "mint_budget", "minted_this_epoch", "state_root"]));
    committee.replaceChildren(table(li.committee, [["address", "address", (r) => h("span", { class: "mono" }, shortId(r.address))],
                                                   ["stake", "stake"]], { name: "committee" }));
    hist.replaceChildren(table(txs, [["tx", "tx", (r) => h("span", { class: "mono", title: r.tx }, shortId(r.tx))],
      ["kind"], ["sender", "from", (r) => shortId(r.sender)], ["recipient", "to", (r) => r.recipient ? shortId(r.recipient) : "–"],
      ["amount"], ["fee"], ["epoch"], ["memo"]], { name: "history", empty: "no transactions yet" }));
    lineChart(supplyChart, { name: "supply", series: [{ name: "supply", points: supply }], xFormat: fmtClock });
    lineChart(appliedChart, { name: "applied", series: [{ name: "applied", points: applied }], yMin: 0, xFormat: fmtClock });
  };
}
