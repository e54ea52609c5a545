// Small DOM helpers: elements, key/value lists, tables, badges, formatting.

export function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

export function card(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

export function shortId(id) {
  return typeof id === "string" && id.length > 16 ? `${id.slice(0, 8)}…${id.slice(-6)}` : String(id);
}

export function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${hh}h` : hh ? `${hh}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

export function fmtTime(t) {
  return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–";
}

export function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(5)));
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (Array.isArray(v)) return v.length && typeof v[0] !== "object" ? v.map(fmt).join(", ") : `${v.length} items`;
  if (typeof v === "object") return Object.entries(v).map(([k, x]) => `${k}: ${fmt(x)}`).join("; ");
  return String(v);
}

export function badge(text) {
  const t = String(text);
  const cls = /^(ok|healthy|online|completed|running|yes|true)$/.test(t) ? "ok"
    : /^(degraded|starting|suspended|paused|stale)$/.test(t) ? "warn"
    : /^(unhealthy|offline|failed|stopped|error|no|false|down)$/.test(t) ? "bad" : "";
  return h("span", { class: `badge ${cls}` }, t);
}

export function kv(obj, keys = null) {
  const dl = h("dl", { class: "kv" });
  for (const k of keys || Object.keys(obj)) {
    if (!(k in obj)) continue;
    dl.append(h("dt", {}, k.replace(/_/g, " ")), h("dd", {}, fmt(obj[k])));
  }
  return dl;
}

// A table of objects: columns are [key, title?, cell(row)?].
export function table(rows, columns = null, opts = {}) {
  if (!rows.length) return h("p", { class: "muted" }, opts.empty || "none");
  const cols = columns || [...new Set(rows.flatMap((r) => Object.keys(r)))].map((k) => [k]);
  const head = h("tr", {}, cols.map(([k, title]) => h("th", {}, title || k.replace(/_/g, " "))));
  const body = rows.map((r) => {
    const tr = h("tr", opts.rowAttrs ? opts.rowAttrs(r) : {},
      cols.map(([k, , cell]) => {
        const v = cell ? cell(r) : fmt(r[k]);
        return h("td", { class: typeof r[k] === "number" && !cell ? "num" : "" }, v);
      }));
    if (opts.onClick) { tr.classList.add("selectable"); tr.addEventListener("click", () => opts.onClick(r)); }
    return tr;
  });
  return h("table", { "data-table": opts.name || "" }, h("thead", {}, head), h("tbody", {}, body));
}

// Any JSON value as something readable: objects as key/values (lists of objects inside as
// tables), lists of objects as a table.
export function generic(v) {
  if (Array.isArray(v) && v.length && v.every((x) => x && typeof x === "object" && !Array.isArray(x))) return table(v);
  if (v && typeof v === "object" && !Array.isArray(v)) {
    const simple = {}, nested = [];
    for (const [k, x] of Object.entries(v)) {
      if (Array.isArray(x) && x.length && typeof x[0] === "object") nested.push(h("h3", { class: "muted" }, k), table(x));
      else simple[k] = x;
    }
    return h("div", {}, kv(simple), ...nested);
  }
  return h("p", {}, fmt(v));
}
