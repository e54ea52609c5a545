"""Configuration: node.toml -> frozen dataclasses, then env overrides, then CLI flags.

Precedence (last wins): dataclass defaults < node.toml < FOGNODE_<SECTION>_<KEY> env vars <
command-line flags (`--set section.key=value` and the named flags of `fognode run`).

Sections: [node], [overlay], [rpc] and one [protocols.<role>] table per role, read
into that role's `Config` dataclass (plus `enabled`). Every problem is a ConfigError naming the
file (or env var / flag) and the key: unknown keys, wrong types, bad multiaddrs, ports out of
range. The documented example of every key with its default is the repo's node.toml (a test
checks it matches these dataclasses).
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, get_args, get_origin, get_type_hints

from fognode.node.errors import ConfigError

ENV_PREFIX = "FOGNODE_"
LOG_LEVELS = ("debug", "info", "warning", "error")
SCHEDULING = ("batch", "normal")    # node/scheduling.py POLICIES (no import: config loads early)


@dataclass(frozen=True)
class NodeSection:
    """[node]: who this node is and how it logs."""

    region: str = ""                 # free-form region label announced to the network, e.g. "eu-west"
    log_level: str = "info"          # debug | info | warning | error
    log_json: bool = False           # JSON lines instead of human-readable logs
    shutdown_grace: float = 3.0      # seconds roles get to stop on SIGINT/SIGTERM
    scheduling: str = "batch"        # batch | normal: Linux CPU policy of the daemon and its children (node/scheduling.py)

    def validate(self, source: str) -> None:
        if self.scheduling not in SCHEDULING:
            raise ConfigError(f"must be one of {', '.join(SCHEDULING)}, got {self.scheduling!r}",
                              source=source, key="node.scheduling")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}",
                              source=source, key="node.log_level")
        if not 0 < self.shutdown_grace <= 60:
            raise ConfigError("must be between 0 and 60 seconds", source=source, key="node.shutdown_grace")


@dataclass(frozen=True)
class RpcSection:
    """[rpc]: the JSON-RPC control socket."""

    socket: str = ""                 # socket path, relative to the data dir; empty: <datadir>/fognode.sock
    max_request: int = 1048576       # bytes; longer request lines are rejected and the client dropped
    idle_timeout: float = 60.0       # seconds a client may stay silent or mid-line before it is dropped
    max_clients: int = 256           # concurrent control-socket clients

    def validate(self, source: str) -> None:
        if not 1024 <= self.max_request <= 64 * 1048576:
            raise ConfigError("must be between 1024 and 67108864 bytes", source=source, key="rpc.max_request")
        if self.idle_timeout <= 0:
            raise ConfigError("must be positive", source=source, key="rpc.idle_timeout")
        if not 1 <= self.max_clients <= 65536:
            raise ConfigError("must be between 1 and 65536", source=source, key="rpc.max_clients")


def _overlay_type() -> type:
    from fognode.node.host import OverlayConfig  # libp2p import deferred to first use
    return OverlayConfig


@dataclass(frozen=True)
class RoleSettings:
    """One [protocols.<name>] table: whether the role runs, and its own Config."""

    enabled: bool
    config: Any


@dataclass(frozen=True)
class Config:
    node: NodeSection
    overlay: Any          # fognode.node.host.OverlayConfig
    rpc: RpcSection
    protocols: Mapping[str, RoleSettings]
    source: str           # where it came from (a path or "embedded defaults")


SECTIONS: dict[str, Any] = {"node": NodeSection, "rpc": RpcSection}


def section_types() -> dict[str, type]:
    return {**SECTIONS, "overlay": _overlay_type()}


# ---------------------------------------------------------------- typed values


def coerce(value: Any, tp: Any, *, source: str, key: str, from_text: bool = False) -> Any:
    """Check (or, for env/flag text, parse) one value against a dataclass field type."""
    origin = get_origin(tp)
    want = _type_name(tp)
    if from_text and isinstance(value, str) and tp is not str:
        value = _parse_text(value, tp, source=source, key=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        (item,) = get_args(tp)[:1] or (Any,)
        if isinstance(value, list):
            return [coerce(v, item, source=source, key=f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict or tp is dict:
        if isinstance(value, Mapping):    # a TOML table, checked by the section's validate()
            return dict(value)
    elif origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, source=source, key=key)
            except ConfigError:
                continue
    elif tp is Any:
        return value
    raise ConfigError(f"must be {want}, got {_value_name(value)}", source=source, key=key)


def _parse_text(text: str, tp: Any, *, source: str, key: str) -> Any:
    """Env vars and --set values are text: parse them as a TOML value, or as a bare string."""
    origin = get_origin(tp)
    if origin in (list, tuple) and not text.lstrip().startswith("["):
        items = [t.strip() for t in text.split(",") if t.strip()]
        (item,) = get_args(tp)[:1] or (str,)
        return [_parse_text(t, item, source=source, key=key) if item is not str else t for t in items]
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if tp is bool and text.lower() in ("yes", "no", "on", "off", "1", "0"):
            return text.lower() in ("yes", "on", "1")
        return text  # coerce() then reports the type mismatch with the original text


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is bool:
        return "a boolean (true/false)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is dict or tp is dict:
        return "a table"
    if origin in (list, tuple):
        args = get_args(tp)
        return f"a list of {_type_name(args[0]).split(' ', 1)[1] if args else 'values'}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    return str(tp)


def _value_name(v: Any) -> str:
    r = repr(v)
    return f"{type(v).__name__} {r if len(r) < 40 else r[:37] + '...'}"


def build_section(cls: type, table: Mapping[str, Any], *, source: str, prefix: str,
                  overrides: Mapping[str, tuple[str, str]] | None = None) -> Any:
    """Build a frozen dataclass from a TOML table plus text overrides {key: (text, origin)}."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"must be a table, got {_value_name(table)}", source=source, key=prefix)
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}",
                          source=source, key=prefix)
    kwargs: dict[str, Any] = {}
    for name, value in table.items():
        kwargs[name] = coerce(value, hints[name], source=source, key=f"{prefix}.{name}")
    for name, (text, origin) in (overrides or {}).items():
        if name not in names:
            raise ConfigError(f"unknown key {name!r} in section [{prefix}]; known: {', '.join(sorted(names))}",
                              source=origin, key=f"{prefix}.{name}")
        kwargs[name] = coerce(text, hints[name], source=origin, key=f"{prefix}.{name}", from_text=True)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e), source=source, key=prefix) from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            if inspect.signature(validate).parameters:
                validate(source)
            else:
                validate()
        except ConfigError as e:
            # the section knows the key, we know where its value came from: the file, or the
            # env var or flag that overrode it (a bad `--listen` is not the file's fault)
            where = _origin(e.key, prefix, overrides, source)
            if e.source is None or (e.source == source and where != source):
                raise ConfigError(e.detail, source=where, key=e.key) from None
            raise
    return obj


