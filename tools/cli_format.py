"""What `fognode-cli` prints: result tables, and help rendered from the daemon's `rpc.discover`.

`render` turns a result into a readable table (dict -> key/value rows, list of dicts ->
columns; Unix times under time keys as `2026-12-04 10:31 UTC`, see `cell`); `help_list`, `help_one` and `help_markdown` render the daemon's method descriptions,
wrapped to the terminal width ($COLUMNS, else the terminal's, else 80; Markdown is not
wrapped). Only the standard library is imported: the CLI starts fast.
"""
from __future__ import annotations

import json
import re
import shutil
import textwrap
import time
from pathlib import Path
from typing import Any

USAGE = """\
usage: fognode-cli [--datadir D | --socket PATH] [--json] [--timeout S] COMMAND [ARGS...]

Talk to a running fognode daemon. The commands come from the daemon itself:
  fognode-cli help                 list the daemon's commands, grouped by role
  fognode-cli help COMMAND         a command's usage, parameters and description
                                   (also: fognode-cli COMMAND --help)
  fognode-cli help --markdown      the whole CLI reference as Markdown
  fognode-cli call METHOD [JSON]   raw JSON-RPC call with JSON params (array or object)
  fognode-cli top [--interval S]   full-screen live view of the node (q quits): roles and
                                   health, peers, loop lag, gossip rates, FL rounds, alerts

options (before COMMAND):
  --datadir D     the daemon's data dir; its socket is D/fognode.sock unless
                  $FOGNODE_RPC_SOCKET or [rpc] socket in D/node.toml say otherwise
                  (default: $FOGNODE_DATADIR, else ~/.fognode)
  --socket PATH   the control socket itself (overrides --datadir)
  --json          print the raw JSON result instead of a table (errors as JSON too)
  --timeout S     seconds to wait for the daemon (default 30)
  --version       print fognode-cli's version and exit

exit codes: 0 ok, 1 the daemon returned an error, 2 usage error, 3 no daemon answered
"""



# ---- output ---------------------------------------------------------------------------------

def scalar(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(v, ensure_ascii=False)


# result keys whose numbers are Unix times; the table shows them as UTC text (--json keeps the number)
TIME_KEYS = frozenset({"time", "issued", "expires", "created", "started", "ended", "since", "until",
                       "last_seen", "genesis_time", "valid_until", "deadline"})
_UNIX_RANGE = (1e9, 1e10)    # 2001 .. 2286: a number of seconds, not a duration or a count


def utc_minutes(t: float) -> str:
    """`2026-12-04 10:31 UTC`."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def cell(key: str, v: Any) -> str:
    """`scalar(v)`, except a Unix time under a time key (TIME_KEYS, or a name ending in `_at`)."""
    name = key.rsplit(".", 1)[-1]
    if ((name in TIME_KEYS or name.endswith("_at")) and isinstance(v, (int, float))
            and not isinstance(v, bool) and _UNIX_RANGE[0] <= v < _UNIX_RANGE[1]):
        return utc_minutes(float(v))
    return scalar(v)


def flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as dotted keys; lists of scalars comma-joined; lists of dicts indexed."""
    rows: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            rows += flatten(v, key + ".")
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                rows += flatten(x, f"{key}.{i}.")
        elif isinstance(v, list) and not any(isinstance(x, (dict, list)) for x in v):
            joined = ", ".join(scalar(x) for x in v)  # long lists: one item per line
            rows.append((key, joined if len(joined) <= 60 else "\n".join(scalar(x) for x in v)))
        elif isinstance(v, dict):
            rows.append((key, ""))
        else:
            rows.append((key, cell(key, v)))
    return rows


def kv_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    out = []
    for k, v in rows:
        lines = v.split("\n") or [""]
        out.append(f"{k:<{width}}  {lines[0]}".rstrip())
        out += [f"{'':<{width}}  {ln}".rstrip() for ln in lines[1:]]
    return "\n".join(out)


def columns_table(items: list[dict[str, Any]]) -> str:
    flat = [dict(flatten(x)) for x in items]
    cols: list[str] = []
    for row in flat:
        cols += [c for c in row if c not in cols]
    cells = [[row.get(c, "").replace("\n", ", ") for c in cols] for row in flat]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*cols).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()]
    out += [fmt.format(*r).rstrip() for r in cells]
    return "\n".join(out)


