"""Reading and writing the configuration: TOML files, `section.key=value` overrides, help rows."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import tomli_w

from autofednlp.config.sections import AUTO, ConfigError, ExperimentConfig

SECTIONS = {f.name: f.type for f in dataclasses.fields(ExperimentConfig)}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(name: str, value: Any, typ: Any) -> Any:
    """Check one TOML value against a field type; ints are accepted where floats are. A field
    typed `T | str` takes a T or the word `auto` (a default resolved from other sections)."""
    origin = typing.get_origin(typ)
    if origin is types.UnionType:
        if value == AUTO:
            return value
        (other,) = [t for t in typing.get_args(typ) if t is not str]
        try:
            return _coerce(name, value, other)
        except ConfigError as e:
            raise ConfigError(f'{e} or "{AUTO}"') from None
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} = {value!r}: expected a table of name = number")
        return {str(k): _coerce(f"{name}.{k}", v, float) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f'{name} = {value!r}: expected a list, e.g. ["a", "b"]')
        (item,) = typing.get_args(typ)
        return [_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} = {value!r}: expected true or false")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} = {value!r}: expected an integer")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} = {value!r}: expected a number")
        if not math.isfinite(value):  # inf and nan pass every `>` check, then break later
            raise ConfigError(f"{name} = {value!r}: expected a finite number")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} = {value!r}: expected a string")
        return value
    raise TypeError(f"unsupported config type {typ} for {name}")


def _build(cls: type, table: dict[str, Any], prefix: str) -> Any:
    types = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if key not in types:
            known = ", ".join(types)
            raise ConfigError(f"unknown key {full!r} (known: {known})")
        typ = types[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"{full} must be a table ([{full}]), got {value!r}")
            kwargs[key] = _build(typ, value, f"{full}.")
        else:
            kwargs[key] = _coerce(full, value, typ)
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    """An override value is TOML (`3`, `0.5`, `true`, `"x"`, `{a = 1}`); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(table: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set `section.key=value` items into a nested TOML table (a copy)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in table.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. federation.rounds=5")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if any(not p for p in parts):
            raise ConfigError(f"override {item!r}: malformed key {key!r}")
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: '{p}' is not a section")
            node = child
        node[parts[-1]] = _parse_value(text.strip())
    return out


def from_dict(table: dict[str, Any]) -> ExperimentConfig:
    """Build and validate a config from a nested table (unknown keys are errors)."""
    return _build(ExperimentConfig, table, "")


def read_table(path: str | Path | None) -> dict[str, Any]:
    """An experiment TOML file as a table, not yet checked (None: an empty table)."""
    if path is None:
        return {}
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {str(p)!r} is a directory, not a TOML file")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a TOML experiment file (or the defaults when `path` is None) and apply overrides."""
    return from_dict(apply_overrides(read_table(path), list(overrides)))


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_toml(cfg: ExperimentConfig) -> str:
    return tomli_w.dumps(to_dict(cfg))


def describe_fields(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted name, default, help) for every leaf field: the CLI help is built from this."""
    rows = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe_fields(type(value), f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", value, f.metadata.get("help", "")))
    return rows