def _origin(key: str | None, prefix: str, overrides: Mapping[str, tuple[str, str]] | None,
            source: str) -> str:
    """Where the value of `key` (`prefix.name`, `prefix.name[i]` or deeper) came from: the
    override's origin (an env var, a flag) when one set it, else `source`."""
    if key and overrides and key.startswith(prefix + "."):
        name = key[len(prefix) + 1:].split("[", 1)[0].split(".", 1)[0]
        if name in overrides:
            return overrides[name][1]
    return source


# ---------------------------------------------------------------- loading


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except PermissionError:
        raise ConfigError("permission denied", source=str(path)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", source=str(path)) from None


def env_overrides(environ: Mapping[str, str], sections: set[str], roles: set[str]) -> list[tuple[str, str, str]]:
    """FOGNODE_<SECTION>_<KEY> and FOGNODE_PROTOCOLS_<ROLE>_<KEY> -> [(dotted key, text, origin)].

    FOGNODE_DATADIR and FOGNODE_PASSPHRASE are not config keys and are skipped.
    """
    out = []
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX) or var in ("FOGNODE_DATADIR", "FOGNODE_PASSPHRASE"):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        if rest.startswith("protocols_"):
            rest = rest[len("protocols_"):]
            role = next((r for r in sorted(roles, key=len, reverse=True) if rest.startswith(r + "_")), None)
            if role is None:
                raise ConfigError(f"names no known role (known: {', '.join(sorted(roles))})", source=f"env {var}")
            out.append((f"protocols.{role}.{rest[len(role) + 1:]}", text, f"env {var}"))
            continue
        sec = next((s for s in sections if rest.startswith(s + "_")), None)
        if sec is None:
            raise ConfigError(f"names no config section (known: {', '.join(sorted(sections))})", source=f"env {var}")
        out.append((f"{sec}.{rest[len(sec) + 1:]}", text, f"env {var}"))
    return out


