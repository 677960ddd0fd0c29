"""Does new capacity grown from a trained model learn as well as the same configuration
trained from the start? A diagnostic for issue #15, where AutoFedNLP's trials keep the head
because a deeper candidate grown from it is no better per round.

For each seed it runs, at the simulated time budget of a finished `time_to_accuracy.py` run of
the same setting and seed (its reference, d=2 w=8 over 20 rounds, read from --fixed):
- the configuration that `--grow-to` names, trained from the start (read from --fixed too:
  the same run the benchmark made);
- the head (d=0) grown into it, function-preservingly (`autofednlp.model.grow`), at each
  fraction of the budget in `--grow-at`, then trained as that configuration to the end.
Every run shares the setting, seed, client sampling and cost model; only when the new capacity
starts differs. Prints, per run, the best served reading held for --hold evaluations, the mean
of the last 5 readings and the time to 90/95% of the best held reading of the seed, and writes
warm_start.csv and one plot per seed to --out.

    .venv/bin/python benchmarks/warm_start.py --setting ner-a1-30 --seeds 0,1 \\
        --fixed benchmarks/results/ner --grow-to 1x8 --grow-at 0.05,0.15,0.3,0.5
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import time_to_accuracy as tta  # noqa: E402

from autofednlp.config import load_config  # noqa: E402
from autofednlp.model.grow import grow_state  # noqa: E402
from autofednlp.model.kinds import TuneSpec  # noqa: E402
from autofednlp.report.results import time_to_target  # noqa: E402
from autofednlp.server.loop import FederatedRun  # noqa: E402

# The new capacity's learning rate (`--new-lr-scale`): which tensors are new since the growth
# and the scale of their learning rate in the coming round. The in-process clients' optimizer
# is wrapped to give those tensors their own parameter group; nothing else changes.
NEW_CAPACITY: dict = {"names": frozenset(), "scale": 1.0}


def optimizer_with_new_capacity(plain_optimizer, params, names: dict, cfg, lr: float):
    """`plain_optimizer` over `params`, the tensors named in NEW_CAPACITY (`names`: parameter
    id -> name) in a group of their own at NEW_CAPACITY's scale of `lr`."""
    new = [p for p in params if names.get(id(p)) in NEW_CAPACITY["names"]]
    if not new or NEW_CAPACITY["scale"] == 1.0:
        return plain_optimizer(params, cfg, lr)
    opt = plain_optimizer([p for p in params if all(p is not q for q in new)], cfg, lr)
    opt.add_param_group({"params": new, "lr": lr * NEW_CAPACITY["scale"]})
    return opt


def scale_new_capacity_lr() -> None:
    import autofednlp.client.train as train
    import autofednlp.client.worker as worker

    plain_train, plain_optimizer = train.local_train, train.make_optimizer
    current: dict = {}

    def local_train(model, *args, **kwargs):
        current["names"] = {id(p): n for n, p in model.named_parameters()}
        return plain_train(model, *args, **kwargs)

    def make_optimizer(params, cfg, lr):
        return optimizer_with_new_capacity(plain_optimizer, params, current["names"], cfg, lr)

    worker.local_train = local_train
    train.make_optimizer = make_optimizer


