"""How a group's checked client updates become its new weights, in two steps.

1. `average`: FedAvg (example-weighted, float64: today's results exactly); with central DP,
   Flower's clipped, noised equal-weight mean instead (`flower_strategies.central_dp_mean`).
2. `step`: the configuration's server optimizer (Flower's FedAdam, FedYogi or FedAvgM) moves
   the weights the group received towards that average; fedavg and fedprox take the average.

Server optimizer state is kept per configuration (its label), because trial groups train
several configurations side by side. A configuration grown from another starts from that
one's state with the new capacity's state at zero (`grow`), as function-preserving growth does
for the weights: every grown tensor holds the old one as its leading slice.
"""

from __future__ import annotations

from typing import Any

import torch

from autofednlp.config import ExperimentConfig
from autofednlp.server.aggregate import fedavg
from autofednlp.server.flower_strategies import central_dp_mean, noise_rng, server_optimizer

State = dict[str, torch.Tensor]
Updates = list[tuple[State, float]]


def _lead(t: torch.Tensor) -> tuple[slice, ...]:
    return tuple(slice(0, n) for n in t.shape)


def embed(small: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Zeros shaped like `like` with `small` (if any) as their leading slice."""
    out = torch.zeros_like(like)
    if small is not None:
        out[_lead(small)] = small.to(like.dtype)
    return out


class GroupAggregator:
    """Averages a group's updates and applies its configuration's server optimizer."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.privacy = cfg.privacy
        self.optimizer = server_optimizer(cfg.aggregation)
        self.moments: dict[str, dict[str, State]] = {}  # configuration label -> moments
        self.rng = noise_rng(cfg.seed) if cfg.privacy.mode == "central" else None

    def average(
        self, reference: State, updates: Updates, server_round: int
    ) -> tuple[State, Updates]:
        """The group's average, and what a shared trunk may be averaged from: the updates
        themselves, or under central DP the group's noised average weighted by its clients
        (the raw updates are not private; averaging the groups' releases is)."""
        if self.privacy.mode != "central":
            return fedavg(updates), updates
        p = self.privacy
        states = [s for s, _ in updates]
        avg = central_dp_mean(
            reference, states, p.clip_norm, p.noise_multiplier, self.rng, server_round
        )
        return avg, [(avg, float(len(states)))]

    def step(self, key: str, reference: State, average: State, server_round: int) -> State:
        """The new weights of configuration `key`, from those its clients received."""
        if self.optimizer is None:
            return average
        new, self.moments[key] = self.optimizer.step(
            server_round, reference, average, self.moments.get(key, {})
        )
        return new

    def grow(self, old_key: str, new_key: str, new_reference: State) -> None:
        """Configuration `new_key`, grown from `old_key`, starts from its optimizer state, the
        new capacity's at zero (a candidate tried before starts afresh from the current)."""
        old = self.moments.get(old_key)
        if not old:
            self.moments.pop(new_key, None)
            return
        self.moments[new_key] = {
            name: {k: embed(m.get(k), ref) for k, ref in new_reference.items()}
            for name, m in old.items()
        }

    def share(self, from_key: str, to_key: str) -> None:
        """`to_key`'s optimizer state takes `from_key`'s on the leading slices: a robust
        trial's candidates share the current configuration's trunk, and its state with it."""
        src, dst = self.moments.get(from_key), self.moments.get(to_key)
        if not src or not dst:
            return
        for name, m in src.items():
            for k, t in m.items():
                if k in dst.get(name, {}):
                    dst[name][k][_lead(t)] = t

    def state_dict(self) -> dict[str, Any]:
        return {"moments": self.moments, "rng": self.rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.moments = state.get("moments", {})
        if state.get("rng") is not None:
            self.rng = state["rng"]
