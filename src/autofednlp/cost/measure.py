"""Measure this machine's training throughput by timing the real model."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from autofednlp.cost.devices import DeviceProfile
from autofednlp.cost.flops import train_step_flops
from autofednlp.runtime import CPU, Runtime, backward_and_step, oom_guard


def measure_profile(
    name: str = "this-machine",
    model_name: str = "minilm",
    batch: int = 4,
    seq_len: int = 128,
    steps: int = 5,
    runtime: Runtime = CPU,
) -> DeviceProfile:
    """Time full fine-tuning steps (forward + backward + optimizer) of `model_name` at
    `batch` x `seq_len` on `runtime` and divide the FLOPs our counter gives by the median step
    time. On a GPU this is the profile a cross-silo client with that GPU can report."""
    from autofednlp.model.build import build_model, model_shape
    from autofednlp.model.kinds import TuneSpec

    spec = TuneSpec("full", 0)
    model = build_model(model_name, 2, spec, seed=0).to(runtime.device)
    model.train()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5)
    scaler = runtime.grad_scaler()
    ids, mask, labels = runtime.to_device(
        torch.randint(1000, 5000, (batch, seq_len)),
        torch.ones(batch, seq_len, dtype=torch.long),
        torch.zeros(batch, dtype=torch.long),
    )
    times = []
    with oom_guard(None, runtime.device, f"timing {model_name} at batch {batch}"):
        for i in range(steps + 1):
            runtime.synchronize()
            t0 = time.perf_counter()
            with runtime.autocast():
                logits = model(ids, mask)
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            opt.zero_grad()
            backward_and_step(loss, opt, params, 0.0, scaler)
            runtime.synchronize()
            if i > 0:  # the first step pays for allocation and kernel selection
                times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    flops = train_step_flops(model_shape(model_name, 2), spec, batch, seq_len)
    where = (
        runtime.describe()
        if runtime.is_cuda
        else f"{platform.node()} ({torch.get_num_threads()} threads)"
    )
    if runtime.precision != "fp32" and not runtime.is_cuda:
        where += f", {runtime.precision}"
    return DeviceProfile(
        name,
        flops / step_s,
        f"measured: {model_name} full fine-tuning, batch {batch}, len {seq_len}: "
        f"{step_s:.3f} s/step on {where}",
    )


def this_machine_profile() -> DeviceProfile:
    """The measured profile of this machine, cached on disk per host and thread count."""
    cache = Path(os.environ.get("AUTOFEDNLP_CACHE", Path.home() / ".cache" / "autofednlp"))
    path = cache / f"profile-{platform.node()}-{torch.get_num_threads()}t.json"
    if path.exists():
        try:
            return DeviceProfile.load(path)
        except ValueError:
            pass
    profile = measure_profile()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(profile.__dict__) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return profile
