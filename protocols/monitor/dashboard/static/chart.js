// A small self-written SVG chart module: line charts (one or more series of [x, y] points)
// and bar charts, with "nice" axis ticks, grid lines, a legend and a tooltip per point.
// No dependencies. Each chart's <svg> carries data-chart=<name>; each series' path
// data-series=<name> and data-points=<count>, so tests and people can read what is drawn.

const NS = "http://www.w3.org/2000/svg";
export const COLORS = ["#58a6ff", "#3fb950", "#d29922", "#f85149", "#bc8cff", "#39c5cf"];

function el(name, attrs = {}, parent = null) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}

// About `count` round tick values covering [lo, hi].
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) {
    if (lo === 0) hi = 1;
    else { const d = Math.abs(lo); lo -= d / 2; hi += d / 2; }
  }
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const ticks = [];
  for (let v = Math.floor(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < hi) ticks.push(ticks[ticks.length - 1] + step);
  return ticks;
}

export function fmtNumber(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
  if (Number.isInteger(v)) return String(v);
  return String(Number(v.toPrecision(4)));
}

// Ticks for a time axis (Unix seconds): whole, round steps (1 s, 2 s, 5 s, ... 1 h).
export function timeTicks(t0, t1, count = 5) {
  const step = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400]
    .find((s) => s >= (t1 - t0) / count) || 86400;
  const out = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
  return out;
}

export function fmtClock(t) {
  const d = new Date(t * 1000);
  return d.toTimeString().slice(0, 8);
}

// Draw (or redraw) a line chart into `box` (an element). opts: {name, series: [{name, points,
// color?}], xFormat?, yFormat?, yMin?, height?, empty?: text when there are no points, dots?}.
export function lineChart(box, opts) {
  const W = 560, H = opts.height || 220, L = 52, R = 12, T = 10, B = 28;
  const svg = el("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "data-chart": opts.name });
  const all = opts.series.flatMap((s) => s.points.filter((p) => p[1] !== null && Number.isFinite(p[1])));
  const legend = document.createElement("div");
  legend.className = "legend";
  box.replaceChildren(svg, legend);
  if (!all.length) {
    el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, svg).textContent = opts.empty || "no data yet";
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (!all.length) { x0 = 0; x1 = 1; }
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  let y0 = Math.min(...ys, opts.yMin ?? Infinity), y1 = Math.max(...ys);
  if (!all.length) { y0 = 0; y1 = 1; }
  const yt = niceTicks(y0, y1, 4);
  y0 = yt[0]; y1 = yt[yt.length - 1];
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0 || 1)) * (H - T - B);
  const grid = el("g", { class: "grid" }, svg);
  const yf = opts.yFormat || fmtNumber, xf = opts.xFormat || fmtNumber;
  for (const v of yt) {
    el("line", { x1: L, x2: W - R, y1: sy(v), y2: sy(v) }, grid);
    el("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end" }, svg).textContent = yf(v);
  }
  const xt = opts.xTicks ? opts.xTicks(x0, x1) : opts.xFormat === fmtClock ? timeTicks(x0, x1) : niceTicks(x0, x1, 5).filter((v) => v >= x0 && v <= x1);
  for (const v of xt) el("text", { x: sx(v), y: H - 8, "text-anchor": "middle" }, svg).textContent = xf(v);
  el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }, svg);
  el("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }, svg);
  opts.series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const pts = s.points.filter((p) => p[1] !== null && Number.isFinite(p[1]));
    const d = pts.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    el("path", { d: d || "M0,0", fill: "none", stroke: color, "stroke-width": 2, "data-series": s.name,
                 "data-points": pts.length, "data-values": pts.map((p) => p[1]).join(",") }, svg);
    if (opts.dots || pts.length <= 40) {
      for (const p of pts) {
        const c = el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: color }, svg);
        el("title", {}, c).textContent = `${s.name} ${xf(p[0])}: ${yf(p[1])}`;
      }
    }
    const item = document.createElement("span");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = color;
    item.append(sw, `${s.name}${pts.length ? " " + yf(pts[pts.length - 1][1]) : ""}`);
    legend.appendChild(item);
  });
  return svg;
}

