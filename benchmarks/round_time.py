"""Where a run's wall time goes, per round: local training, evaluation, and the rest (the
engine: sampling, FedAvg, checks, results). In-process engine only (the clients run in this
process, so their time can be taken); the simulated clock is unaffected by any of this.

    # one run, timed (any config and --set overrides; the engine is forced to inprocess)
    python benchmarks/round_time.py [CONFIG] [--set K=V ...] --label gpu --json gpu.json
    # a markdown table of several timed runs
    python benchmarks/round_time.py --table cpu.json gpu.json
    # the same seed on two devices: how close the results are
    python benchmarks/round_time.py --compare cpu.json gpu.json
    # one client's round of MiniLM with dropout off on the CPU and on CUDA: float rounding only
    python benchmarks/round_time.py --drift
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from autofednlp.config import load_config  # noqa: E402
from autofednlp.run import run_experiment  # noqa: E402
from autofednlp.runtime import runtime_for  # noqa: E402
from autofednlp.server import inprocess  # noqa: E402
from autofednlp.server.loop import FederatedRun  # noqa: E402


class RoundTimer:
    """Wraps the in-process transport's client call and the server's evaluation with wall
    clocks, and notes the totals each time a round's row is recorded. Both calls end in a
    host copy (the trained tensors, the metrics), so GPU work is finished when they return."""

    def __init__(self) -> None:
        self.train_s = 0.0
        self.eval_s = 0.0
        self.marks: list[dict[str, Any]] = []

    def install(self) -> None:
        timer = self
        train_round, evaluate, record = (
            inprocess.train_round,
            FederatedRun.evaluate,
            FederatedRun.record,
        )

        def timed_train(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return train_round(*args, **kwargs)
            finally:
                timer.train_s += time.perf_counter() - t0

        def timed_evaluate(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return evaluate(self, *args, **kwargs)
            finally:
                timer.eval_s += time.perf_counter() - t0

        def timed_record(self, row):
            record(self, row)
            timer.marks.append(
                {
                    "round": row["round"],
                    "wall": row["wall_time_s"],
                    "train": timer.train_s,
                    "eval": timer.eval_s,
                    "val_accuracy": row.get("val_accuracy"),
                    "sim_time_s": row["sim_time_s"],
                }
            )

        inprocess.train_round = timed_train
        FederatedRun.evaluate = timed_evaluate
        FederatedRun.record = timed_record

    def rounds(self) -> list[dict[str, Any]]:
        last = {m["round"]: m for m in self.marks}  # trial groups write several rows a round
        out, prev = [], {"wall": 0.0, "train": 0.0, "eval": 0.0}
        for m in sorted(last.values(), key=lambda m: m["round"]):
            wall, train, ev = (m[k] - prev[k] for k in ("wall", "train", "eval"))
            out.append(
                {
                    "round": m["round"],
                    "wall_s": wall,
                    "train_s": train,
                    "eval_s": ev,
                    "overhead_s": wall - train - ev,
                    "val_accuracy": m["val_accuracy"],
                    "sim_time_s": m["sim_time_s"],
                }
            )
            prev = m
        return out


def timed_run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_config(args.config, [*args.set, "federation.engine=inprocess"])
    runtime = runtime_for(cfg)
    timer = RoundTimer()
    timer.install()
    t0 = time.perf_counter()
    summary = run_experiment(cfg, args.run_dir, progress="quiet")
    total = time.perf_counter() - t0
    rounds = timer.rounds()
    reached = [r for r in rounds if (r["val_accuracy"] or 0) >= cfg.federation.target_accuracy]
    result = {
        "label": args.label,
        "runtime": runtime.describe(),
        "host_threads": torch.get_num_threads(),
        "config": args.config or "(defaults)",
        "overrides": list(args.set),
        "total_s": total,
        # before round 1 (preflight: data, tokenizer, model) and after the last (test split,
        # export, checkpoint)
        "outside_rounds_s": total - (timer.marks[-1]["wall"] if timer.marks else 0.0),
        "rounds": rounds,
        "wall_s_to_target": (
            sum(r["wall_s"] for r in rounds if r["round"] <= reached[0]["round"])
            if reached
            else None
        ),
        "summary": {
            k: summary[k]
            for k in (
                "rounds",
                "best_val_accuracy",
                "final_val_accuracy",
                "test_accuracy",
                "test_loss",
                "sim_time_s",
                "bytes_up",
                "bytes_down",
                "energy_j",
                "time_to_accuracy",
                "run_dir",
            )
        },
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: per run, the first round, then the median of the later rounds split into
    training, evaluation and the rest."""
    head = (
        "| run | device | rounds | round 1 s | later rounds s (median) | training s | "
        "evaluation s | engine/other s | outside rounds s | total s | wall s to target | "
        "test acc |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in results:
        rows = r["rounds"]
        later = rows[1:] or rows

        def med(key: str, later: list = later) -> float:
            return statistics.median(x[key] for x in later)

        to_target = r["wall_s_to_target"]
        lines.append(
            f"| {r['label']} | {r['runtime']} | {len(rows)} | {rows[0]['wall_s']:.2f} | "
            f"{med('wall_s'):.2f} | {med('train_s'):.2f} | {med('eval_s'):.2f} | "
            f"{med('overhead_s'):.2f} | {r['outside_rounds_s']:.1f} | {r['total_s']:.1f} | "
            f"{'-' if to_target is None else f'{to_target:.1f}'} | "
            f"{r['summary']['test_accuracy']:.4f} |"
        )
    return "\n".join(lines)


def _state_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    assert a.keys() == b.keys()
    diff = sum(float((a[n].float() - b[n].float()).norm()) ** 2 for n in a) ** 0.5
    norm = sum(float(a[n].float().norm()) ** 2 for n in a) ** 0.5
    return {
        "max_abs_diff": max(float((a[n] - b[n]).abs().max()) for n in a),
        "rel_norm_diff": diff / norm,
    }


def compare(a_path: str, b_path: str) -> dict[str, Any]:
    """Two runs of the same configuration and seed (say CPU and GPU)."""
    a, b = (json.loads(Path(p).read_text(encoding="utf-8")) for p in (a_path, b_path))
    sa, sb = a["summary"], b["summary"]
    accs = [
        (x["val_accuracy"], y["val_accuracy"])
        for x, y in zip(a["rounds"], b["rounds"])
        if x["val_accuracy"] is not None and y["val_accuracy"] is not None
    ]
    wa, wb = (torch.load(Path(s["run_dir"]) / "trainable_state.pt") for s in (sa, sb))
    return {
        "runs": [f"{a['label']} ({a['runtime']})", f"{b['label']} ({b['runtime']})"],
        "same_simulated_costs": all(
            sa[k] == sb[k] for k in ("sim_time_s", "bytes_up", "bytes_down", "energy_j")
        ),
        "max_val_accuracy_diff": max((abs(x - y) for x, y in accs), default=None),
        "test_accuracy": [sa["test_accuracy"], sb["test_accuracy"]],
        "test_loss": [sa["test_loss"], sb["test_loss"]],
        "final_weights": _state_diff(wa, wb),
    }


def drift(device: str = "cuda") -> list[dict[str, Any]]:
    """One client's local round of the default experiment (partition 0) with dropout off, on
    the CPU and on CUDA from the same weights: what differs is float rounding alone (with
    dropout on, the CPU and the GPU also draw different dropout masks)."""
    from autofednlp.client.train import local_train
    from autofednlp.client.worker import local_data
    from autofednlp.model.build import (
        build_model,
        learning_rate,
        model_shape,
        trainable_state,
    )
    from autofednlp.model.kinds import TuneSpec
    from autofednlp.runtime import CPU, Runtime, resolve_device

    cfg = load_config()
    data = local_data(cfg, 0)
    out = []
    for spec in (TuneSpec("bottleneck", 2, 32), TuneSpec("full", 0)):
        states, losses = [], []
        for runtime in (CPU, Runtime(resolve_device(device, "--drift-device"))):
            model = build_model(cfg.model.name, data.num_labels, spec, cfg.seed)
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
            model.to(runtime.device)
            res = local_train(
                model,
                data.samples,
                cfg.client,
                learning_rate(spec, cfg.client.learning_rate),
                spec.boundary(model.num_layers),
                model_shape(cfg.model.name, data.num_labels),
                spec,
                seed=1,
                runtime=runtime,
            )
            states.append(trainable_state(model))
            losses.append(res.train_loss)
        out.append(
            {
                "spec": spec.label(),
                "samples": len(data.samples),
                "train_loss": losses,
                **_state_diff(*states),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("config", nargs="?", help="experiment TOML (default: the built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--label", default="run", help="name of this run in tables")
    p.add_argument("--json", help="write the timings here")
    p.add_argument("--run-dir", help="results directory of the run")
    p.add_argument("--table", nargs="+", metavar="JSON", help="markdown table of timed runs")
    p.add_argument("--compare", nargs=2, metavar="JSON", help="two timed runs, same seed")
    p.add_argument("--drift", action="store_true", help="CPU vs CUDA, one round, no dropout")
    p.add_argument("--drift-device", default="cuda", help="the device --drift compares to the CPU")
    args = p.parse_args(argv)
    if args.table:
        print(table([json.loads(Path(x).read_text(encoding="utf-8")) for x in args.table]))
    elif args.compare:
        print(json.dumps(compare(*args.compare), indent=1))
    elif args.drift:
        print(json.dumps(drift(args.drift_device), indent=1))
    else:
        print(table([timed_run(args)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
