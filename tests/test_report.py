"""`report` on run directories as they are found: finished, interrupted, broken; plots read
the way a paper needs them (looked at, and checked here through their matplotlib objects)."""

import csv
import json

import pytest

from autofednlp.cli import main
from autofednlp.report.plots import load_run, write_report
from autofednlp.report.results import ROUND_FIELDS


def _run_dir(path, name, round_s, rounds, bytes_per_round=2e6, summary=True, target=0.9):
    """A synthetic run directory: `rounds` rows `round_s` simulated seconds apart."""
    path.mkdir(parents=True)
    rows = [
        {
            "round": r,
            "config": "bottleneck(d=1,w=8)",
            "sim_time_s": r * round_s,
            "val_accuracy": min(0.95, 0.3 + 0.1 * r),
            "bytes_up": bytes_per_round / 2,
            "bytes_down": bytes_per_round / 2,
            "energy_j": 3600.0 * r / rounds,
        }
        for r in range(1, rounds + 1)
    ]
    with open(path / "rounds.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROUND_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    fed = f"[federation]\ntarget_accuracy = {target}\n"
    (path / "config.toml").write_text(f'name = "{name}"\n{fed}')
    if summary:
        s = {
            "name": name,
            "config": "bottleneck(d=1,w=8)",
            "rounds": rounds,
            "target_accuracy": target,
            "majority_val_accuracy": 0.25,
            "bytes_up": bytes_per_round * rounds / 2,
            "bytes_down": bytes_per_round * rounds / 2,
            "energy_j": sum(r["energy_j"] for r in rows),
            "test_accuracy": 0.8,
        }
        (path / "summary.json").write_text(json.dumps(s))
    return path


@pytest.fixture
def figures(monkeypatch):
    """The figures `write_report` saves, kept for inspection."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    saved = {}
    real = Figure.savefig

    def keep(fig, path, *a, **kw):
        saved[str(path).rsplit("/", 1)[-1]] = fig
        return real(fig, path, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def test_a_run_without_summary_is_reported_from_its_rows(tmp_path, capsys):
    done = _run_dir(tmp_path / "adapters-20261130-101010", "adapters", 10.0, 4)
    cut = _run_dir(tmp_path / "x", "full-ft", 10.0, 3, bytes_per_round=100e6, summary=False)
    assert main(["report", str(done), str(cut)]) == 0
    out = capsys.readouterr().out.splitlines()
    (row,) = [line for line in out if line.startswith("full-ft")]
    assert "300.00 MB" in row and "2.00 Wh" in row and "partial (3 rounds" in row
    assert any(line.startswith("adapters ") for line in out)  # the name, not the directory


def test_report_names_a_bad_directory_and_reports_the_others(tmp_path, capsys):
    good = _run_dir(tmp_path / "good", "good", 1.0, 2)
    assert main(["report", str(tmp_path / "nope"), str(good), str(tmp_path)]) == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and "nope" in errors[0] and str(tmp_path) in errors[1]
    assert any(line.startswith("good") for line in captured.out.splitlines())


def test_time_axis_unit_follows_the_run_length():
    from autofednlp.report.plots import time_unit

    assert time_unit(30) == ("s", 1.0)
    assert time_unit(600) == ("min", 60.0)
    assert time_unit(5 * 3600) == ("h", 3600.0)


def test_accuracy_plot_reads_at_any_run_length(tmp_path, figures):
    short = _run_dir(tmp_path / "a", "short-run", 0.5, 2)
    runs = [load_run(short)]
    write_report(runs, tmp_path / "out1")
    ax = figures["accuracy_vs_time.png"].axes[0]
    assert ax.get_xscale() == "linear" and len(ax.get_xticks()) >= 4  # not one lonely tick
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["short-run"]
    texts = [t.get_text() for t in ax.texts]
    assert "target 0.90" in texts and "majority class 0.250" in texts

    long = _run_dir(tmp_path / "b", "long-run", 900.0, 10)
    write_report([load_run(short), load_run(long)], tmp_path / "out2")
    ax = figures["accuracy_vs_time.png"].axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "simulated time (h)"
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all("^" not in x and "times" not in x for x in labels), labels


def test_many_runs_get_distinct_styles_and_same_named_runs_distinct_labels(tmp_path, figures):
    runs = [load_run(_run_dir(tmp_path / f"r{i}", f"method-{i}", 1.0 + i, 3)) for i in range(12)]
    runs += [load_run(_run_dir(tmp_path / "dup", "method-0", 2.0, 3))]
    write_report(runs, tmp_path / "out")
    ax = figures["accuracy_vs_time.png"].axes[0]
    legend = ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert len(set(texts)) == 13
    styles = {(str(h.get_color()), str(h.get_linestyle())) for h in legend.legend_handles}
    assert len(styles) == 13


def test_traffic_and_energy_bars_start_at_zero_in_readable_units(tmp_path, figures):
    small = _run_dir(tmp_path / "a", "adapters", 1.0, 3, bytes_per_round=50e3)
    big = _run_dir(tmp_path / "b", "full", 1.0, 3, bytes_per_round=3e9)
    write_report([load_run(small), load_run(big)], tmp_path / "out")
    ax_t, ax_e = figures["traffic_energy.png"].axes
    assert ax_t.get_xscale() == "linear" and ax_t.get_xlim()[0] == 0
    assert ax_t.get_xlabel() == "traffic, up + down (GB)"
    assert ax_e.get_xlabel() == "energy, all clients (Wh)"
    values = [t.get_text() for t in ax_t.texts]
    assert sorted(values) == ["0.00015", "9.00"]  # 3 x 50 kB and 3 x 3 GB, in GB


def test_the_plot_shows_f1_where_the_runs_target_is_f1(tmp_path, figures):
    d = _run_dir(tmp_path / "ner", "tagging", 1.0, 3)
    with open(d / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["val_f1"] = "0.5"
    with open(d / "rounds.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*ROUND_FIELDS, "val_f1"])
        w.writeheader()
        w.writerows(rows)
    (d / "config.toml").write_text('name = "tagging"\n[federation]\ntarget_metric = "f1"\n')
    write_report([load_run(d)], tmp_path / "out")
    ax = figures["accuracy_vs_time.png"].axes[0]
    assert ax.get_ylabel() == "best validation entity F1 so far"
    assert [y for _, y in ax.lines[0].get_xydata()][-1] == 0.5


def test_progress_best_follows_the_served_model_only(capsys):
    """A background trial's probe readings are printed, but "best" stays the best reading of
    the model the server would hand out; group names line up in their column."""
    from autofednlp.report.progress import ProgressPrinter

    printer = ProgressPrinter(total_rounds=3)
    common = {"config": "bottleneck(d=0,w=8)", "bytes_up": 0, "bytes_down": 0}
    printer({**common, "round": 1, "sim_time_s": 1.0, "wall_time_s": 1.0, "val_accuracy": 0.5})
    for group, acc, served in (
        ("keep", 0.6, True),
        ("keep_probe", 0.9, False),
        ("deeper", 0.8, False),
    ):
        printer(
            {
                **common,
                "round": 2,
                "sim_time_s": 2.0,
                "wall_time_s": 2.0,
                "val_accuracy": acc,
                "trial": 1,
                "group": group,
                "served": served,
            }
        )
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("best ")[1][:5] for line in lines] == ["0.500", "0.600", "0.600", "0.600"]
    # the config column starts at the same place for every group
    starts = {line.index("bottleneck") for line in lines[1:]}
    assert len(starts) == 1
    assert printer.best == 0.6


def test_the_reports_best_so_far_is_the_served_models_only():
    """`report`'s accuracy curve (and so its "best val" column) reads what the server handed
    out: a trial candidate's reading never was, an adopted one is from its adoption on."""
    from autofednlp.report.plots import accuracy_curve

    rows = [
        {"sim_time_s": "1.0", "val_accuracy": "0.5", "served": "True"},
        {"sim_time_s": "2.0", "val_accuracy": "0.6", "served": "True", "group": "keep"},
        {"sim_time_s": "2.0", "val_accuracy": "0.9", "served": "False", "group": "deeper"},
        {"sim_time_s": "3.0", "val_accuracy": "0.7", "served": "True", "group": "adopted"},
        {"sim_time_s": "4.0", "val_accuracy": "0.65"},  # a row without the column: served
    ]
    assert accuracy_curve(rows) == [(1.0, 0.5), (2.0, 0.6), (3.0, 0.7), (4.0, 0.7)]