class GrowAt(FederatedRun):
    """A fixed run of the head that grows into `grow_to` once its simulated clock reaches
    `grow_at_s`; its rounds otherwise as `FederatedRun.run`."""

    def __init__(
        self,
        *args,
        grow_to: TuneSpec,
        grow_at_s: float,
        new_lr_scale: float = 1.0,
        new_lr_rounds: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.grow_to, self.grow_at_s = grow_to, grow_at_s
        self.new_lr = (new_lr_scale, new_lr_rounds)
        self.grown_at: float | None = None
        self.since_growth = 0

    def new_capacity_scale(self) -> float:
        """`new_lr_scale` in the first round after the growth, rising linearly to 1 over
        `new_lr_rounds` rounds (0: the scale throughout)."""
        s, n = self.new_lr
        return s if n == 0 else s + (1.0 - s) * min(1.0, self.since_growth / n)

    def before_round(self, server_round: int) -> None:
        """Grows the head into `grow_to` once the clock passes `grow_at_s`, and sets the new
        capacity's learning-rate scale for every round after."""
        if self.grown_at is None and self.clock.time_s >= self.grow_at_s:
            new = self.initial_state(self.grow_to)
            NEW_CAPACITY["names"] = frozenset(set(new) - set(self.state))
            self.state = grow_state(self.state, new, self.spec, self.grow_to)
            self.spec, self.grown_at = self.grow_to, self.clock.time_s
        if self.grown_at is not None:
            NEW_CAPACITY["scale"] = self.new_capacity_scale()
            self.since_growth += 1

    def finish(self, extra: dict | None = None) -> dict:
        return super().finish({**(extra or {}), "grown_at_s": self.grown_at})


def run_grown(cfg, run_dir: Path, grow_to: TuneSpec, grow_at_s: float, new_lr: tuple) -> list:
    from autofednlp.client.worker import cache_root, client_data
    from autofednlp.server.inprocess import InProcessTransport
    from autofednlp.server.loop import run_id_for

    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    run = GrowAt(
        cfg,
        client_data(cfg),
        InProcessTransport(cfg),
        run_dir,
        progress="lines",
        grow_to=grow_to,
        grow_at_s=grow_at_s,
        new_lr_scale=new_lr[0],
        new_lr_rounds=new_lr[1],
    )
    run.run()
    shutil.rmtree(cache_root(cfg) / run_id_for(run_dir), ignore_errors=True)
    return tta.load_run(run_dir)["rows"]


def held_best(curve: list[tuple[float, float]], hold: int) -> float:
    """The best reading the served model held for `hold` evaluations in a row."""
    vals = [v for _, v in curve]
    return max((min(vals[i : i + hold]) for i in range(len(vals) - hold + 1)), default=0.0)


def last_mean(curve: list[tuple[float, float]], n: int = 5) -> float:
    tail = [v for _, v in curve[-n:]]
    return round(sum(tail) / max(1, len(tail)), 4)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--setting", default="ner-a1-30", choices=list(tta.SETTINGS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--fixed", required=True, help="--out of a finished time_to_accuracy run")
    p.add_argument("--grow-to", default="1x8", help="DEPTHxWIDTH the head grows into")
    p.add_argument("--grow-at", default="0.05,0.15,0.3,0.5", help="fractions of the budget")
    p.add_argument(
        "--new-lr-scale",
        type=float,
        default=1.0,
        help="learning rate of the tensors the growth added, as a multiple of the rest's",
    )
    p.add_argument(
        "--new-lr-rounds",
        type=int,
        default=0,
        help="rounds over which that multiple rises linearly to 1 (0: it stays)",
    )
    p.add_argument("--hold", type=int, default=2)
    p.add_argument("--max-rounds", type=int, default=100)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/warm_start")
    p.add_argument("--set", action="append", default=[], help="extra config override")
    args = p.parse_args()
    try:
        depth, width = (int(x) for x in args.grow_to.lower().split("x"))
        fractions = [float(f) for f in args.grow_at.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        tta.usage_error("--grow-to is DEPTHxWIDTH, --grow-at and --seeds comma lists of numbers")
    if any(not 0 <= f < 1 for f in fractions):
        tta.usage_error("--grow-at: fractions of the budget, in [0, 1)")
    if args.new_lr_scale <= 0 or args.new_lr_rounds < 0:
        tta.usage_error("--new-lr-scale must be > 0 and --new-lr-rounds >= 0")
    new_lr = (args.new_lr_scale, args.new_lr_rounds)
    if new_lr != (1.0, 0):
        scale_new_capacity_lr()
    out = Path(args.out)
    column = tta.column_of(args.setting, None)
    table = []
    for seed in seeds:
        fixed_dir = Path(args.fixed) / "runs" / args.setting / f"seed{seed}"
        ref = tta.load_run(fixed_dir / tta.slug("adapters d=2 w=8"))
        if not ref["summary"]:
            tta.usage_error(f"--fixed: no finished d=2 w=8 run in {fixed_dir}")
        budget = ref["summary"]["sim_time_s"]
        curves = {}
        for d in sorted({0, depth}):
            found = tta.load_run(fixed_dir / tta.slug(f"adapters d={d} w={width}"))
            if not found["summary"]:
                tta.usage_error(f"--fixed: no finished d={d} w={width} run in {fixed_dir}")
            curves[f"fixed d={d}"] = (None, found["rows"])
        common = [
            f"seed={seed}",
            *tta.setting_overrides(args.setting, out),
            f"data.max_length={args.max_length}",
            "federation.engine=inprocess",
            "federation.stop_at_target=false",
            "cost.devices={jetson-tx2 = 1}",
            "cost.upload_mb_per_s=1.0",
            "cost.download_mb_per_s=1.0",
            "tune.kind=bottleneck",
            "tune.depth=0",
            f"tune.width={width}",
            "client.activation_cache=true",
            f"federation.rounds={args.max_rounds}",
            f"federation.time_budget_s={budget}",
            *args.set,
        ]
        for f in fractions:
            name = f"grown at {f:.2f}"
            if args.new_lr_scale != 1.0:
                name += f", new lr x{args.new_lr_scale:g}"
                name += f" to 1 over {args.new_lr_rounds}" if args.new_lr_rounds else ""
            print(f"seed {seed}: d=0 grown into {args.grow_to} at {f:.0%}", file=sys.stderr)
            cfg = load_config(None, [*common, f'name="{tta.slug(name)}"', f'output_dir="{out}"'])
            rd = out / args.setting / f"seed{seed}" / tta.slug(name)
            spec = TuneSpec("bottleneck", depth, width)
            curves[name] = (f * budget, run_grown(cfg, rd, spec, f * budget, new_lr))
        pts = {
            k: [(t, v) for t, v in tta.served_curve(rows, column) if t <= budget + 1e-9]
            for k, (_, rows) in curves.items()
        }
        best = max(held_best(c, args.hold) for c in pts.values())
        for name, (grow_s, rows) in curves.items():
            rows = [r for r in rows if r["sim_time_s"] <= budget + 1e-9]
            c = pts[name]
            ttt = {
                frac: (time_to_target(rows, frac * best, column, args.hold) or {}).get("sim_time_s")
                for frac in (0.9, 0.95)
            }
            table.append(
                {
                    "setting": args.setting,
                    "seed": seed,
                    "run": name,
                    "grow_at_s": None if grow_s is None else round(grow_s, 3),
                    "budget_s": round(budget, 3),
                    f"best_held_{column}": round(held_best(c, args.hold), 4),
                    f"last5_mean_{column}": last_mean(c),
                    "t90_s": ttt[0.9],
                    "t95_s": ttt[0.95],
                }
            )
        plot(pts, curves, out / f"warm_start_{args.setting}_seed{seed}.png", column, args.grow_to)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "warm_start.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    (out / "warm_start.json").write_text(json.dumps(table, indent=1))
    for row in table:
        print(json.dumps(row))
    return 0


def plot(pts: dict, curves: dict, path: Path, column: str, grow_to: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, c in pts.items():
        if c:
            ax.plot([t for t, _ in c], [v for _, v in c], label=name, lw=1.2)
        grow_s = curves[name][0]
        if grow_s is not None:
            ax.axvline(grow_s, color=ax.lines[-1].get_color(), ls=":", lw=0.8)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel(column)
    ax.set_title(f"{path.stem}: the head grown into {grow_to} at different times")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