def progress_line(value: Any) -> str:
    """A streaming command's progress value as one line: `round 3  loss 0.41  ...` for a map."""
    if isinstance(value, dict):
        return "  ".join(f"{k} {cell(k, v)}" for k, v in value.items())
    return scalar(value)


def render(result: Any) -> str:
    """A readable table: dict -> key/value rows (a list of maps in it as a table of its own
    after them; a dict of one scalar field is that value alone, for scripts), list of dicts
    -> columns, scalars plainly."""
    if result is None:
        return ""
    if isinstance(result, dict):
        if not result:
            return "(empty)"
        if len(result) == 1:    # one field (`wallet address`): the bare value, for scripts
            (only,) = result.values()
            if not isinstance(only, (dict, list)):
                return scalar(only)
        tables = {k: v for k, v in result.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)}
        rest = {k: v for k, v in result.items() if k not in tables}
        parts = [kv_table(flatten(rest))] if rest else []
        parts += [f"{k}:\n" + textwrap.indent(columns_table(v), "  ") for k, v in tables.items()]
        return "\n".join(parts)
    if isinstance(result, list):
        if not result:
            return "(none)"
        if all(isinstance(x, dict) for x in result):
            return columns_table(result)
        return "\n".join(scalar(x) for x in result)
    return scalar(result)


# ---- help -----------------------------------------------------------------------------------

def command_words(name: str) -> str:
    """How a method is typed as a command: `ledger.state_root` -> `ledger state-root` (the CLI
    accepts underscores too)."""
    return name.replace(".", " ").replace("_", "-")


def type_text(schema: dict[str, Any]) -> str:
    if not schema:
        return "any"
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(c) for c in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(type_text(s) for s in schema["anyOf"])
    t = schema.get("type", "any")
    if t == "array":
        return f"list of {type_text(schema['items'])}" if "items" in schema else "list"
    if t == "object":
        return "object"
    return str(t)


def _by_role(methods: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for name in sorted(methods):
        m = methods[name]
        groups.setdefault(m.get("role") or name.split(".")[0], []).append(m)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0] != "node", kv[0])))


def terminal_width() -> int:
    """Columns to wrap help to: $COLUMNS, else the terminal's, else 80 (never below 40)."""
    return max(40, shutil.get_terminal_size((80, 24)).columns)


def wrap(text: str, width: int, indent: str = "", first: str | None = None) -> list[str]:
    """`text` wrapped to `width`, paragraph by paragraph; lines that start with spaces (code,
    tables, lists in docstrings) are kept as they are."""
    out: list[str] = []
    lead = indent if first is None else first
    for para in text.split("\n\n"):
        if out:
            out.append("")
        lines = para.split("\n")
        if any(ln.startswith((" ", "-", "*")) for ln in lines[1:]):
            out += [(lead if k == 0 else indent) + ln for k, ln in enumerate(lines)]
        else:
            out += textwrap.wrap(" ".join(ln.strip() for ln in lines), width, initial_indent=lead,
                                 subsequent_indent=indent, break_on_hyphens=False) or [lead.rstrip()]
        lead = indent
    return out


def wrap_usage(usage: str, width: int) -> list[str]:
    """`usage: fognode-cli ...` wrapped between its words and [bracketed] groups, never inside one."""
    parts = re.findall(r"\[[^\]]*\]|\S+", f"fognode-cli {usage}")
    lines, line = [], "usage:"
    for part in parts:
        if len(line) + 1 + len(part) > width and line.strip() not in ("usage:", ""):
            lines.append(line)
            line = " " * 6
        line += " " + part
    return lines + [line]


def down_text(m: dict[str, Any]) -> str:
    """`role fl is down since 2026-12-04 10:31:02 UTC: crashed (...)` for an unavailable method."""
    down = m.get("down") or {}
    role = m.get('role') or m['name'].split('.')[0]
    if down.get("disabled"):
        return f"role {role} is disabled on this node: {down.get('reason', '')}"
    since = down.get("since")
    when = f" since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(since))}" \
        if isinstance(since, (int, float)) else ""
    return f"role {role} is down{when}: {down.get('reason', 'not running')}"


