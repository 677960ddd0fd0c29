"""The hardware that runs the simulation: one place decides the torch device and precision.

Not to be confused with the simulated clients' devices (`cost.devices`: Jetson, Raspberry Pi),
which only set the simulated clock. The cost model counts FLOPs, so the device and precision
chosen here change wall time (and float rounding), never simulated time, traffic or energy.

Clients' models, local training, evaluation and the server's frozen features take a `Runtime`
from `runtime_for(cfg)`; nothing else calls `.cuda()`. The activation cache stays in CPU memory
and on disk and hands back batches on the device of the batch it is given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from autofednlp.config import ConfigError, ExperimentConfig
from autofednlp.config.sections import PRECISIONS

_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, field: str = "runtime.device") -> torch.device:
    """`auto` (CUDA if this machine has it, else CPU), `cpu`, `cuda` or `cuda:N`.

    Asking for CUDA where there is none is a `ConfigError` (one line), not a torch traceback.
    """
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    index_text = name[len("cuda:") :] if name.startswith("cuda:") else None
    if name != "cuda" and not (index_text and index_text.isdigit()):
        raise ConfigError(f"{field} = {name!r}: must be auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        why = "torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise ConfigError(f"{field} = {name!r}: no CUDA here ({why}); use auto or cpu")
    count = torch.cuda.device_count()
    if index_text is not None and int(index_text) >= count:
        last = f"cuda:{count - 1}"
        raise ConfigError(f"{field} = {name!r}: this machine has {count} GPU(s), cuda:0..{last}")
    return torch.device(name)


@dataclass(frozen=True)
class Runtime:
    """A torch device and a precision: fp32 (exact, the default), or bf16/fp16 autocast for
    the forward passes of training and evaluation (weights and optimizer stay fp32)."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"runtime.precision = {self.precision!r}: must be one of {', '.join(PRECISIONS)}"
            )

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Where the forward pass runs. fp32 is a no-op context, so its results are exactly
        those of code without it."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPE[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and
        needs none."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def to_device(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tensors on this device (the same objects when they are there already)."""
        return tuple(t.to(self.device, non_blocking=True) for t in tensors)

    def synchronize(self) -> None:
        """Wait for queued GPU work: needed before reading a wall clock around it."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def describe(self) -> str:
        where = str(self.device)
        if self.is_cuda:
            where += f" ({torch.cuda.get_device_name(self.device)})"
        return f"{where}, {self.precision}"


CPU = Runtime()


@lru_cache(maxsize=8)
def _runtime(device: str, precision: str) -> Runtime:
    rt = Runtime(resolve_device(device), precision)
    if rt.is_cuda and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"runtime.precision = 'bf16': {rt.describe()} does not support it")
    return rt


def runtime_for(cfg: ExperimentConfig) -> Runtime:
    """The runtime `cfg.runtime` asks for, on this machine (resolved once per process)."""
    return _runtime(cfg.runtime.device, cfg.runtime.precision)


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def client_gpu_share(cfg: ExperimentConfig) -> float:
    """The GPU share of one client actor on Flower's simulation engine (`client-resources`
    num_gpus): `runtime.gpus_per_client` when the run uses CUDA, else 0. Ray then runs at
    most 1 / share actors per GPU and shows each only its GPU, where `auto` finds it."""
    if not runtime_for(cfg).is_cuda:
        return 0.0
    share, gpus = cfg.runtime.gpus_per_client, visible_gpus()
    if share > gpus:
        raise ConfigError(f"runtime.gpus_per_client = {share}: this machine has {gpus} GPU(s)")
    return share


def backward_and_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    max_grad_norm: float,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Backward, clip (0 = off) and step; with a `scaler` (fp16), on the scaled loss, the
    gradients unscaled before clipping, and the step skipped when they overflowed."""
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    if max_grad_norm > 0:
        nn.utils.clip_grad_norm_(params, max_grad_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


class OutOfDeviceMemory(ConfigError):
    """The GPU ran out of memory: the one-line message says which option to lower."""


def oom_message(cfg: ExperimentConfig | None, device: torch.device | str, what: str) -> str:
    if cfg is None:
        return f"{device} ran out of memory while {what}: lower --batch or --seq-len"
    c = cfg.client
    parts = [
        f"client.batch_size (now {c.batch_size})",
        f"data.max_length (now {cfg.data.max_length})",
    ]
    if cfg.federation.engine == "simulation":
        share = cfg.runtime.gpus_per_client
        parts.append(f"the clients per GPU (raise runtime.gpus_per_client, now {share})")
    hint = "" if cfg.runtime.precision != "fp32" else "; runtime.precision = bf16 also helps"
    return f"{device} ran out of memory while {what}: lower {', '.join(parts)}{hint}"


@contextlib.contextmanager
def oom_guard(
    cfg: ExperimentConfig | None, device: torch.device | str, what: str
) -> Iterator[None]:
    """Turn CUDA's out-of-memory error into `OutOfDeviceMemory` (a one-line user error)."""
    try:
        yield
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfDeviceMemory(oom_message(cfg, device, what)) from None
