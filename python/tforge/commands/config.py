"""Run configuration for the `tforge` commands: embedded defaults, a TOML file
on top, then command-line shortcuts (--steps, --out, ...) and `--set
section.key=value` overrides on top of that. The resolved configuration is
written into the run folder (config.toml) so a run can be reproduced or resumed
with exactly what it used.

A configuration is a two-level dict: {section: {key: value}} with scalar or
list values (what TOML and the command line can both express). A key whose
default is None accepts any value; every other key keeps the type of its
default (an int key rejects 0.5, a bool key rejects "yes", a list key takes a
single value as a one-element list).
"""
from __future__ import annotations

import copy
import json
import math
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping, Optional

Config = dict[str, dict[str, Any]]


class ConfigError(ValueError):
    """A configuration file or override that cannot be used (says which and why)."""


def load_toml(path: str | os.PathLike) -> Config:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    for section, body in data.items():
        if not isinstance(body, dict):
            raise ConfigError(f"config file {p}: top-level key {section!r} must be a [section] table")
        for key, value in body.items():
            if isinstance(value, dict):
                raise ConfigError(f"config file {p}: {section}.{key} is a table; only two levels "
                                  f"([section] key = value) are used")
    return data


def parse_value(text: str) -> Any:
    """A command-line value as TOML would read it (numbers, booleans, lists,
    quoted strings); anything else is taken as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def merge(base: Config, update: Mapping[str, Mapping[str, Any]], *, source: str) -> Config:
    """base with update's values; unknown sections or keys are errors (typos
    must not be silently ignored)."""
    out = copy.deepcopy(base)
    for section, body in update.items():
        if section not in out:
            raise ConfigError(f"{source}: unknown section [{section}] (known: {', '.join(sorted(out))})")
        for key, value in body.items():
            if key not in out[section]:
                raise ConfigError(f"{source}: unknown key {section}.{key} "
                                  f"(known: {', '.join(sorted(out[section]))})")
            default = out[section][key]
            out[section][key] = _coerce(value, default, f"{source}: {section}.{key}")
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """value converted to the type of the default it replaces (None: anything)."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if _is_number(default):
        if not _is_number(value):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if isinstance(default, float):
            return float(value)
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{where} must be an integer, got {value!r}")
            return int(value)
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(default, list):
        return list(value) if isinstance(value, (list, tuple)) else [value]
    return value


def parse_overrides(items: Optional[list[str]]) -> Config:
    out: Config = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name or "." in name:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        out.setdefault(section, {})[name] = parse_value(value.strip())
    return out


def resolve(defaults: Config, config_file: str | os.PathLike | None = None,
            overrides: Optional[list[str]] = None, shortcuts: Optional[Mapping[str, Any]] = None) -> Config:
    """defaults < config_file < shortcuts ({"section.key": value}, None values
    ignored) < overrides (["section.key=value", ...])."""
    cfg = copy.deepcopy(defaults)
    if config_file:
        cfg = merge(cfg, load_toml(config_file), source=str(config_file))
    if shortcuts:
        nested: Config = {}
        for dotted, value in shortcuts.items():
            if value is None:
                continue
            section, _, key = dotted.partition(".")
            nested.setdefault(section, {})[key] = value
        cfg = merge(cfg, nested, source="command line")
    return merge(cfg, parse_overrides(overrides), source="--set")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {type(v).__name__} value {v!r} to TOML")


def dumps(cfg: Config, comments: Optional[Mapping[str, str]] = None) -> str:
    """TOML text of cfg; comments {"section.key": text} are appended to their
    lines. Keys whose value is None are written as comments (TOML has no null)."""
    comments = comments or {}
    lines = []
    for section, body in cfg.items():
        lines.append(f"[{section}]")
        for key, v in body.items():
            note = comments.get(f"{section}.{key}")
            line = f"# {key} = (unset)" if v is None else f"{key} = {_toml_value(v)}"
            lines.append(f"{line:<40}  # {note}" if note else line)
        lines.append("")
    return "\n".join(lines)


def save(cfg: Config, path: str | os.PathLike, comments: Optional[Mapping[str, str]] = None) -> None:
    """Write the resolved configuration atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_text(dumps(cfg, comments), encoding="utf-8")
    os.replace(tmp, p)