def help_list(methods: dict[str, dict[str, Any]], path: Path) -> str:
    out = [USAGE.split("\n\n")[0], "", f"Commands of the daemon at {path}, by role:"]
    width = max(len(n) for n in methods)
    cols = terminal_width()
    for role, ms in _by_role(methods).items():
        down = next((m for m in ms if m.get("down")), None)
        out += [""] + wrap(role + (f" ({down_text(down)})" if down else ""), cols, "  ", "")
        for m in ms:
            summary = ("[down] " if m.get("down") else "") + m["summary"]
            out += wrap(summary, cols, " " * (width + 4), f"  {command_words(m['name']):<{width}}  ")
    out += [""] + wrap("`fognode-cli help COMMAND` (or `COMMAND --help`) shows a command's parameters and "
                       "description; `fognode-cli call METHOD [JSON]` sends a raw JSON-RPC call.", cols)
    return "\n".join(out)


def params_pos(m: dict[str, Any]) -> list[str]:
    return [p["name"] for p in m["params"] if p["positional"]]


def is_flag(schema: dict[str, Any]) -> bool:
    """A boolean param (`bool` or `bool | None`): a flag, `--x` / `--no-x` (as node/rpc/methods.py)."""
    if schema.get("type") == "boolean":
        return True
    arms = schema.get("anyOf", [])
    return bool(arms) and {a.get("type") for a in arms} == {"boolean", "null"}


def param_rows(m: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for p in m["params"]:
        flag = f"--{p['name'].replace('_', '-')}"
        shown = p["name"].upper() if p["positional"] and p["required"] else flag
        kind = type_text(p["schema"])
        if p["required"]:
            note = "required"
        else:
            note = f"default {json.dumps(p.get('default'))}"
            if is_flag(p["schema"]):
                kind = "flag"
                no = f"--no-{p['name'].replace('_', '-')}"
                if p.get("default") is True:
                    shown, note = no, "default true; " + no + " makes it false"
                elif p.get("default") is None:
                    note = f"default unset; {flag} for true, {no} for false"
            elif p["positional"]:
                note += f"; or as argument {params_pos(m).index(p['name']) + 1}"
        rows.append((shown, kind, note))
    return rows


def help_one(m: dict[str, Any]) -> str:
    cols = terminal_width()
    out = wrap_usage(m["usage"], cols) + [""]
    if m.get("down"):
        out += wrap(f"unavailable now: {down_text(m)}", cols) + [""]
    out += wrap(m["description"], cols) + [""]
    rows = param_rows(m)
    if rows:
        w0 = max(len(r[0]) for r in rows)
        w1 = min(max(len(r[1]) for r in rows), 24)
        out.append("parameters:")
        for a, b, c in rows:
            head = f"  {a:<{w0}}  {b:<{w1}}  "
            if len(head) > w0 + w1 + 6:  # a long type: the note goes on its own line
                out.append(head.rstrip())
                head = " " * (w0 + w1 + 6)
            out += wrap(c, cols, " " * (w0 + w1 + 6), head)
        out.append("")
    out += wrap(f"method: {m['name']} (role {m.get('role') or m['name'].split('.')[0]}); "
                f"result: {type_text(m['result']['schema'])}", cols, "  ", "")
    return "\n".join(out)


def help_markdown(disc: dict[str, Any], methods: dict[str, dict[str, Any]]) -> str:
    version = disc.get("info", {}).get("version", "")
    out = ["# fognode-cli reference", "",
           f"Generated with `fognode-cli help --markdown` from a running daemon (fognode {version}).",
           "The commands are the daemon's JSON-RPC methods: `fognode-cli wallet send ADDR 10` calls",
           "`wallet.send`; arguments fill the positional parameters in order, `--name value` the",
           "named ones, `--flag` / `--no-flag` the booleans.", "",
           "```", USAGE.rstrip(), "```", ""]
    for role, ms in _by_role(methods).items():
        out += [f"## {role}", ""]
        for m in ms:
            out += [f"### `fognode-cli {m['usage']}`", "", m["description"], ""]
            rows = param_rows(m)
            if rows:
                out += ["| parameter | type | |", "|---|---|---|"]
                out += [f"| `{a}` | {b} | {c} |" for a, b, c in rows]
                out.append("")
            out += [f"Method `{m['name']}`; result: {type_text(m['result']['schema'])}.", ""]
    return "\n".join(out).rstrip() + "\n"
