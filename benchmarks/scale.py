"""Scale: the same experiment at 100 and at 1,000 simulated clients, side by side.

Both sizes run on Flower's simulation engine with the same clients per round, samples per
client and validation/test sets; only the total number of clients (virtual SuperNodes) differs.
Data: a hub-free stand-in for AG News, BBC News split into sentences of >= 5 words labelled with
their article's topic (a CSV in --out). Each run is one `autofednlp run` subprocess; a thread
sums the RSS of its process tree (CLI = ServerApp, Ray's GCS/raylet/workers) every 0.25 s.
Seconds per round come from rounds.csv: round 1 (it also asks every node for its identity)
apart from the median of later rounds. Sizes alternate (100, 1000, 100, ...) so load changes
hit both; the table has medians and ratios. The activation cache is off: with 100 clients the
same clients come back sooner and would hit it more, a speed-up unrelated to the engine.

    .venv/bin/python benchmarks/scale.py               # 5 rounds, 2 repeats (~10 min, 2 cores)
    .venv/bin/python benchmarks/scale.py --rounds 3 --repeats 1

Writes table.txt, scale.csv and scale.json to --out (and the dataset, runs and logs).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CLI = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "autofednlp"
COLUMNS = [
    ("clients", "clients", ""),
    ("samples_per_client", "samples/client", ".0f"),
    ("peak_rss_tree_mb", "peak RSS tree MB", ".0f"),
    ("peak_rss_server_mb", "peak RSS server MB", ".0f"),
    ("first_round_s", "first round s", ".1f"),
    ("later_round_median_s", "s/round (later, median)", ".1f"),
    ("total_s", "total s", ".1f"),
    ("server_cpu_s", "server CPU s", ".1f"),
]
RUN_FIELDS = ["clients", "repeat", "returncode", *(k for k, _, _ in COLUMNS[1:]), "peak_processes"]


def write_sentences(path: Path) -> int:
    """BBC News as one row per sentence of at least 5 words, labelled with the article's topic.
    The file is rewritten only when its content changes (its mtime keys the data cache)."""
    from autofednlp.data.sources import load_bbc_news

    ds = load_bbc_news()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["text", "label"])
    n = 0
    for text, label in zip(ds.texts, ds.labels):
        for sentence in re.split(r"(?<=[.!?])\s+|\n+", text):
            if len(sentence.split()) >= 5:
                w.writerow([" ".join(sentence.split()), ds.label_names[label]])
                n += 1
    if not path.exists() or path.read_text(encoding="utf-8") != buf.getvalue():
        path.write_text(buf.getvalue(), encoding="utf-8")
    return n


def overrides(dataset: Path, clients: int, args: argparse.Namespace) -> list[str]:
    """Settings giving every client `samples_per_client` train samples, and a fixed number of
    validation and test samples (the fractions are taken out before partitioning)."""
    total = clients * args.samples_per_client + 2 * args.holdout_samples
    return [
        f'data.dataset="{dataset.resolve()}"',
        f"data.num_clients={clients}",
        f"data.max_samples={total}",
        f"data.validation_fraction={args.holdout_samples / total!r}",
        f"data.test_fraction={args.holdout_samples / total!r}",
        'data.partitioner="iid"',
        f"data.max_length={args.max_length}",
        'federation.engine="simulation"',
        f"federation.rounds={args.rounds}",
        f"federation.clients_per_round={args.clients_per_round}",
        f"federation.eval_every={args.eval_every}",
        "federation.checkpoint_every=0",
        "client.activation_cache=false",
        *args.set,
    ]


def check_data(sets: list[str], args: argparse.Namespace) -> None:
    """Build the data (cached on disk: no run pays for tokenizing) and check its sizes."""
    from autofednlp.client.worker import client_data
    from autofednlp.config import load_config

    data = client_data(load_config(None, sets))
    sizes = {len(p) for p in data.partitions}
    holdouts = {len(data.validation), len(data.test)}
    if sizes != {args.samples_per_client} or holdouts != {args.holdout_samples}:
        sys.exit(f"data check failed: client sizes {sorted(sizes)}, hold-out sizes {holdouts}")


def sample_tree(root: psutil.Process, peak: dict, done: threading.Event) -> None:
    """Peak RSS of `root` + descendants and of `root`; `root`'s CPU s. Until `done` or exit."""
    while not done.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
            peak["server_cpu_s"] = sum(root.cpu_times()[:2])
        except psutil.Error:
            return
        rss = {}
        for p in procs:
            with contextlib.suppress(psutil.Error):  # exited between listing and reading
                rss[p.pid] = p.memory_info().rss / 2**20
        peak["peak_rss_tree_mb"] = max(peak["peak_rss_tree_mb"], sum(rss.values()))
        peak["peak_rss_server_mb"] = max(peak["peak_rss_server_mb"], rss.get(root.pid, 0))
        peak["peak_processes"] = max(peak["peak_processes"], len(procs))
        done.wait(0.25)


