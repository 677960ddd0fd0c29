"""Tables and PNG plots from one or more run directories (with the CSV data behind them)."""

from __future__ import annotations

import csv
import json
import tomllib
from pathlib import Path
from typing import Any

from autofednlp.config import ConfigError
from autofednlp.report.results import human_duration


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's summary and per-round rows; a missing or broken one is a user error."""
    d = Path(run_dir)
    if not (d / "rounds.csv").is_file():
        raise ConfigError(f"{str(d)!r} is not a run directory (no rounds.csv)")
    with open(d / "rounds.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    summary = {}
    if (d / "summary.json").is_file():
        try:
            summary = json.loads((d / "summary.json").read_text(encoding="utf-8"))
        except ValueError:
            raise ConfigError(f"{str(d / 'summary.json')!r} is not valid JSON") from None
    tune = {}
    if (d / "config.toml").is_file():
        try:
            tune = tomllib.loads((d / "config.toml").read_text(encoding="utf-8")).get("tune", {})
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(f"{str(d / 'config.toml')!r} is not valid TOML") from None
    return {"dir": d, "name": d.name, "summary": summary, "rows": rows, "tune": tune}


def _num(v: str | None) -> float | None:
    return float(v) if v not in (None, "") else None


def target_metric(runs: list[dict[str, Any]]) -> str:
    """The metric the runs were judged by (summary's target_metric; accuracy for runs made
    before it existed, or when the runs disagree)."""
    metrics = {r["summary"].get("target_metric", "accuracy") for r in runs}
    return metrics.pop() if len(metrics) == 1 else "accuracy"


METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "f1": "entity F1"}


def accuracy_curve(
    rows: list[dict[str, str]], metric: str = "accuracy"
) -> list[tuple[float, float]]:
    """(simulated seconds, validation `metric`), best so far, in time order: what a user of
    the run could have deployed at each moment (groups of a trial interleave in time)."""
    column = f"val_{metric}"
    points = sorted(
        (_num(r["sim_time_s"]), _num(r[column])) for r in rows if _num(r.get(column)) is not None
    )
    best, out = 0.0, []
    for t, acc in points:
        best = max(best, acc)
        out.append((t, best))
    return out


def trajectory_steps(
    trajectory: list[dict[str, Any]], tune: dict[str, Any]
) -> tuple[list[float], list[int], list[int]]:
    """(simulated seconds, depth, width) steps: the run's starting [tune] configuration at 0 s,
    then each trial's winner from the end of that trial."""
    first = trajectory[0]
    xs = [0.0] + [t["sim_time_s"] for t in trajectory]
    depths = [tune.get("depth", first["depth"])] + [t["depth"] for t in trajectory]
    widths = [tune.get("width", first["width"])] + [t["width"] for t in trajectory]
    return xs, depths, widths


def comparison_table(runs: list[dict[str, Any]]) -> str:
    head = (
        f"{'run':<28} {'config':<22} {'rounds':>6} {'time to target':>15} {'test':>8} "
        f"{'traffic MB':>11} {'energy Wh':>10}"
    )
    lines = [head, "-" * len(head)]
    for run in runs:
        s = run["summary"]
        tta = (s.get("time_to_accuracy") or {}).get("sim_time_s")
        traffic = (s.get("bytes_up", 0) + s.get("bytes_down", 0)) / 1e6
        test = s.get(f"test_{s.get('target_metric', 'accuracy')}")  # the run's target metric
        lines.append(
            f"{run['name'][:28]:<28} {str(s.get('config', '?'))[:22]:<22} "
            f"{s.get('rounds', len(run['rows'])):>6} "
            f"{human_duration(tta) if tta is not None else 'not reached':>15} "
            f"{'-' if test is None else format(test, '.3f'):>8} {traffic:>11.1f} "
            f"{s.get('energy_j', 0) / 3600:>10.3f}"
        )
    return "\n".join(lines)


def write_report(runs: list[dict[str, Any]], out: str | Path) -> list[Path]:
    """accuracy_vs_time.png, trajectory.png, traffic_energy.png and the CSVs behind them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    # tagging runs are plotted by entity F1 (their target metric); the file keeps its name
    metric = target_metric(runs)
    fig, ax = plt.subplots(figsize=(8, 5))
    with open(out / "accuracy_vs_time.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["run", "sim_time_s", f"best_val_{metric}"])
        for run in runs:
            curve = accuracy_curve(run["rows"], metric)
            w.writerows((run["name"], t, a) for t, a in curve)
            if curve:
                ax.step(*zip(*curve), where="post", label=run["name"])
    targets = {r["summary"].get("target_accuracy") for r in runs} - {None}
    for t in targets:
        ax.axhline(t, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set(
        xlabel="simulated time (s)",
        ylabel=f"best validation {METRIC_LABELS.get(metric, metric)} so far",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_time.png", dpi=110)
    plt.close(fig)
    written += [out / "accuracy_vs_time.png", out / "accuracy_vs_time.csv"]

    trajectories = [(r["name"], r["summary"].get("trajectory"), r["tune"]) for r in runs]
    trajectories = [(n, t, tune) for n, t, tune in trajectories if t]
    if trajectories:
        fig, (ax_d, ax_w) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
        seen_d: list[int] = []
        seen_w: list[int] = []
        with open(out / "trajectory.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["run", "trial", "winner", "depth", "width", "sim_time_s"])
            for name, traj, tune in trajectories:
                w.writerows(
                    (name, t["trial"], t["winner"], t["depth"], t["width"], t["sim_time_s"])
                    for t in traj
                )
                xs, depths, widths = trajectory_steps(traj, tune)
                ax_d.step(xs, depths, where="post", label=name)
                ax_w.step(xs, widths, where="post")
                seen_d, seen_w = seen_d + depths, seen_w + widths
        ax_d.set(ylabel="depth")
        ax_w.set(ylabel="width", xlabel="simulated time (s)")
        for ax, seen in ((ax_d, seen_d), (ax_w, seen_w)):  # whole layers and dims
            ax.set_ylim(min(seen) - 0.5, max(seen) + 0.5)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax_d.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "trajectory.png", dpi=110)
        plt.close(fig)
        written += [out / "trajectory.png", out / "trajectory.csv"]

    names = [r["name"] for r in runs]
    traffic = [
        (r["summary"].get("bytes_up", 0) + r["summary"].get("bytes_down", 0)) / 1e6 for r in runs
    ]
    energy = [r["summary"].get("energy_j", 0) / 3600 for r in runs]
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(10, 4))
    ax_t.barh(names, traffic)
    ax_t.set(xlabel="traffic (MB, up + down)", xscale="log")
    ax_e.barh(names, energy)
    ax_e.set(xlabel="energy (Wh)", xscale="log")
    ax_e.set_yticklabels([])
    fig.tight_layout()
    fig.savefig(out / "traffic_energy.png", dpi=110)
    plt.close(fig)
    with open(out / "traffic_energy.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["run", "traffic_mb", "energy_wh"])
        w.writerows(zip(names, traffic, energy))
    written += [out / "traffic_energy.png", out / "traffic_energy.csv"]
    (out / "table.txt").write_text(comparison_table(runs) + "\n", encoding="utf-8")
    written.append(out / "table.txt")
    return written
