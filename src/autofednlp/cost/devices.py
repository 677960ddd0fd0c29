"""Device profiles: how many training FLOPs per second a device sustains.

The built-in profiles are calibrated on the published per-batch latency of full fine-tuning
BERT-base (batch 4, 256 tokens) in Cai et al., "AutoFedNLP" (arXiv 2205.10162), Sec. 2:
Jetson TX2 1.86 s, Raspberry Pi 4B 34.02 s, Jetson Nano about 2x TX2. Dividing the FLOPs our
counter gives for that step by the latency gives an effective rate that carries over to other
model sizes, depths and sequence lengths.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from autofednlp.config import ConfigError, ExperimentConfig
from autofednlp.cost.flops import BERT_BASE, train_step_flops
from autofednlp.model.spec import TuneSpec

CALIBRATION_BATCH = 4
CALIBRATION_SEQ_LEN = 256

# Seconds per full fine-tuning step of BERT-base at batch 4, length 256 (paper, Sec. 2).
PUBLISHED_FULL_FT_STEP_S = {
    "jetson-tx2": 1.86,
    "jetson-nano": 2 * 1.86,
    "rpi4": 34.02,
}


def calibration_flops() -> float:
    """FLOPs of the calibration workload: one full fine-tuning step of BERT-base."""
    return train_step_flops(
        BERT_BASE,
        TuneSpec("full", BERT_BASE.num_layers),
        CALIBRATION_BATCH,
        CALIBRATION_SEQ_LEN,
    )


@dataclass(frozen=True)
class DeviceProfile:
    """A device's sustained training throughput and where that number comes from."""

    name: str
    flops_per_s: float
    source: str

    def compute_s(self, flops: float) -> float:
        return flops / self.flops_per_s

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @staticmethod
    def load(path: str | Path) -> DeviceProfile:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            return DeviceProfile(str(data["name"]), float(data["flops_per_s"]), str(data["source"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"device profile {str(p)!r} is not a valid profile: {e}") from None


def _published(name: str) -> DeviceProfile:
    step_s = PUBLISHED_FULL_FT_STEP_S[name]
    return DeviceProfile(
        name,
        calibration_flops() / step_s,
        f"BERT-base full fine-tuning, batch 4, len 256: {step_s:.2f} s/step (arXiv 2205.10162)",
    )


_REGISTRY: dict[str, DeviceProfile] = {n: _published(n) for n in PUBLISHED_FULL_FT_STEP_S}


def register(profile: DeviceProfile) -> None:
    """Add a profile (e.g. one measured by `autofednlp profile`); names are unique."""
    if profile.name in _REGISTRY and _REGISTRY[profile.name] != profile:
        raise ValueError(f"device profile {profile.name!r} is already registered")
    _REGISTRY[profile.name] = profile


def available() -> list[str]:
    return sorted(set(_REGISTRY) | {"this-machine"})


def get_profile(name: str) -> DeviceProfile:
    """A profile by name; `this-machine` is measured on first use (and cached on disk)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name == "this-machine":
        from autofednlp.cost.measure import this_machine_profile

        profile = this_machine_profile()
        _REGISTRY[name] = profile
        return profile
    if name.endswith(".json"):
        profile = DeviceProfile.load(name)
        _REGISTRY.setdefault(profile.name, profile)
        return profile
    raise ConfigError(
        f"cost.devices: unknown device {name!r} (known: {', '.join(available())}, "
        "or a profile .json file)"
    )


def assign_devices(num_clients: int, mix: dict[str, float], seed: int) -> list[str]:
    """Give each client a device name so that the shares follow `mix` (largest remainder),
    in a seeded random order."""
    total = sum(mix.values())
    names = sorted(mix)
    exact = {n: mix[n] / total * num_clients for n in names}
    counts = {n: int(exact[n]) for n in names}
    short = num_clients - sum(counts.values())
    for n in sorted(names, key=lambda n: (counts[n] - exact[n], n))[:short]:
        counts[n] += 1
    devices = [n for n in names for _ in range(counts[n])]
    random.Random(seed).shuffle(devices)
    return devices


def client_device(cfg: ExperimentConfig, partition_id: int) -> str:
    """The device profile a client runs on: drawn from the configured mix by client id."""
    return assign_devices(cfg.data.num_clients, cfg.cost.devices, cfg.seed)[partition_id]