def run_once(sets: list[str], run_dir: Path, log_path: Path) -> dict:
    """One `autofednlp run` subprocess: its peaks, wall time and seconds per round."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [str(CLI), "run", "--quiet", "--run-dir", str(run_dir)]
    cmd += [a for s in sets for a in ("--set", s)]
    r = dict.fromkeys(["peak_rss_tree_mb", "peak_rss_server_mb", "peak_processes"], 0)
    done, t0 = threading.Event(), time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        sampler = threading.Thread(target=sample_tree, args=(psutil.Process(proc.pid), r, done))
        sampler.start()
        r["returncode"] = proc.wait()
    r["total_s"] = time.monotonic() - t0
    done.set()
    sampler.join()
    if r["returncode"] == 0 and (run_dir / "rounds.csv").exists():
        rounds = csv.DictReader((run_dir / "rounds.csv").read_text().splitlines())
        wall = [float(row["wall_time_s"]) for row in rounds]
        r["round_s"] = [b - a for a, b in zip([0.0, *wall], wall)]
        r["first_round_s"] = r["round_s"][0]
        r["later_round_median_s"] = statistics.median(r["round_s"][1:] or r["round_s"])
    return r


def summarize(runs: list[dict], sizes: list[int]) -> list[dict]:
    rows = []
    for clients in sizes:
        ok = [r for r in runs if r["clients"] == clients and "first_round_s" in r]
        if ok:
            row = {k: statistics.median(r[k] for r in ok) for k, _, _ in COLUMNS}
            rows.append(row | {"clients": clients, "repeats_ok": len(ok)})
    if len(rows) == 2:
        ratio = {k: rows[1][k] / rows[0][k] if rows[0][k] else None for k, _, _ in COLUMNS}
        rows.append(ratio | {"clients": f"ratio {sizes[1]}/{sizes[0]}"})
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'clients':<14}" + "".join(f"  {title}" for _, title, _ in COLUMNS[1:])
    lines = [head, "-" * len(head)]
    for row in rows:
        ratio = isinstance(row["clients"], str)
        line = f"{row['clients']:<14}"
        for key, title, spec in COLUMNS[1:]:
            v = row[key]
            line += f"  {'-' if v is None else format(v, '.2f' if ratio else spec):>{len(title)}}"
        lines.append(line)
    return "\n".join(lines)


def write_results(runs: list[dict], args: argparse.Namespace, n: int, out: Path) -> list[dict]:
    rows = summarize(runs, args.clients)
    (out / "table.txt").write_text(format_table(rows) + "\n")
    info = {"args": vars(args), "sentences": n, "runs": runs, "table": rows}
    (out / "scale.json").write_text(json.dumps(info, indent=1))
    with open(out / "scale.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RUN_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(runs)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, nargs=2, default=[100, 1000], help="the two sizes")
    for flag, default in [("samples-per-client", 30), ("clients-per-round", 15), ("rounds", 5)]:
        p.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--holdout-samples", type=int, default=500, help="validation and test, each")
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--max-length", type=int, default=64, help="tokens per sample")
    p.add_argument("--repeats", type=int, default=2, help="round-robin repeats of each size")
    p.add_argument("--out", default="benchmarks/results/scale")
    p.add_argument("--set", action="append", default=[], help="extra config override")
    args = p.parse_args()
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AUTOFEDNLP_CACHE", str(out / "cache"))  # for the subprocesses too
    dataset = out / "bbc_sentences.csv"
    n = write_sentences(dataset)
    print(f"{n} sentences in {dataset}", file=sys.stderr, flush=True)
    sets = {c: overrides(dataset, c, args) for c in args.clients}
    for c in args.clients:
        check_data(sets[c], args)
        print(f"data ok: {c} clients x {args.samples_per_client} samples", file=sys.stderr)
    runs, rows = [], []
    for rep in range(1, args.repeats + 1):
        for c in args.clients:
            print(f"[repeat {rep}/{args.repeats}] {c} clients ...", file=sys.stderr, flush=True)
            name = f"clients{c}-rep{rep}"
            r = run_once(sets[c], out / "runs" / name, out / "logs" / f"{name}.log")
            r |= {"clients": c, "repeat": rep, "samples_per_client": args.samples_per_client}
            runs.append(r)
            ok = "first_round_s" in r
            note = "    " + ", ".join(f"{k} {round(r[k], 1)}" for k in RUN_FIELDS[4:] if k in r)
            print(note if ok else f"    FAILED, see logs/{name}.log", file=sys.stderr, flush=True)
            rows = write_results(runs, args, n, out)  # after every run: partial results survive
    print((out / "table.txt").read_text())
    print(f"results in {out}/ (table.txt, scale.csv, scale.json)")
    return 0 if len(rows) == 3 else 1


if __name__ == "__main__":
    sys.exit(main())
