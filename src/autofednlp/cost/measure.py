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


def measure_profile(
    name: str = "this-machine",
    model_name: str = "minilm",
    batch: int = 4,
    seq_len: int = 128,
    steps: int = 5,
) -> DeviceProfile:
    """Time full fine-tuning steps (forward + backward + optimizer) of `model_name` at
    `batch` x `seq_len` and divide the FLOPs our counter gives by the median step time."""
    from autofednlp.model.build import build_model, model_shape
    from autofednlp.model.kinds import TuneSpec

    spec = TuneSpec("full", 0)
    model = build_model(model_name, 2, spec, seed=0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(1000, 5000, (batch, seq_len))
    mask = torch.ones_like(ids)
    labels = torch.zeros(batch, dtype=torch.long)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(ids, mask), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i > 0:  # the first step pays for allocation and kernel selection
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    flops = train_step_flops(model_shape(model_name, 2), spec, batch, seq_len)
    return DeviceProfile(
        name,
        flops / step_s,
        f"measured: {model_name} full fine-tuning, batch {batch}, len {seq_len}: "
        f"{step_s:.3f} s/step on {platform.node()} ({torch.get_num_threads()} threads)",
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
