"""Tables and PNG plots from one or more run directories (with the CSV data behind them).

Runs are named by their experiment `name` (the config's, not the directory's); a run without
`summary.json` (interrupted, or still going) is reported from its rows."""

from __future__ import annotations

import csv
import json
import tomllib
from itertools import cycle
from pathlib import Path
from typing import Any

from autofednlp.config import ConfigError
from autofednlp.report.results import human_bytes, human_duration, human_energy, is_served

COLOURS = [f"C{i}" for i in range(10)]  # matplotlib's tab10
LINESTYLES = ["-", "--", "-.", ":"]


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's summary and per-round rows; a missing or broken one is a user error."""
    d = Path(run_dir)
    if not (d / "rounds.csv").is_file():
        raise ConfigError(f"{str(d)!r} is not a run directory (no rounds.csv)")
    try:
        with open(d / "rounds.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        raise ConfigError(f"{str(d / 'rounds.csv')!r} cannot be read as CSV") from None
    summary = {}
    if (d / "summary.json").is_file():
        try:
            summary = json.loads((d / "summary.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(f"{str(d / 'summary.json')!r} is not valid JSON") from None
        if not isinstance(summary, dict):
            raise ConfigError(f"{str(d / 'summary.json')!r} is not a run summary")
    config: dict[str, Any] = {}
    if (d / "config.toml").is_file():
        try:
            config = tomllib.loads((d / "config.toml").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(f"{str(d / 'config.toml')!r} is not valid TOML") from None
    name = str(summary.get("name") or config.get("name") or d.name)
    try:
        totals = _totals(rows)
    except (KeyError, ValueError):
        raise ConfigError(f"{str(d / 'rounds.csv')!r} has malformed rows") from None
    return {
        "dir": d,
        "name": name,
        "summary": summary,
        "rows": rows,
        "tune": config.get("tune", {}),
        "config": config,
        "finished": bool(summary),
        "totals": totals,
    }


def _num(v: str | None) -> float | None:
    return float(v) if v not in (None, "") else None


def _totals(rows: list[dict[str, str]]) -> dict[str, Any]:
    """What the rows add up to: a run without `summary.json` is reported from these."""
    return {
        "bytes_up": sum(_num(r.get("bytes_up")) or 0 for r in rows),
        "bytes_down": sum(_num(r.get("bytes_down")) or 0 for r in rows),
        "energy_j": sum(_num(r.get("energy_j")) or 0 for r in rows),
        "sim_time_s": max((_num(r.get("sim_time_s")) or 0 for r in rows), default=0.0),
        "rounds": len({r["round"] for r in rows}),
    }


METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "f1": "entity F1"}


def metric_of(run: dict[str, Any]) -> tuple[str, str]:
    """(row column, axis name) of the run's target metric (summary's `target_metric`, the
    config's for a partial run): entity F1 for tagging, accuracy for runs made before it."""
    metric = run["summary"].get("target_metric") or str(
        run["config"].get("federation", {}).get("target_metric", "accuracy")
    )
    column = f"val_{metric}"
    if metric in METRIC_NAMES and any(r.get(column) not in (None, "") for r in run["rows"]):
        return column, f"validation {METRIC_NAMES[metric]}"
    return "val_accuracy", "validation accuracy"


def value(run: dict[str, Any], key: str) -> Any:
    """`key` from the summary, else from the rows' totals."""
    s = run["summary"]
    return s[key] if s.get(key) is not None else run["totals"].get(key)


def labels_for(runs: list[dict[str, Any]]) -> list[str]:
    """Legend labels: the experiment name; runs sharing one get their configuration, then
    their directory, added."""
    names = [r["name"] for r in runs]
    out = []
    for run, name in zip(runs, names):
        label = name
        if names.count(name) > 1:
            label = f"{name} ({run['summary'].get('config') or run['dir'].name})"
        out.append(label)
    return [
        f"{lab} [{run['dir'].name}]" if out.count(lab) > 1 else lab for lab, run in zip(out, runs)
    ]


def accuracy_curve(
    rows: list[dict[str, str]], column: str = "val_accuracy"
) -> list[tuple[float, float]]:
    """(simulated seconds, validation metric), best so far, in time order: what a user of
    the run could have deployed at each moment, the served model's readings (`is_served`;
    groups of a trial interleave in time, and a trial candidate's reading, or a losing
    group's, was never handed out)."""
    points = sorted(
        (_num(r["sim_time_s"]), _num(r[column]))
        for r in rows
        if _num(r.get(column)) is not None and is_served(r)
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


def time_unit(max_s: float) -> tuple[str, float]:
    """(unit name, seconds per unit) so that an axis up to `max_s` reads in small numbers."""
    if max_s >= 2 * 86400:
        return "days", 86400.0
    if max_s >= 2 * 3600:
        return "h", 3600.0
    if max_s >= 120:
        return "min", 60.0
    return "s", 1.0


def comparison_table(runs: list[dict[str, Any]]) -> str:
    labels = labels_for(runs)
    width = max([len(x) for x in labels] + [3])
    width = min(width, 40)
    head = (
        f"{'run':<{width}} {'config':<22} {'rounds':>6} {'time to target':>15} {'best val':>8} "
        f"{'majority':>8} {'test acc':>8} {'traffic':>10} {'energy':>10}  status"
    )
    lines = [head, "-" * len(head)]
    for run, label in zip(runs, labels):
        s = run["summary"]
        tta = (s.get("time_to_accuracy") or {}).get("sim_time_s")
        traffic = (value(run, "bytes_up") or 0) + (value(run, "bytes_down") or 0)
        test, majority = s.get("test_accuracy"), s.get("majority_val_accuracy")
        column, _ = metric_of(run)
        curve = accuracy_curve(run["rows"], column)
        best = curve[-1][1] if curve else None
        if run["finished"]:
            reached = human_duration(tta) if tta is not None else "not reached"
            status = "finished"
        else:
            reached = "-"
            status = f"partial ({run['totals']['rounds']} rounds, no summary.json)"
        config = str(s.get("config") or (run["rows"][-1].get("config") if run["rows"] else "?"))
        lines.append(
            f"{label[:width]:<{width}} {config[:22]:<22} {value(run, 'rounds'):>6} "
            f"{reached:>15} {_fmt(best):>8} {_fmt(majority):>8} {_fmt(test):>8} "
            f"{human_bytes(traffic):>10} {human_energy(value(run, 'energy_j')):>10}  {status}"
        )
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else format(x, ".3f")


def _styles(n: int) -> list[dict[str, str]]:
    """Colour and line style per run: 10 colours x 4 styles before any pair repeats."""
    pairs = cycle([(c, ls) for ls in LINESTYLES for c in COLOURS])
    return [{"color": c, "linestyle": ls} for c, ls in (next(pairs) for _ in range(n))]


def _legend(ax: Any, n: int) -> None:
    if n > 6:  # many runs: beside the plot, where it hides no curve
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.legend(fontsize=8, loc="best")


def _time_axis(ax: Any, curves: list[list[tuple[float, float]]], max_t: float, per: float) -> None:
    """Linear from 0 when the runs' lengths are comparable; logarithmic, with plain numbers at
    whole decades only, when the shortest run would be a dot at 0 (e.g. adapters beside full
    fine-tuning, which takes 100x longer)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    firsts = [c[0][0] for c in curves if c and c[0][0] > 0]
    ends = [c[-1][0] for c in curves if c]
    if firsts and ends and min(ends) > 0 and max_t / min(ends) > 30:
        ax.set_xscale("log")
        ax.set_xlim(min(firsts) / per / 1.5, max_t / per * 1.5)
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=12))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(0, max_t / per * 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, min_n_ticks=4))


def write_report(runs: list[dict[str, Any]], out: str | Path) -> list[Path]:
    """accuracy_vs_time.png, trajectory.png, traffic_energy.png and the CSVs behind them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    labels = labels_for(runs)
    styles = _styles(len(runs))
    wide = len(runs) > 6

    metrics = {metric_of(r)[1] for r in runs}
    metric_name = metrics.pop() if len(metrics) == 1 else "validation metric"
    curves = [accuracy_curve(r["rows"], metric_of(r)[0]) for r in runs]
    max_t = max((t for c in curves for t, _ in c), default=1.0) or 1.0
    unit, per = time_unit(max_t)
    fig, ax = plt.subplots(figsize=(10 if wide else 8, 5))
    with open(out / "accuracy_vs_time.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        columns = {metric_of(r)[0] for r in runs}  # name the metric when the runs share one
        best = f"best_{columns.pop()}" if len(columns) == 1 else "best_so_far"
        w.writerow(["run", "dir", "sim_time_s", best])
        for run, label, style, curve in zip(runs, labels, styles, curves):
            w.writerows((label, run["dir"].name, t, a) for t, a in curve)
            if curve:
                xs = [t / per for t, _ in curve]
                ys = [a for _, a in curve]
                ax.step(xs, ys, where="post", label=label, linewidth=1.6, **style)
                # where the run ended (a curve stops there, it does not run on)
                ax.plot(xs[-1], ys[-1], marker="o", markersize=4, color=style["color"])
    targets = sorted({r["summary"].get("target_accuracy") for r in runs} - {None})
    if not targets:
        targets = sorted(
            {r["config"].get("federation", {}).get("target_accuracy") for r in runs} - {None}
        )
    for t in targets:
        ax.axhline(t, color="black", linewidth=0.9, linestyle=(0, (6, 3)))
        ax.annotate(
            f"target {t:.2f}",
            (1.0, t),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=8,
        )
    majorities = sorted({r["summary"].get("majority_val_accuracy") for r in runs} - {None})
    for m in majorities:
        ax.axhline(m, color="grey", linewidth=0.8, linestyle=":")
        ax.annotate(
            f"majority class {m:.3f}",
            (0.0, m),
            xycoords=("axes fraction", "data"),
            xytext=(4, 3),
            textcoords="offset points",
            ha="left",
            va="bottom",
            fontsize=8,
            color="dimgrey",
        )
    _time_axis(ax, curves, max_t, per)
    ax.set(xlabel=f"simulated time ({unit})", ylabel=f"best {metric_name} so far")
    ax.grid(True, linewidth=0.4, alpha=0.5)
    if any(curves):
        _legend(ax, len(runs))
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_time.png", dpi=110)
    plt.close(fig)
    written += [out / "accuracy_vs_time.png", out / "accuracy_vs_time.csv"]

    trajectories = [
        (lab, r["summary"].get("trajectory"), r["tune"], st)
        for r, lab, st in zip(runs, labels, styles)
    ]
    trajectories = [x for x in trajectories if x[1]]
    if trajectories:
        max_traj = max(t["sim_time_s"] for _, traj, _, _ in trajectories for t in traj) or 1.0
        t_unit, t_per = time_unit(max_traj)
        fig, (ax_d, ax_w) = plt.subplots(2, 1, figsize=(10 if wide else 8, 5), sharex=True)
        seen_d: list[int] = []
        seen_w: list[int] = []
        with open(out / "trajectory.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["run", "trial", "winner", "depth", "width", "sim_time_s"])
            for name, traj, tune, style in trajectories:
                w.writerows(
                    (name, t["trial"], t["winner"], t["depth"], t["width"], t["sim_time_s"])
                    for t in traj
                )
                xs, depths, widths = trajectory_steps(traj, tune)
                xs = [x / t_per for x in xs]
                ax_d.step(xs, depths, where="post", label=name, **style)
                ax_w.step(xs, widths, where="post", **style)
                seen_d, seen_w = seen_d + depths, seen_w + widths
        ax_d.set(ylabel="depth (layers)")
        ax_w.set(ylabel="width (dims)", xlabel=f"simulated time ({t_unit})")
        for ax, seen in ((ax_d, seen_d), (ax_w, seen_w)):  # whole layers and dims
            ax.set_ylim(min(seen) - 0.5, max(seen) + 0.5)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.grid(True, linewidth=0.4, alpha=0.5)
        ax_w.xaxis.set_major_locator(MaxNLocator(nbins=8, min_n_ticks=4))
        _legend(ax_d, len(trajectories))
        fig.tight_layout()
        fig.savefig(out / "trajectory.png", dpi=110)
        plt.close(fig)
        written += [out / "trajectory.png", out / "trajectory.csv"]

    traffic = [(value(r, "bytes_up") or 0) + (value(r, "bytes_down") or 0) for r in runs]
    energy = [value(r, "energy_j") or 0 for r in runs]
    b_unit, b_per = _scale(max(traffic, default=0), [("GB", 1e9), ("MB", 1e6), ("kB", 1e3)])
    e_unit, e_per = _scale(max(energy, default=0), [("kWh", 3.6e6), ("Wh", 3600.0)], "J")
    height = max(3.0, 0.35 * len(runs) + 1.5)
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(11, height), sharey=True)
    ys = list(range(len(runs)))[::-1]  # first run on top
    colours = [s["color"] for s in styles]
    for ax, values, unit_name, scale, what in (
        (ax_t, traffic, b_unit, b_per, "traffic, up + down"),
        (ax_e, energy, e_unit, e_per, "energy, all clients"),
    ):
        scaled = [v / scale for v in values]
        bars = ax.barh(ys, scaled, color=colours, height=0.6)
        ax.bar_label(bars, labels=[_short(v) for v in scaled], padding=3, fontsize=8)
        ax.set_xlim(0, (max(scaled, default=0) or 1.0) * 1.22)  # room for the labels
        ax.set(xlabel=f"{what} ({unit_name})")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.grid(True, axis="x", linewidth=0.4, alpha=0.5)
    ax_t.set_yticks(ys, labels)
    ax_t.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(out / "traffic_energy.png", dpi=110)
    plt.close(fig)
    with open(out / "traffic_energy.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["run", "dir", "traffic_bytes", "energy_j", "finished"])
        w.writerows(
            (lab, r["dir"].name, t, e, r["finished"])
            for lab, r, t, e in zip(labels, runs, traffic, energy)
        )
    written += [out / "traffic_energy.png", out / "traffic_energy.csv"]
    (out / "table.txt").write_text(comparison_table(runs) + "\n", encoding="utf-8")
    written.append(out / "table.txt")
    return written


def _scale(largest: float, units: list[tuple[str, float]], base: str = "B") -> tuple[str, float]:
    """The largest unit in which `largest` is at least 1 (the base unit below them all)."""
    for name, per in units:
        if largest >= per:
            return name, per
    return base, 1.0


def _short(v: float) -> str:
    """A bar's value label: three significant figures, no exponent."""
    if v == 0:
        return "0"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 0.1:
        return f"{v:.2f}"
    return f"{v:.3g}"
