// The dashboard shell: finds the page of the path, adds the pages of the roles this node runs
// (from rpc.discover), shows the alerts firing on this node (monitor.alerts) above every page,
// and refreshes the page every POLL_MS while the tab is visible (one refresh at a time: a slow
// node is never asked twice at once).
import { rpc, ApiError } from "./api.js";
import { fmtClock } from "./chart.js";
import { h, shortId, fmtDuration, fmt } from "./render.js";
import * as nodePage from "./pages/node.js";
import * as networkPage from "./pages/network.js";
import * as ledgerPage from "./pages/ledger.js";
import * as flPage from "./pages/fl.js";
import * as rolePage from "./pages/role.js";

const POLL_MS = 2000;
const PAGES = { "/": nodePage, "/network": networkPage, "/ledger": ledgerPage, "/fl": flPage };
const ROLE_PAGES = ["harvest", "market", "onion"];

function showError(err) {
  let box = document.getElementById("error");
  if (!box) {
    box = h("p", { id: "error", class: "error" });
    document.getElementById("main").prepend(box);
  }
  box.textContent = err instanceof ApiError && err.status === 401
    ? "The node no longer accepts this page's token (it restarted?): open the URL `fognode-cli monitor dashboard` prints."
    : `Could not refresh: ${err.message}`;
  document.getElementById("live").className = "badge bad";
}

function clearError() {
  const box = document.getElementById("error");
  if (box) box.remove();
  document.getElementById("live").className = "badge ok";
}

// The firing alerts as a banner above the page: one line each (rule, severity, condition,
// value, since); empty (and hidden) when none fires.
function showAlerts(firing) {
  const box = document.getElementById("alerts");
  box.dataset.firing = String(firing.length);
  box.replaceChildren(...firing.map((a) => h("div", { class: `alert ${a.severity === "info" ? "warn" : "bad"}`, "data-alert": a.rule },
    h("b", {}, `alert ${a.rule}`), ` (${a.severity}): ${a.condition}; value ${fmt(a.value)}, firing since ${fmtClock(a.since)}`)));
}

async function main() {
  const path = location.pathname.replace(/\/+$/, "") || "/";
  const disc = await rpc("rpc.discover");
  const methods = new Set(disc.methods.map((m) => m.name));
  const nav = document.getElementById("nav");
  for (const role of ROLE_PAGES) {
    if (disc.methods.some((m) => m.role === role)) {
      nav.append(h("a", { href: `/${role}`, "data-page": role }, role[0].toUpperCase() + role.slice(1)));
    }
  }
  for (const a of nav.querySelectorAll("a")) if (a.getAttribute("href") === path) a.classList.add("active");
  document.getElementById("every").textContent = String(POLL_MS / 1000);
  const main = document.getElementById("main");
  let page = PAGES[path];
  const role = path.slice(1);
  if (!page && ROLE_PAGES.includes(role)) page = rolePage.forRole(role, disc);
  if (!page) { main.replaceChildren(h("p", { class: "error" }, `No page ${path}.`)); return; }
  const ctx = { methods, disc, main };
  const update = await page.start(ctx);
  let first = true;
  async function tick() {
    try {
      const [info, alerts] = await Promise.all([rpc("node.info"),
        methods.has("monitor.alerts") ? rpc("monitor.alerts") : Promise.resolve(null)]);
      if (alerts) showAlerts(alerts.firing || []);
      document.getElementById("whoami").textContent =
        `${shortId(info.peer_id)} · v${info.version} · up ${fmtDuration(info.uptime_s)}${info.region ? " · " + info.region : ""}`;
      await update(info);
      clearError();
      if (first) {
        first = false;
        performance.mark("fognode-data");
        document.body.dataset.ready = "1";
      }
    } catch (err) {
      showError(err);
    }
    if (!document.hidden) timer = setTimeout(tick, POLL_MS);
    else timer = null;
  }
  let timer = null;
  document.addEventListener("visibilitychange", () => { if (!document.hidden && timer === null) tick(); });
  tick();
}

main().catch(showError);
