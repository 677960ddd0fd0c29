"""The experiment as Flower's run config: every `section.key` of the typed config, flat.

`flwr run . --run-config "federation.rounds=5 tune.kind='lora'"` sets the same keys as
`autofednlp run --set`. Flower accepts only keys that the app's `pyproject.toml` declares in
`[tool.flwr.app.config]`, with bool, int, float or str values, so that table lists every field
of `sections.py` with its default (`pyproject_table()` writes it; a test keeps the two in
step). Lists and tables (`data.labels`, `cost.devices`) travel as TOML text in a string.
`config` names an experiment file that the other keys override; `set` takes `;`-separated
overrides (the older form, still accepted).

Flower itself runs no Flower code here: the ServerApp passes in its run config and which keys
the user gave (`Run.override_config`).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tomli_w

from autofednlp.config.loading import (
    apply_overrides,
    describe_fields,
    from_dict,
    read_table,
)
from autofednlp.config.sections import ConfigError, ExperimentConfig

# keys of the run config that are not fields of the experiment
FILE_KEY, SET_KEY = "config", "set"
EXTRA_KEYS = {FILE_KEY: "", SET_KEY: ""}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml(value: Any) -> str:
    """One TOML value, tables inline (`{jetson-tx2 = 1.0}`), as a run config string holds it."""
    if isinstance(value, dict):
        items = (
            f"{k if _BARE_KEY.fullmatch(k) else json.dumps(k)} = {_toml(v)}"
            for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _as_run_value(value: Any) -> bool | int | float | str:
    """A field's value as Flower can carry it: lists and tables as TOML text."""
    return _toml(value) if isinstance(value, list | dict) else value


def run_config_defaults() -> dict[str, bool | int | float | str]:
    """Every experiment field by its dotted name, with its default, as Flower flattens it."""
    return {name: _as_run_value(default) for name, default, _ in describe_fields()}


def pyproject_table() -> str:
    """The `[tool.flwr.app.config]` table of pyproject.toml, sections as subtables."""
    nested: dict[str, Any] = dict(EXTRA_KEYS)
    for name, value in run_config_defaults().items():
        node = nested
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tomli_w.dumps({"tool": {"flwr": {"app": {"config": nested}}}})


def _field_value(name: str, value: Any, default: Any) -> Any:
    """Undo `_as_run_value` for list and table fields; other values go to the config's checks."""
    if isinstance(default, list | dict) and isinstance(value, str):
        try:
            return tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            kind, example = (
                ("a list", '["a", "b"]') if isinstance(default, list) else ("a table", "{x = 1.0}")
            )
            raise ConfigError(
                f"{name} = {value!r}: expected {kind} written as TOML inside a string, "
                f"e.g. {name}='{example}'"
            ) from None
    return value


def _set_nested(table: dict[str, Any], name: str, value: Any) -> None:
    *parents, leaf = name.split(".")
    node = table
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{p} must be a table ([{p}]) in the config file, got {node!r}")
    node[leaf] = value


def experiment_from_run_config(
    run_config: Mapping[str, Any],
    given: Iterable[str] | None = None,
    app_dir: Path | None = None,
) -> ExperimentConfig:
    """Build the experiment a `flwr run` asked for.

    `given`: the keys the user set (Flower's `Run.override_config`); the others hold
    pyproject's defaults and must not override the `config` file. Unknown (None): a key counts
    as given when its value differs from the default. A relative `config` is looked up in the
    submitted app first (`configs/x.toml` is the file the user packed, wherever the SuperLink
    was started), then in the working directory.
    """
    defaults = run_config_defaults()
    typed = {name: default for name, default, _ in describe_fields()}
    unknown = sorted(k for k in run_config if k not in defaults and k not in EXTRA_KEYS)
    if unknown:  # Flower refuses these before a run starts; here for a hand-built run config
        raise ConfigError(f"unknown run config key '{unknown[0]}' (see `autofednlp run --help`)")
    path = str(run_config.get(FILE_KEY, "")) or None
    if path and app_dir is not None and not Path(path).is_absolute():
        if (app_dir / path).is_file():
            path = str(app_dir / path)
    table = read_table(path)  # checked once, with the overrides below
    given = set(given) if given is not None else None
    for name, default in defaults.items():
        if name not in run_config:
            continue
        value = run_config[name]
        if given is None and value == default or given is not None and name not in given:
            continue
        _set_nested(table, name, _field_value(name, value, typed[name]))
    overrides = [s for s in str(run_config.get(SET_KEY, "")).split(";") if s.strip()]
    return from_dict(apply_overrides(table, overrides))


if __name__ == "__main__":  # python -m autofednlp.config.runconfig > the table for pyproject
    print(pyproject_table(), end="")
