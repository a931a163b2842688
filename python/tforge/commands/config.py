"""Run configuration for the `tforge` commands, declared once as dataclasses.

A verb's configuration is a dataclass whose fields are its TOML sections
(`[model]`, `[data]`, `[train]`, ...); each section is a dataclass whose
fields are declared with `setting()`: the default, the --help text, the
allowed choices / range and the command-line flag (e.g. --steps) all live in
the field. Everything else reads the fields: the defaults, the verbs' --help,
TOML validation, `--set section.key=value` parsing and the commented
config.toml written into each run folder.

Resolution order: defaults < --config FILE < flags (--steps, --out, ...) <
--set overrides. A value keeps its field's type (an int key rejects 0.5, a
bool key rejects "yes", a list key takes a single value as a one-element
list); an Optional field accepts `none` on the command line and is left out
of TOML files when unset (TOML has no null).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, TypeVar

Config = Any  # a verb's configuration dataclass instance (sections as attributes)
C = TypeVar("C")
_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """A configuration file or override that cannot be used (says which and why)."""


# ---------------------------------------------------------------- declaring settings

def setting(default: Any, help: str, *, choices: Optional[tuple] = None, min: Optional[float] = None,
            max: Optional[float] = None, flag: Optional[str] = None, metavar: Optional[str] = None,
            repeat: bool = False) -> Any:
    """A config field. flag: its command-line shortcut (e.g. "--steps"); metavar: the flag's
    placeholder; repeat: a list flag given once per item (--prompt a --prompt b) instead of
    taking several values (--data a b)."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "min": min, "max": max,
            "flag": flag, "metavar": metavar, "repeat": repeat}
    if isinstance(default, list):
        return dataclasses.field(default_factory=functools.partial(list, default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def like(source: type, name: str, default: Any = _MISSING, **changes: Any) -> Any:
    """A setting that is `source`'s field `name` (TrainConfig.clip_grad, GPTConfig.n_layer, a
    shared section's field): its help text, choices, range and flag come from there, and its
    default unless one is given; `changes` replace any of them."""
    field = {f.name: f for f in dataclasses.fields(source)}[name]
    if default is _MISSING:
        default = field.default if field.default is not _MISSING else field.default_factory()
    meta = {"help": "", **field.metadata, **changes}
    return setting(default, **meta)


def section(cls: type) -> Any:
    """A verb config's field holding one TOML section."""
    return dataclasses.field(default_factory=cls)


@dataclass(frozen=True)
class Setting:
    """What a config field declares, read from the dataclass."""
    section: str
    name: str
    type: Any            # bool, int, float, str or list
    item_type: Any       # the element type of a list
    optional: bool
    default: Any
    help: str
    choices: Optional[tuple]
    min: Optional[float]
    max: Optional[float]
    flag: Optional[str]
    metavar: Optional[str]
    repeat: bool

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"


def _split_type(tp: Any) -> tuple[Any, Any, bool]:
    """(base type, list item type, optional) of an annotation."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional, tp = len(args) < len(typing.get_args(tp)), args[0]
    if typing.get_origin(tp) is list:
        return list, (typing.get_args(tp) or (Any,))[0], optional
    if tp not in (bool, int, float, str):
        raise TypeError(f"config fields hold bool, int, float, str or list values, not {tp!r}")
    return tp, None, optional


def section_types(config_cls: type) -> dict[str, type]:
    """{section name: section dataclass} of a verb config class."""
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


@functools.cache
def section_settings(section_cls: type, section_name: str) -> tuple[Setting, ...]:
    hints = typing.get_type_hints(section_cls)
    out = []
    for f in dataclasses.fields(section_cls):
        base, item, optional = _split_type(hints[f.name])
        default = f.default if f.default is not _MISSING else f.default_factory()
        m = f.metadata
        out.append(Setting(section_name, f.name, base, item, optional, default, m.get("help") or "",
                           m.get("choices"), m.get("min"), m.get("max"), m.get("flag"), m.get("metavar"),
                           bool(m.get("repeat"))))
    return tuple(out)


def settings(config_cls: type) -> list[Setting]:
    """Every setting of a verb config class, section by section."""
    return [s for name, cls in section_types(config_cls).items() for s in section_settings(cls, name)]


# ---------------------------------------------------------------- values

def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _coerce_scalar(value: Any, tp: Any, where: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        if not _is_number(value):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if tp is float:
            return float(value)
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{where} must be an integer, got {value!r}")
            return int(value)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value  # list items of type Any


def coerce(s: Setting, value: Any, source: str) -> Any:
    """value checked against the setting's type, choices and range (ConfigError naming the key)."""
    where = f"{source}: {s.key}"
    if s.optional and (value is None or (isinstance(value, str) and s.type is not str
                                         and value.strip().lower() == "none")):
        return None
    if value is None:
        raise ConfigError(f"{where} must be set (it has no 'unset' value)")
    if s.type is list:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        value = [_coerce_scalar(v, s.item_type, f"{where} item") for v in items]
        checked = value
    else:
        value = _coerce_scalar(value, s.type, where)
        checked = [value]
    for v in checked:
        if s.choices is not None and v not in s.choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, s.choices))}, got {v!r}")
        if s.min is not None and v < s.min:
            raise ConfigError(f"{where} must be >= {s.min}, got {v!r}")
        if s.max is not None and v > s.max:
            raise ConfigError(f"{where} must be <= {s.max}, got {v!r}")
    return value


