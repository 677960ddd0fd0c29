"""What a person sees while a run works: stage notes from the first second, a progress bar for
long steps, and one line per round with the validation split's majority-class accuracy beside
every accuracy reading (the yardstick a reading has to beat)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from autofednlp.report.results import human_duration, is_served

_mode = "quiet"  # stage notes print only in "lines" mode; set by `set_mode`


def set_mode(mode: str | bool) -> str:
    """Set where stage notes go (`lines`: stderr; `json`, `quiet`: nowhere); returns the old."""
    global _mode
    old, _mode = _mode, {True: "lines", False: "quiet"}.get(mode, mode)
    return old


def note(message: str) -> None:
    """One line about what the run is doing now, on stderr (in `lines` mode)."""
    if _mode == "lines":
        print(f"autofednlp: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning the user should read: printed unless progress is `quiet`."""
    if _mode != "quiet":
        print(f"autofednlp: warning: {message}", file=sys.stderr, flush=True)


@contextmanager
def bar(label: str, total: int, width: int = 30) -> Iterator[Any]:
    """A one-line progress bar on stderr, redrawn at most 4 times a second; yields `advance(n)`.

    On a terminal the line is redrawn in place; elsewhere (a log file) only its end is
    written, so logs stay one line per step."""
    done = 0
    last = 0.0
    tty = sys.stderr.isatty()
    start = time.monotonic()

    def draw(final: bool = False) -> None:
        frac = done / total if total else 1.0
        filled = int(frac * width)
        text = f"autofednlp: {label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        if final:
            text += f" ({time.monotonic() - start:.1f} s)"
        if tty:
            print("\r" + text, end="\n" if final else "", file=sys.stderr, flush=True)
        elif final:
            print(text, file=sys.stderr, flush=True)

    def advance(n: int) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if _mode == "lines" and now - last >= 0.25:
            last = now
            draw()

    yield advance
    if _mode == "lines":
        draw(final=True)


METRIC_LABELS = {"accuracy": "acc", "macro_f1": "macro-F1", "f1": "F1"}


def majority_accuracy(labels: Sequence[int]) -> float | None:
    """The accuracy of always predicting the most frequent label: what a model must beat."""
    labels = [int(y) for y in labels]
    if not labels:
        return None
    counts: dict[int, int] = {}
    for y in labels:
        counts[y] = counts.get(y, 0) + 1
    return max(counts.values()) / len(labels)


class ProgressPrinter:
    """Per-round progress: `lines` (human, on stderr, with a wall-clock ETA), `json` (one JSON
    object per round on stdout, for scripts) or `quiet`. `metric` is the run's target metric
    (its val_<metric> column is shown); `baseline` is the majority-class accuracy of the
    validation split, shown beside each accuracy reading. "best" is the best reading of the
    model the server would hand out (`is_served`): a trial's probe or candidate readings are
    shown on their own lines but never become it."""

    def __init__(
        self,
        total_rounds: int,
        mode: str | bool = "lines",
        baseline: float | None = None,
        metric: str = "accuracy",
        time_budget_s: float = 0.0,
    ) -> None:
        self.total = total_rounds
        self.budget = time_budget_s  # simulated seconds; 0 = none
        self.mode = {True: "lines", False: "quiet"}.get(mode, mode)
        self.baseline = baseline
        self.metric = metric
        self.bytes = 0
        self.best: float | None = None
        self._started = False

    def round_started(self, server_round: int, clients: int) -> None:
        """Said once, before the first round of this process: on a cold engine that round
        also starts the workers and loads the model in each, a minute of silence otherwise."""
        if self.mode == "lines" and not self._started:
            print(
                f"autofednlp: round {server_round}: {clients} clients training (the first round "
                "also starts the workers)",
                file=sys.stderr,
                flush=True,
            )
        self._started = True

    def __call__(self, row: dict[str, Any]) -> None:
        self.bytes += row["bytes_up"] + row["bytes_down"]
        acc = row.get(f"val_{self.metric}")
        if acc is not None and is_served(row):
            self.best = acc if self.best is None else max(self.best, acc)
        if self.mode == "json":
            print(json.dumps(row, default=str), flush=True)
        if self.mode != "lines":
            return
        acc_s = "  -  " if acc is None else f"{acc:.3f}"
        best_s = "  -  " if self.best is None else f"{self.best:.3f}"
        base_s = "" if self.baseline is None else f", majority {self.baseline:.3f}"
        where = f"trial {row['trial']} {row['group']:<12} " if row.get("group") else ""
        eps = row.get("epsilon")
        eps_s = "" if eps is None else f" | eps {eps:.3g}"
        wall = row["wall_time_s"]
        eta = wall / row["round"] * (self.total - row["round"])
        sim = row["sim_time_s"]
        if self.budget > 0 and sim > 0:  # the budget may end the run first
            eta = min(eta, max(0.0, wall / sim * (self.budget - sim)))
        print(
            f"round {row['round']:>3}/{self.total} | {where}{row['config']:<22} | "
            f"sim {human_duration(row['sim_time_s']):>8} | val {METRIC_LABELS[self.metric]} "
            f"{acc_s} (best {best_s}"
            f"{base_s}){eps_s} | traffic {_mb(self.bytes)} | wall {wall:6.1f} s | eta {eta:5.0f} s",
            file=sys.stderr,
            flush=True,
        )


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:7.2f} GB" if n_bytes >= 1e10 else f"{n_bytes / 1e6:8.2f} MB"
