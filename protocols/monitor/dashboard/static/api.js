// Calls the node's read methods through /api/rpc/<method> (same origin; the HttpOnly cookie
// carries the token). An error answer becomes an ApiError with the HTTP status and the
// node's message.

export class ApiError extends Error {
  constructor(status, error) {
    super(error && error.message ? error.message : `HTTP ${status}`);
    this.status = status;
    this.code = error ? error.code : undefined;
  }
}

export async function rpc(method, params) {
  const q = params === undefined ? "" : "?params=" + encodeURIComponent(JSON.stringify(params));
  const resp = await fetch(`/api/rpc/${method}${q}`, { credentials: "same-origin", cache: "no-store" });
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok || !body || !("result" in body)) throw new ApiError(resp.status, body && body.error);
  return body.result;
}

// Live figures (monitor.figures) turned into time series: a bounded ring of readings, and
// per interval between two readings the rates and the loop lag of that interval.
export class Figures {
  constructor(max = 300) { this.max = max; this.readings = []; }

  add(f) {
    const last = this.readings[this.readings.length - 1];
    if (last && f.t <= last.t) return;
    this.readings.push(f);
    if (this.readings.length > this.max) this.readings.shift();
  }

  // [[t, value], ...] of a gauge figure (e.g. "peers").
  gauge(key) { return this.readings.map((f) => [f.t, f[key]]); }

  // [[t, per second], ...] of a counter figure; a counter that went down (restart) is skipped.
  rate(key, scale = 1) {
    const out = [];
    for (let i = 1; i < this.readings.length; i++) {
      const a = this.readings[i - 1], b = this.readings[i], dt = b.t - a.t, dv = b[key] - a[key];
      if (dt > 0 && dv >= 0) out.push([b.t, (dv / dt) * scale]);
    }
    return out;
  }

  // {mean: [[t, ms]], p99: [[t, ms]]}: the event-loop lag of each interval.
  lag() {
    const mean = [], p99 = [];
    for (let i = 1; i < this.readings.length; i++) {
      const d = deltaLag(this.readings[i - 1].loop_lag, this.readings[i].loop_lag);
      if (d) { mean.push([this.readings[i].t, d.mean * 1000]); p99.push([this.readings[i].t, d.p99 * 1000]); }
    }
    return { mean, p99 };
  }
}

// The lag between two cumulative histogram readings: mean, and the p99 as the upper bound of
// the bucket holding it (the largest finite bound when it is in +Inf). null if no probe ran.
export function deltaLag(a, b) {
  const n = b.count - a.count;
  if (!(n > 0)) return null;
  const before = new Map(a.buckets.map(([le, c]) => [le, c]));
  let p99 = null, lastFinite = 0;
  for (const [le, c] of b.buckets) {
    if (le !== null) lastFinite = le;
    if (p99 === null && c - (before.get(le) || 0) >= 0.99 * n) p99 = le === null ? lastFinite : le;
  }
  return { mean: (b.sum - a.sum) / n, p99: p99 === null ? lastFinite : p99 };
}

// History from monitor.series when the node keeps it (issue 17 item 1: series names like
// "node.peers", "node.loop_lag_mean"; points {t, mean, min, max, count}): the last `seconds`
// of METRIC as [[t, mean * scale], ...], or [] when the node has no history (or refused):
// the page then charts what it polls live.
export async function history(methods, metric, seconds, scale = 1) {
  if (!methods.has("monitor.series")) return [];
  try {
    const r = await rpc("monitor.series", { metric, since: `${Math.ceil(seconds)}s` });
    return (r.points || []).map((p) => [p.t, p.mean * scale]).filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
  } catch (e) {
    return [];
  }
}

// Recorded points first, then the live ones that follow them.
export function joined(past, live) {
  const first = live.length ? live[0][0] : Infinity;
  return past.filter((p) => p[0] < first).concat(live);
}