def parse_value(text: str) -> Any:
    """A command-line value as TOML would read it (numbers, booleans, lists,
    quoted strings); anything else is taken as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# ---------------------------------------------------------------- building configs

def merge(cfg: C, update: Mapping[str, Mapping[str, Any]], *, source: str, strict: bool = True) -> C:
    """A copy of cfg with update's {section: {key: value}} values, each checked by its field.
    Unknown sections or keys are errors naming the known ones (typos must not pass silently);
    strict=False skips them instead (reading a run folder an other tforge version wrote)."""
    sections = section_types(type(cfg))
    cfg = copy.deepcopy(cfg)  # the result shares no section or list with the config it came from
    changed = {}
    for name, body in update.items():
        if name not in sections:
            if strict:
                raise ConfigError(f"{source}: unknown section [{name}] (known: {', '.join(sections)})")
            continue
        if not isinstance(body, Mapping):
            raise ConfigError(f"{source}: {name} must be a [section] table, got {body!r}")
        known = {s.name: s for s in section_settings(sections[name], name)}
        values = {}
        for key, value in body.items():
            if key not in known:
                if strict:
                    raise ConfigError(f"{source}: unknown key {name}.{key} (known: {', '.join(known)})")
                continue
            values[key] = coerce(known[key], value, source)
        changed[name] = dataclasses.replace(getattr(cfg, name), **values)
    return dataclasses.replace(cfg, **changed)


def from_dict(config_cls: type[C], data: Mapping[str, Mapping[str, Any]], *, source: str,
              strict: bool = True) -> C:
    """The config class's defaults with data's values (see merge)."""
    return merge(config_cls(), data, source=source, strict=strict)


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """{section: {key: value}} of a config (lists copied)."""
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in section_types(type(cfg))}


def load_toml(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    for name, body in data.items():
        if not isinstance(body, dict):
            raise ConfigError(f"config file {p}: top-level key {name!r} must be a [section] table")
        for key, value in body.items():
            if isinstance(value, dict):
                raise ConfigError(f"config file {p}: {name}.{key} is a table; only two levels "
                                  f"([section] key = value) are used")
    return data


def parse_overrides(items: Optional[list[str]]) -> dict[str, dict[str, Any]]:
    """["section.key=value", ...] -> {section: {key: value}} (values as parse_value reads them)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        name, dot, field = key.strip().partition(".")
        if not sep or not dot or not name or not field or "." in field:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        out.setdefault(name, {})[field] = parse_value(value.strip())
    return out


def resolve(config_cls: type[C], config_file: str | os.PathLike | None = None,
            overrides: Optional[list[str]] = None, flags: Optional[Mapping[str, Any]] = None) -> C:
    """defaults < config_file < flags ({"section.key": value}, None values ignored) <
    overrides (["section.key=value", ...])."""
    cfg = config_cls()
    if config_file:
        cfg = merge(cfg, load_toml(config_file), source=str(config_file))
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in (flags or {}).items():
        if value is not None:
            name, _, key = dotted.partition(".")
            nested.setdefault(name, {})[key] = value
    cfg = merge(cfg, nested, source="command line")
    return merge(cfg, parse_overrides(overrides), source="--set")


# ---------------------------------------------------------------- writing

def toml_value(v: Any) -> str:
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
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {type(v).__name__} value {v!r} to TOML")


def dumps(cfg: Config) -> str:
    """TOML text of a config, each line commented with its field's help. An unset
    Optional value is written as a comment (TOML has no null)."""
    lines = []
    for name, cls in section_types(type(cfg)).items():
        lines.append(f"[{name}]")
        body = getattr(cfg, name)
        for s in section_settings(cls, name):
            v = getattr(body, s.name)
            line = f"# {s.name} = (unset)" if v is None else f"{s.name} = {toml_value(v)}"
            lines.append(f"{line:<40}  # {s.help}" if s.help else line)
        lines.append("")
    return "\n".join(lines)


def save(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved configuration atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_text(dumps(cfg), encoding="utf-8")
    os.replace(tmp, p)


__all__ = ["ConfigError", "Setting", "setting", "like", "section", "section_types", "section_settings",
           "settings", "coerce", "parse_value", "merge", "from_dict", "to_dict", "load_toml", "parse_overrides",
           "resolve", "toml_value", "dumps", "save"]
