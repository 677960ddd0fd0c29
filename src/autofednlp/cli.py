"""`autofednlp` command line: user mistakes exit 2 with one line, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from autofednlp.config import ConfigError, describe_fields, load_config
from autofednlp.report.results import human_duration

EXIT_USER_ERROR = 2


def _fields_help() -> str:
    lines = ["configuration keys (set in the TOML file or with --set key=value):"]
    for name, default, help_text in describe_fields():
        lines.append(f"  {name:<32} {help_text} (default: {default!r})")
    return "\n".join(lines)


def format_summary(s: dict[str, Any]) -> str:
    tta = s.get("time_to_accuracy")
    reached = (
        f"{human_duration(tta['sim_time_s'])} (round {tta['round']})" if tta else "not reached"
    )
    rows = [
        ("configuration", s["config"]),
        *(
            [("upgrades", " -> ".join(t["config"] for t in s["trajectory"]))]
            if s.get("trajectory")
            else []
        ),
        ("rounds", s["rounds"]),
        (f"time to {s['target_accuracy']:.0%} val acc", reached),
        ("best validation accuracy", f"{s['best_val_accuracy']:.4f}"),
        ("final test accuracy", f"{s['test_accuracy']:.4f}"),
        ("simulated time", human_duration(s["sim_time_s"])),
        ("traffic up / down", f"{s['bytes_up'] / 1e6:.2f} MB / {s['bytes_down'] / 1e6:.2f} MB"),
        ("energy", f"{s['energy_j'] / 3600:.2f} Wh"),
        ("wall time", f"{s['wall_time_s']:.1f} s"),
        ("results", s["run_dir"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_run(args: argparse.Namespace) -> int:
    from autofednlp.run import run_experiment

    cfg = load_config(args.config, args.set)
    summary = run_experiment(cfg, args.run_dir, progress=not args.quiet)
    print(format_summary(summary))
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from autofednlp.cost.devices import _REGISTRY

    for p in sorted(_REGISTRY.values(), key=lambda p: p.name):
        print(f"{p.name:<14} {p.flops_per_s / 1e9:8.1f} GFLOP/s  {p.source}")
    print(f"{'this-machine':<14} {'measured':>8} on first use (the packaged model, timed here)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autofednlp",
        description="Federated fine-tuning of pretrained transformers with adapters on Flower.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run an experiment on Flower's simulation engine",
        description="Run an experiment; with no file, the bundled defaults (BBC News, 100 "
        "clients, MiniLM-L6, bottleneck adapters).",
        epilog=_fields_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("config", nargs="?", help="experiment TOML file (default: built-in defaults)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one configuration key, e.g. --set federation.rounds=5 (repeatable)",
    )
    run.add_argument(
        "--run-dir",
        help="write results here (must not exist or be empty); "
        "default: <output_dir>/<name>-<timestamp>",
    )
    run.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    run.set_defaults(func=cmd_run)
    devices = sub.add_parser("devices", help="list the device profiles of the cost model")
    devices.set_defaults(func=cmd_devices)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"autofednlp: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("autofednlp: interrupted; results so far are in the run directory", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