// Bars: opts {name, bars: [{label, value}], yFormat?, height?}.
export function barChart(box, opts) {
  const W = 560, H = opts.height || 200, L = 52, R = 12, T = 10, B = 28;
  const svg = el("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "data-chart": opts.name });
  box.replaceChildren(svg);
  const vals = opts.bars.map((b) => b.value);
  if (!vals.length) {
    el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, svg).textContent = opts.empty || "no data yet";
    return svg;
  }
  const yt = niceTicks(Math.min(0, ...vals), Math.max(...vals), 4);
  const y0 = yt[0], y1 = yt[yt.length - 1];
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0 || 1)) * (H - T - B);
  const yf = opts.yFormat || fmtNumber;
  const grid = el("g", { class: "grid" }, svg);
  for (const v of yt) {
    el("line", { x1: L, x2: W - R, y1: sy(v), y2: sy(v) }, grid);
    el("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end" }, svg).textContent = yf(v);
  }
  const bw = (W - L - R) / opts.bars.length;
  const g = el("g", { "data-series": opts.name, "data-points": opts.bars.length }, svg);
  opts.bars.forEach((b, i) => {
    const x = L + i * bw + bw * 0.15, top = sy(Math.max(0, b.value)), bottom = sy(Math.min(0, b.value));
    const r = el("rect", { x, y: top, width: bw * 0.7, height: Math.max(1, bottom - top), fill: opts.color || COLORS[0] }, g);
    el("title", {}, r).textContent = `${b.label}: ${yf(b.value)}`;
    if (opts.bars.length <= 30) {
      el("text", { x: x + bw * 0.35, y: H - 8, "text-anchor": "middle" }, svg).textContent = b.label;
    }
  });
  el("line", { x1: L, x2: W - R, y1: sy(0), y2: sy(0), class: "axis" }, svg);
  return svg;
}

// This node in the middle, its peers on a circle (grouped by region, sorted), edges labelled
// with latency. peers: [{id, label, region, latency_ms}].
export function peerGraph(box, self, peers) {
  const W = 560, H = 300, cx = W / 2, cy = H / 2, r = Math.min(W, H) / 2 - 40;
  const svg = el("svg", { class: "chart graph", viewBox: `0 0 ${W} ${H}`, role: "img", "data-chart": "peers-graph",
                          "data-points": peers.length });
  box.replaceChildren(svg);
  const sorted = [...peers].sort((a, b) => (a.region || "").localeCompare(b.region || "") || a.id.localeCompare(b.id));
  const regions = [...new Set(sorted.map((p) => p.region || "no region"))];
  sorted.forEach((p, i) => {
    const a = (2 * Math.PI * i) / Math.max(1, sorted.length) - Math.PI / 2;
    const x = cx + r * Math.cos(a), y = cy + r * Math.sin(a);
    el("line", { x1: cx, y1: cy, x2: x, y2: y }, svg);
    if (p.latency_ms !== null && p.latency_ms !== undefined) {
      el("text", { x: (cx + x) / 2, y: (cy + y) / 2 - 3, "text-anchor": "middle" }, svg).textContent = `${fmtNumber(p.latency_ms)} ms`;
    }
    const color = COLORS[regions.indexOf(p.region || "no region") % COLORS.length];
    const c = el("circle", { cx: x, cy: y, r: 9, fill: color, "data-peer": p.id }, svg);
    el("title", {}, c).textContent = `${p.id} (${p.region || "no region"})`;
    el("text", { x, y: y + (y < cy ? -13 : 21), "text-anchor": "middle" }, svg).textContent = p.label;
  });
  const me = el("circle", { cx, cy, r: 13, fill: "#c9d1d9" }, svg);
  el("title", {}, me).textContent = self;
  el("text", { x: cx, y: cy + 28, "text-anchor": "middle" }, svg).textContent = "this node";
  if (!peers.length) el("text", { x: cx, y: cy - 24, "text-anchor": "middle", class: "empty" }, svg).textContent = "no peers connected";
  const legend = document.createElement("div");
  legend.className = "legend";
  regions.forEach((reg, i) => {
    const item = document.createElement("span");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = COLORS[i % COLORS.length];
    item.append(sw, reg);
    legend.appendChild(item);
  });
  box.appendChild(legend);
  return svg;
}
