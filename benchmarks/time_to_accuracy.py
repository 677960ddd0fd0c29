"""Time to accuracy, side by side: full fine-tuning, layer freezing, fixed adapters, AutoFedNLP.

Every method runs on the same data, partition, seed and device/network profile, and stops when
its validation accuracy first reaches the target (or at its round cap). Simulated time comes
from the cost model, so the ratios do not depend on how busy this machine is.

    .venv/bin/python benchmarks/time_to_accuracy.py                  # the whole comparison
    .venv/bin/python benchmarks/time_to_accuracy.py --suite baselines  # no AutoFedNLP runs
    .venv/bin/python benchmarks/time_to_accuracy.py --quick          # a small smoke run

Writes results.csv, results.json and accuracy_vs_time.png to --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from autofednlp.config import load_config  # noqa: E402
from autofednlp.run import run_experiment  # noqa: E402

QUICK_DATA = ["data.max_samples=800", "data.num_clients=30", "data.max_length=64"]


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # full | freeze | fixed | autofed
    overrides: tuple[str, ...]
    max_rounds: int


def methods(suite: str, quick: bool) -> list[Method]:
    nocache = "client.activation_cache=false"
    full = [Method("full fine-tuning", "full", ("tune.kind=full", nocache), 8 if quick else 12)]
    freeze = [
        Method(f"freeze top {d}", "freeze", ("tune.kind=freeze", f"tune.depth={d}", nocache), 12)
        for d in ((1, 2) if quick else (1, 2, 4))
    ]
    grid = [(1, 8), (2, 32)] if quick else [(d, w) for d in (1, 2, 4, 6) for w in (8, 32, 64)]
    fixed = [
        Method(
            f"adapters d={d} w={w}",
            "fixed",
            ("tune.kind=bottleneck", f"tune.depth={d}", f"tune.width={w}", nocache),
            20,
        )
        for d, w in grid
    ]
    auto = ("strategy.name=autofed", "tune.kind=bottleneck", "tune.depth=0", "tune.width=8")
    autofed = [
        Method("AutoFedNLP, no cache", "autofed", (*auto, nocache), 40),
        Method("AutoFedNLP + cache", "autofed", (*auto, "client.activation_cache=true"), 40),
    ]
    if suite == "baselines":
        return full + freeze + fixed
    # AutoFedNLP before the long grid: partial results (written after every method) then
    # already hold the comparison that matters most.
    return full + freeze[:2] + autofed + fixed + freeze[2:]


def run_method(m: Method, common: list[str], out: Path, reuse: bool) -> dict:
    name = m.name.replace(" ", "_").replace("=", "").replace(",", "").replace("+", "with")
    cfg = load_config(
        None,
        [
            *common,
            *m.overrides,
            f"federation.rounds={m.max_rounds}",
            "federation.stop_at_target=true",
            f'name="{name}"',
            f'output_dir="{out / "runs"}"',
        ],
    )
    t0 = time.monotonic()
    done = out / "runs" / name
    if reuse and (done / "summary.json").exists() and load_config(done / "config.toml") == cfg:
        summary = json.loads((done / "summary.json").read_text())
    else:
        shutil.rmtree(done, ignore_errors=True)
        summary = run_experiment(cfg, run_dir=str(done), progress=False)
    rows = list(csv.DictReader(open(done / "rounds.csv")))
    curve = [(float(r["sim_time_s"]), float(r["val_accuracy"])) for r in rows if r["val_accuracy"]]
    tta = summary["time_to_accuracy"]
    return {
        "method": m.name,
        "family": m.family,
        "final_config": summary["config"],
        "rounds": summary["rounds"],
        "tta_s": tta["sim_time_s"] if tta else None,
        "sim_time_s": summary["sim_time_s"],
        "traffic_mb": (summary["bytes_up"] + summary["bytes_down"]) / 1e6,
        "energy_wh": summary["energy_j"] / 3600,
        "test_accuracy": summary["test_accuracy"],
        "trajectory": " -> ".join(t["config"] for t in summary.get("trajectory", [])),
        "wall_s": time.monotonic() - t0,
        "curve": sorted(curve),
    }


def add_ratios(results: list[dict]) -> None:
    full = next((r["tta_s"] for r in results if r["family"] == "full"), None)
    fixed = [r["tta_s"] for r in results if r["family"] == "fixed" and r["tta_s"] is not None]
    best_fixed = min(fixed) if fixed else None
    for r in results:
        t = r["tta_s"]
        r["speedup_vs_full"] = full / t if (full and t) else None
        r["vs_best_fixed"] = t / best_fixed if (best_fixed and t) else None


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def print_table(results: list[dict], target: float) -> str:
    head = (
        f"{'method':<22} {'rounds':>6} {'sim s to ' + format(target, '.0%'):>12} "
        f"{'traffic MB':>11} {'energy Wh':>10} {'test acc':>9} {'x vs full':>10} "
        f"{'/ best fixed':>12}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['method']:<22} {r['rounds']:>6} "
            f"{_fmt(r['tta_s'], '.2f', 'not reached'):>12} "
            f"{r['traffic_mb']:>11.1f} {r['energy_wh']:>10.3f} {r['test_accuracy']:>9.3f} "
            f"{_fmt(r['speedup_vs_full'], '.1f'):>10} {_fmt(r['vs_best_fixed'], '.2f'):>12}"
        )
    return "\n".join(lines)


def plot(results: list[dict], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    styles = {"full": "k-", "freeze": "--", "fixed": ":", "autofed": "-"}
    for r in results:
        if not r["curve"]:
            continue
        xs, ys = zip(*r["curve"])
        lw = 2.5 if r["family"] == "autofed" else 1.2
        ax.plot(xs, ys, styles[r["family"]], label=r["method"], linewidth=lw, alpha=0.9)
    ax.axhline(target, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("simulated time (s, log scale)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Validation accuracy against simulated time")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--suite", choices=["all", "baselines"], default="all")
    p.add_argument("--quick", action="store_true", help="fewer methods and a smaller dataset")
    p.add_argument("--target", type=float, default=0.9, help="validation accuracy target")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="jetson-tx2", help="device profile of every client")
    p.add_argument("--mb-per-s", type=float, default=1.0, help="link bandwidth, both ways")
    p.add_argument("--engine", default="inprocess", choices=["inprocess", "simulation"])
    p.add_argument("--out", default="benchmarks/results/time_to_accuracy")
    p.add_argument("--set", action="append", default=[], help="extra config override")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="reuse a method's finished run in --out when its configuration is identical",
    )
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [
        f"seed={args.seed}",
        f"federation.target_accuracy={args.target}",
        f"federation.engine={args.engine}",
        f"cost.devices={{{args.device} = 1}}",
        f"cost.upload_mb_per_s={args.mb_per_s}",
        f"cost.download_mb_per_s={args.mb_per_s}",
        *(
            ["data.max_samples=800", "data.num_clients=30", "data.max_length=64"]
            if args.quick
            else []
        ),
        *args.set,
    ]
    results = []
    todo = methods(args.suite, args.quick)
    for i, m in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {m.name} ...", file=sys.stderr, flush=True)
        r = run_method(m, common, out, args.reuse)
        print(
            f"    rounds {r['rounds']}, time to target {_fmt(r['tta_s'], '.2f', 'not reached')} s, "
            f"test acc {r['test_accuracy']:.3f}, wall {r['wall_s']:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        results.append(r)
        write_results(results, args, out)
    print(write_results(results, args, out))
    print(f"\nresults in {out}/ (results.csv, results.json, accuracy_vs_time.png)")
    return 0


def write_results(results: list[dict], args: argparse.Namespace, out: Path) -> str:
    """Table, CSV, JSON and plot of the methods run so far (rewritten after each one)."""
    add_ratios(results)
    table = print_table(results, args.target)
    (out / "table.txt").write_text(table + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        cols = [k for k in results[0] if k != "curve"]
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(results)
    (out / "results.json").write_text(
        json.dumps({"args": vars(args), "results": results}, indent=1)
    )
    plot(results, args.target, out / "accuracy_vs_time.png")
    return table


if __name__ == "__main__":
    sys.exit(main())
