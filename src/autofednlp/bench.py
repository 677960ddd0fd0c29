"""Real client training steps here: full fine-tuning vs adapters vs adapters + cache.

Every variant trains the packaged MiniLM (or `--model`) on the same batch of BBC News articles,
on this CPU or `--device cuda`. Steps are timed round-robin (one step of each variant in turn,
repeated), so a busy machine slows all of them alike, and the table reports medians and ratios
to the full fine-tuning step. On a GPU each step is timed to its end (synchronized).

    .venv/bin/autofednlp bench [--batch 4] [--seq-len 128] [--repeats 15] [--device cuda]
    .venv/bin/python benchmarks/step_time.py   (the same)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from autofednlp.client.cache import ActivationCache  # noqa: E402
from autofednlp.config import DataConfig  # noqa: E402
from autofednlp.config.sections import PRECISIONS  # noqa: E402
from autofednlp.data.federated import load_federated_data  # noqa: E402
from autofednlp.data.tokenize import trim_batch  # noqa: E402
from autofednlp.model.build import build_model, resolve_model_path  # noqa: E402
from autofednlp.model.kinds import TuneSpec  # noqa: E402
from autofednlp.runtime import (  # noqa: E402
    Runtime,
    backward_and_step,
    oom_guard,
    resolve_device,
)


def make_step(
    spec: TuneSpec,
    ids,
    mask,
    labels,
    cache: ActivationCache | None,
    runtime: Runtime,
    model_name: str = "minilm",
):
    model = build_model(model_name, 5, spec, seed=0).to(runtime.device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    scaler = runtime.grad_scaler()
    boundary = spec.boundary(model.num_layers)
    sample_ids = torch.arange(len(ids))
    if cache is not None:  # fill once, as the first pass over these samples would
        with runtime.autocast():
            cache.hidden_for(model, boundary, sample_ids, ids, mask)

    def step() -> None:
        with runtime.autocast():
            if cache is None:
                logits = model(ids, mask, boundary=boundary)
            else:
                hidden, _ = cache.hidden_for(model, boundary, sample_ids, ids, mask)
                logits = model(ids, mask, boundary=boundary, boundary_hidden=hidden)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        backward_and_step(loss, opt, params, 0.0, scaler)

    return step


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=4, help="batch size (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens (default: %(default)s)")
    p.add_argument("--width", type=int, default=32, help="adapter width (default: %(default)s)")
    p.add_argument(
        "--repeats", type=int, default=15, help="timed round-robin passes (default: %(default)s)"
    )
    p.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: %(default)s)"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32, or bf16/fp16 autocast (default: %(default)s)",
    )
    p.add_argument(
        "--model",
        default="minilm",
        help="encoder: minilm (packaged) or a local model directory (default: %(default)s)",
    )
    p.add_argument("--json", help="also write the medians (ms/step) to this file")
    p.add_argument(
        "--depths",
        default="1,2,4,6",
        help="adapter depths to time, comma-separated (default: %(default)s)",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    runtime = Runtime(resolve_device(args.device, "--device"), args.precision)
    data = load_federated_data(
        DataConfig(max_length=args.seq_len), resolve_model_path("minilm"), seed=0
    )
    ids, mask = trim_batch(
        data.train.input_ids[: args.batch], data.train.attention_mask[: args.batch]
    )
    ids, mask, labels = runtime.to_device(ids, mask, data.train.labels[: args.batch])
    tmp = tempfile.mkdtemp(prefix="autofednlp-step-")
    with oom_guard(None, runtime.device, f"timing steps at batch {args.batch}"):
        times = _time_variants(args, runtime, ids, mask, labels, tmp)
    full = statistics.median(times["full fine-tuning"])
    where = runtime.describe() if runtime.is_cuda else f"{torch.get_num_threads()} threads"
    if not runtime.is_cuda and runtime.precision != "fp32":
        where += f", {runtime.precision}"
    name_of_model = "MiniLM-L6" if args.model == "minilm" else args.model
    print(
        f"{name_of_model}, batch {args.batch} x {ids.shape[1]} tokens, width {args.width}, "
        f"{where}, median of {args.repeats} round-robin steps"
    )
    print(f"{'variant':<24} {'ms/step':>9} {'speed-up vs full':>17}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<24} {med * 1000:>9.1f} {full / med:>16.2f}x")
    if args.json:
        medians = {name: statistics.median(ts) * 1000 for name, ts in times.items()}
        record = {
            "model": name_of_model,
            "batch": args.batch,
            "tokens": int(ids.shape[1]),
            "runtime": runtime.describe(),
            "ms_per_step": medians,
        }
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return 0


def _time_variants(args, runtime: Runtime, ids, mask, labels, tmp: str) -> dict[str, list[float]]:
    def step_for(spec: TuneSpec, cache: ActivationCache | None):
        return make_step(spec, ids, mask, labels, cache, runtime, args.model)

    variants = {"full fine-tuning": step_for(TuneSpec("full", 0), None)}
    for d in (int(x) for x in str(args.depths).split(",") if x.strip()):
        spec = TuneSpec("bottleneck", d, args.width)
        variants[f"adapters d={d}"] = step_for(spec, None)
        cache = ActivationCache(f"bench-{d}", tmp)
        variants[f"adapters d={d} + cache"] = step_for(spec, cache)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for step in variants.values():  # warm-up: allocation, kernel choice
        step()
    for _ in range(args.repeats):
        for name, step in variants.items():
            runtime.synchronize()
            t0 = time.perf_counter()
            step()
            runtime.synchronize()
            times[name].append(time.perf_counter() - t0)
    return times


if __name__ == "__main__":
    sys.exit(main())
