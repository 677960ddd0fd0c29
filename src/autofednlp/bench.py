"""Real client training steps on this CPU: full fine-tuning vs adapters vs adapters + cache.

Every variant trains the packaged MiniLM on the same batch of BBC News articles. Steps are
timed round-robin (one step of each variant in turn, repeated), so a busy machine slows all of
them alike, and the table reports medians and ratios to the full fine-tuning step.

    .venv/bin/autofednlp bench [--batch 4] [--seq-len 128] [--repeats 15]
    .venv/bin/python benchmarks/step_time.py   (the same)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from autofednlp.client.cache import ActivationCache  # noqa: E402
from autofednlp.config import DataConfig  # noqa: E402
from autofednlp.data.federated import load_federated_data  # noqa: E402
from autofednlp.data.tokenize import trim_batch  # noqa: E402
from autofednlp.model.build import build_model, resolve_model_path  # noqa: E402
from autofednlp.model.kinds import TuneSpec  # noqa: E402


def make_step(spec: TuneSpec, ids, mask, labels, cache: ActivationCache | None):
    model = build_model("minilm", 5, spec, seed=0)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    boundary = spec.boundary(model.num_layers)
    sample_ids = torch.arange(len(ids))
    if cache is not None:  # fill once, as the first pass over these samples would
        cache.hidden_for(model, boundary, sample_ids, ids, mask)

    def step() -> None:
        if cache is None:
            logits = model(ids, mask, boundary=boundary)
        else:
            hidden, _ = cache.hidden_for(model, boundary, sample_ids, ids, mask)
            logits = model(ids, mask, boundary=boundary, boundary_hidden=hidden)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=4, help="batch size (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens (default: %(default)s)")
    p.add_argument("--width", type=int, default=32, help="adapter width (default: %(default)s)")
    p.add_argument(
        "--repeats", type=int, default=15, help="timed round-robin passes (default: %(default)s)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    data = load_federated_data(
        DataConfig(max_length=args.seq_len), resolve_model_path("minilm"), seed=0
    )
    ids, mask = trim_batch(
        data.train.input_ids[: args.batch], data.train.attention_mask[: args.batch]
    )
    labels = data.train.labels[: args.batch]
    tmp = tempfile.mkdtemp(prefix="autofednlp-step-")
    variants = {"full fine-tuning": make_step(TuneSpec("full", 0), ids, mask, labels, None)}
    for d in (1, 2, 4, 6):
        spec = TuneSpec("bottleneck", d, args.width)
        variants[f"adapters d={d}"] = make_step(spec, ids, mask, labels, None)
        cache = ActivationCache(f"bench-{d}", tmp)
        variants[f"adapters d={d} + cache"] = make_step(spec, ids, mask, labels, cache)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for step in variants.values():  # warm-up: allocation, kernel choice
        step()
    for _ in range(args.repeats):
        for name, step in variants.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    full = statistics.median(times["full fine-tuning"])
    print(
        f"MiniLM-L6, batch {args.batch} x {ids.shape[1]} tokens, width {args.width}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} round-robin steps"
    )
    print(f"{'variant':<24} {'ms/step':>9} {'speed-up vs full':>17}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<24} {med * 1000:>9.1f} {full / med:>16.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
