"""The Python API for notebooks and scripts: load a config, run it, look at the results.

    from autofednlp import load_config, run_experiment

    cfg = load_config("configs/default.toml", ["federation.rounds=5"])
    result = run_experiment(cfg, overrides={"federation.engine": "inprocess"})
    result.rounds[["round", "sim_time_s", "val_accuracy"]]   # a pandas DataFrame
    result.best_val_accuracy, result.time_to_target, result.run_dir

The same run directory the command line writes; `load_results(dir)` reads one back
(finished, or interrupted: then `summary` is empty and `finished` is False).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autofednlp.config import ConfigError, ExperimentConfig, load_config, to_dict

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class RunResult:
    """One run's record: its directory, summary (empty until it finished) and config."""

    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    config: ExperimentConfig | None = None

    @property
    def finished(self) -> bool:
        return bool(self.summary)

    @property
    def rounds(self) -> pd.DataFrame:
        """One row per round (per group in AutoFedNLP trials), as in `rounds.csv`."""
        import pandas as pd

        return pd.read_csv(self.run_dir / "rounds.csv")

    @property
    def best_val_accuracy(self) -> float | None:
        """The best validation accuracy of the model the server handed out (never a trial
        candidate's reading): from the summary, or the rows of a run without one."""
        from autofednlp.report.results import is_served

        if self.summary.get("best_val_accuracy") is not None:
            return self.summary["best_val_accuracy"]
        rows = self.rounds
        if "served" in rows:
            rows = rows[rows["served"].map(lambda v: is_served({"served": v}))]
        acc = rows["val_accuracy"].dropna()
        return float(acc.max()) if len(acc) else None

    @property
    def test_accuracy(self) -> float | None:
        return self.summary.get("test_accuracy")

    @property
    def majority_val_accuracy(self) -> float | None:
        """What always predicting the most frequent class scores: the yardstick."""
        return self.summary.get("majority_val_accuracy")

    @property
    def time_to_target(self) -> float | None:
        """Simulated seconds to the target accuracy; None if not reached (or not finished)."""
        return (self.summary.get("time_to_accuracy") or {}).get("sim_time_s")

    def __repr__(self) -> str:
        state = "finished" if self.finished else "not finished"
        best = self.best_val_accuracy
        best_s = "-" if best is None else f"{best:.4f}"
        return f"RunResult({str(self.run_dir)!r}, {state}, best val acc {best_s})"


def _as_overrides(overrides: Sequence[str] | Mapping[str, Any]) -> list[str]:
    """`{"federation.rounds": 3, "data.dataset": "x.csv"}` -> `["federation.rounds=3", ...]`."""
    if isinstance(overrides, Mapping):
        import tomli_w

        return [f"{k}={tomli_w.dumps({'v': v})[4:].strip()}" for k, v in overrides.items()]
    return list(overrides)


def _config(
    config: ExperimentConfig | str | Path | None, overrides: Sequence[str] | Mapping[str, Any]
) -> ExperimentConfig:
    items = _as_overrides(overrides)
    if isinstance(config, ExperimentConfig):
        if not items:
            return config
        # overrides on top of a config object: through the same parser and checks as a file
        from autofednlp.config import from_dict
        from autofednlp.config.loading import apply_overrides

        return from_dict(apply_overrides(_table(config), items))
    return load_config(config, items)


def _table(cfg: ExperimentConfig) -> dict[str, Any]:
    return json.loads(json.dumps(to_dict(cfg)))


def run_experiment(
    config: ExperimentConfig | str | Path | None = None,
    run_dir: str | Path | None = None,
    progress: str | bool = "lines",
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> RunResult:
    """Run an experiment to the end and return its results.

    `config` is an `ExperimentConfig` (from `load_config`), a TOML path, or None for the
    defaults; `overrides` are `section.key=value` strings or a `{"section.key": value}` dict.
    Progress lines go to stderr (`progress="quiet"` for none). A user mistake raises
    `ConfigError` with a one-line message; an interrupted run (KeyboardInterrupt) keeps its
    directory and checkpoint: continue it with `resume_experiment(run_dir)`.
    """
    from autofednlp import run

    cfg = _config(config, overrides)
    summary = run.run_experiment(cfg, None if run_dir is None else str(run_dir), progress)
    return RunResult(Path(summary["run_dir"]), summary, cfg)


def resume_experiment(
    run_dir: str | Path,
    rounds: int | None = None,
    progress: str | bool = "lines",
    time_budget_s: float | None = None,
) -> RunResult:
    """Continue an interrupted run; with `rounds` (more rounds) or `time_budget_s` (a longer
    simulated-time budget, 0 = none), extend a run (finished or not)."""
    from autofednlp import run

    summary = run.resume_experiment(str(run_dir), progress, rounds, time_budget_s)
    return load_results(summary["run_dir"])


def load_results(run_dir: str | Path) -> RunResult:
    """Read a run directory written by `run_experiment` or `autofednlp run`."""
    rd = Path(run_dir)
    if not (rd / "rounds.csv").is_file():
        raise ConfigError(f"{str(rd)!r} is not a run directory (no rounds.csv)")
    summary = {}
    if (rd / "summary.json").is_file():
        summary = json.loads((rd / "summary.json").read_text(encoding="utf-8"))
    cfg = load_config(rd / "config.toml") if (rd / "config.toml").is_file() else None
    return RunResult(rd.resolve(), summary, cfg)


__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "RunResult",
    "load_config",
    "load_results",
    "resume_experiment",
    "run_experiment",
]
