"""Time to accuracy with client-level differential privacy on (a few noise levels) and off.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dp.py                  # the table in RESULTS.md
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dp.py --noise 0,1.0 --rounds 5

BBC News, 64 tokens, 100 clients (Dirichlet alpha 1), 15 a round, fixed adapters d=2 w=8,
in-process engine. The clip norm, unless `--clip` gives one, follows a stated rule: the median
L2 norm of the round-1 updates of the non-private run's clients (Andrew et al., 2021 adapt the
clip towards that quantile), so clipping binds for about half the clients and the noise is no
larger than the updates call for. Time to target: the first simulated time the served model
held 90% of the non-private run's best validation accuracy for 2 evaluations. Finished runs
with the same configuration are reused (see time_to_accuracy.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from time_to_accuracy import Method, run_method  # noqa: E402

from autofednlp.config import load_config  # noqa: E402
from autofednlp.report.results import time_to_target  # noqa: E402


def median_update_norm(common: list[str]) -> float:
    """Median L2 norm of the round-1 updates of the clients the non-private run samples."""
    import random

    from autofednlp.client.worker import client_data, train_round
    from autofednlp.model.build import build_model, trainable_state
    from autofednlp.model.kinds import TuneSpec
    from autofednlp.privacy.clip import update_norm

    cfg = load_config(None, common)
    spec = TuneSpec(cfg.tune.kind, cfg.tune.depth, cfg.tune.width)
    labels = client_data(cfg).num_labels
    model = build_model(
        cfg.model.name, labels, spec, cfg.seed, cfg.model.pooling, cfg.data.task_name
    )
    state = trainable_state(model)
    rng = random.Random(cfg.seed)  # drawn as the run draws its round-1 clients
    clients = sorted(rng.sample(range(cfg.data.num_clients), cfg.federation.clients_per_round))
    norms = [update_norm(state, train_round(cfg, p, spec, state, 1)[0]) for p in clients]
    return statistics.median(norms)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noise", default="0,0.3,0.6,1.0", help="noise multipliers (central DP)")
    p.add_argument("--clip", type=float, default=0.0, help="clip norm; 0 = the median rule")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--mode", default="central", choices=["central", "local"])
    p.add_argument("--out", default="benchmarks/results/dp")
    p.add_argument("--set", action="append", default=[], help="extra config override")
    args = p.parse_args()
    out = Path(args.out)
    common = [
        f"seed={args.seed}",
        "data.alpha=1.0",
        "data.num_clients=100",
        "data.max_length=64",
        "federation.clients_per_round=15",
        "federation.engine=inprocess",
        f"federation.rounds={args.rounds}",
        "federation.stop_at_target=false",
        "cost.devices={jetson-tx2 = 1}",
        "tune.kind=bottleneck",
        "tune.depth=2",
        "tune.width=8",
        *args.set,
    ]
    clip = args.clip
    if clip <= 0:
        norm = median_update_norm(common)
        clip = float(f"{norm:.2g}")
        print(f"median round-1 update norm {norm:.4f}: clip {clip}", file=sys.stderr, flush=True)
    todo = [Method("DP off", "fixed", ())]
    for sigma in [float(s) for s in args.noise.split(",") if s]:
        dp = (
            f'privacy.mode="{args.mode}"',
            f"privacy.clip_norm={clip}",
            f"privacy.noise_multiplier={sigma}",
            f"privacy.delta={args.delta}",
        )
        todo.append(Method(f"{args.mode} DP sigma {sigma} clip {clip}", "fixed", dp))
    results = []
    for i, m in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {m.name}", file=sys.stderr, flush=True)
        results.append((m, run_method(m, common, out, fresh=False)))
    base_best = max(r["val_accuracy"] for r in results[0][1]["rows"] if r.get("val_accuracy"))
    target = 0.9 * base_best
    lines = [
        f"| run | final val acc | best val acc | time to {target:.3f} (90% of DP-off best) "
        f"| epsilon at delta {args.delta:g} | wall s (shared 2-core machine) |",
        "|---|---|---|---|---|---|",
    ]
    table = []
    for m, r in results:
        s = r["summary"] or {}
        tta = time_to_target(r["rows"], target, "val_accuracy", 2)
        eps = (s.get("privacy") or {}).get("epsilon")
        row = {
            "run": m.name,
            "final_val_accuracy": s.get("final_val_accuracy"),
            "best_val_accuracy": s.get("best_val_accuracy"),
            "time_to_target_s": tta["sim_time_s"] if tta else None,
            "target": target,
            "epsilon": eps,
            "wall_s": s.get("wall_time_s"),
        }
        table.append(row)
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        tta_s = f"{tta['sim_time_s']:.2f} s (round {tta['round']})" if tta else "not reached"
        lines.append(
            f"| {m.name} | {fmt(row['final_val_accuracy'], '.4f')} | "
            f"{fmt(row['best_val_accuracy'], '.4f')} | {tta_s} | {fmt(eps, '.3g')} | "
            f"{fmt(row['wall_s'], '.0f')} |"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"clip": clip, "rows": table}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