def parse_set_flags(items: list[str]) -> list[tuple[str, str, str]]:
    """`--set section.key=value` -> [(dotted key, text, origin)]."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError("expected section.key=value", source=f"--set {item}")
        k, v = item.split("=", 1)
        out.append((k.strip(), v.strip(), f"--set {item}"))
    return out


def load_config(path: Path | None, *, roles: Mapping[str, type] | None = None,
                environ: Mapping[str, str] | None = None,
                overrides: list[tuple[str, str, str]] | None = None) -> Config:
    """Load node.toml (or embedded defaults when `path` is None), then env, then overrides.

    `roles` maps role name -> its Config dataclass (the daemon passes every known role).
    Raises ConfigError naming the file/env var/flag and the key.
    """
    roles = dict(roles or {})
    source = str(path) if path is not None else "embedded defaults"
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    types_ = section_types()
    known_top = set(types_) | {"protocols"}
    unknown = sorted(set(data) - known_top)
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(known_top))}",
                          source=source)
    pending = list(env_overrides(environ if environ is not None else os.environ, set(types_), set(roles)))
    pending += list(overrides or [])
    by_section: dict[str, dict[str, tuple[str, str]]] = {}
    for dotted, text, origin in pending:
        parts = dotted.split(".")
        if parts[0] == "protocols" and len(parts) == 3:
            sec, key = f"protocols.{parts[1]}", parts[2]
            if parts[1] not in roles:
                raise ConfigError(f"unknown role {parts[1]!r}; known: {', '.join(sorted(roles))}", source=origin)
        elif len(parts) == 2 and parts[0] in types_:
            sec, key = parts
        else:
            raise ConfigError(f"unknown key {dotted!r}: want <section>.<key> or protocols.<role>.<key>",
                              source=origin)
        by_section.setdefault(sec, {})[key] = (text, origin)

    built: dict[str, Any] = {}
    for name, cls in types_.items():
        built[name] = build_section(cls, data.get(name, {}), source=source, prefix=name,
                                    overrides=by_section.get(name))

    ptable = data.get("protocols", {})
    if not isinstance(ptable, Mapping):
        raise ConfigError("must be a table of [protocols.<role>] tables", source=source, key="protocols")
    unknown_roles = sorted(set(ptable) - set(roles))
    if unknown_roles:
        raise ConfigError(f"unknown role(s) {', '.join(unknown_roles)}; known: {', '.join(sorted(roles))}",
                          source=source, key="protocols")
    protocols: dict[str, RoleSettings] = {}
    for role, cfg_cls in roles.items():
        table = dict(ptable.get(role, {})) if isinstance(ptable.get(role, {}), Mapping) else ptable.get(role)
        if not isinstance(table, dict):
            raise ConfigError("must be a table", source=source, key=f"protocols.{role}")
        ov = dict(by_section.get(f"protocols.{role}", {}))
        enabled_raw = table.pop("enabled", True)
        enabled = coerce(enabled_raw, bool, source=source, key=f"protocols.{role}.enabled")
        if "enabled" in ov:
            text, origin = ov.pop("enabled")
            enabled = coerce(text, bool, source=origin, key=f"protocols.{role}.enabled", from_text=True)
        cfg = build_section(cfg_cls, table, source=source, prefix=f"protocols.{role}", overrides=ov)
        protocols[role] = RoleSettings(enabled=enabled, config=cfg)
    return Config(node=built["node"], overlay=built["overlay"], rpc=built["rpc"],
                  protocols=protocols, source=source)


def defaults_as_toml_values(cls: type) -> dict[str, Any]:
    """The defaults of a config dataclass, as they would read back from TOML."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


__all__ = ["Config", "NodeSection", "RpcSection", "RoleSettings", "load_config",
           "parse_set_flags", "build_section", "coerce", "defaults_as_toml_values", "field"]
