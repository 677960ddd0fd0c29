"""ε of client-level DP so far, by Flower's `RdpAccountant` (Rényi DP, Google's dp-accounting).

Every round is one release per trial group, each the noised sum of its own clients' clipped
updates; the groups are disjoint, so a client is in at most one of them and the round is one
sampled Gaussian mechanism over all clients, with the round's sampled clients (all groups
together) as its sample. Assumptions, stated as the accountant's model:

- central, `sampling = "without_replacement"` (default): what the server does, a fixed number
  of clients drawn uniformly without replacement each round, independently of the data. The
  accountant then needs neighbouring datasets that replace one client (Wang et al., 2019), and
  replacing a client moves its group's sum by up to 2 x clip_norm, so the noise multiplier
  relative to that sensitivity is noise_multiplier / 2.
- central, `sampling = "poisson"`: each client in independently with probability
  clients / num_clients, neighbours add or remove a client (sensitivity clip_norm). The usual
  figure in papers (DP-FedAvg, Opacus), but our sampler draws a fixed number, so it is an
  approximation.
- local: the server sees each noised update and who sent it, so sampling does not amplify
  privacy: ε is that of the client that took part most often so far, its releases composed
  without amplification (a client's update moves by up to 2 x clip_norm).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any

from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    RdpAccountant,
    SamplingMethod,
)
from flwr.serverapp import PrivacyConfig as FlowerPrivacyConfig

from autofednlp.config import PrivacyConfig

# dp-accounting warns, through absl, for each fractional RDP order it leaves out (Poisson)
logging.getLogger("absl").setLevel(logging.ERROR)

MODELS = {
    "without_replacement": (SamplingMethod.WITHOUT_REPLACEMENT, NeighboringRelation.REPLACE_ONE),
    "poisson": (SamplingMethod.POISSON, NeighboringRelation.ADD_OR_REMOVE_ONE),
    "local": (SamplingMethod.NO_AMPLIFICATION, NeighboringRelation.ADD_OR_REMOVE_ONE),
}


class PrivacyLedger:
    """Counts every participation of every client, in any trial group, and says ε at δ."""

    def __init__(self, cfg: PrivacyConfig, num_clients: int) -> None:
        self.cfg = cfg
        self.num_clients = num_clients
        self.model = "local" if cfg.mode == "local" else cfg.sampling
        # the noise multiplier relative to the sensitivity the model's neighbours imply
        halve = self.model != "poisson"
        self.sigma = cfg.noise_multiplier / 2 if halve else cfg.noise_multiplier
        self.participations: Counter[int] = Counter()
        self.round_sizes: list[int] = []
        self._epsilon: float | None = None

    def record(self, clients: list[int]) -> None:
        """One round: the clients sampled into it, all groups together."""
        if clients:
            self.participations.update(clients)
            self.round_sizes.append(len(clients))
        self._epsilon = None

    def accountant(self) -> RdpAccountant | None:
        """Flower's accountant with this run's releases composed; None without noise."""
        if self.sigma <= 0 or not self.round_sizes:
            return None
        method, relation = MODELS[self.model]
        acc = RdpAccountant(FlowerPrivacyConfig(self.cfg.delta, self.num_clients, relation, method))
        if self.model == "local":
            most = max(self.participations.values())
            acc.compose(GaussianPrivacyEvent(self.sigma, 1, self.num_clients), most)
        else:
            for size, count in Counter(self.round_sizes).items():
                acc.compose(GaussianPrivacyEvent(self.sigma, size, self.num_clients), count)
        return acc

    def epsilon(self) -> float:
        """ε at `privacy.delta` after the rounds so far (inf without noise, 0 before any)."""
        if self._epsilon is None:
            if not self.round_sizes:
                self._epsilon = 0.0
            else:
                acc = self.accountant()
                self._epsilon = math.inf if acc is None else acc.get_epsilon(self.cfg.delta)
        return self._epsilon

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.cfg.mode,
            "epsilon": self.epsilon(),
            "delta": self.cfg.delta,
            "noise_multiplier": self.cfg.noise_multiplier,
            "clip_norm": self.cfg.clip_norm,
            "accountant": f"RDP (Flower RdpAccountant, dp-accounting), {self.model} sampling",
            "rounds": len(self.round_sizes),
            "max_participations": max(self.participations.values(), default=0),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"participations": dict(self.participations), "round_sizes": list(self.round_sizes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.participations = Counter(state["participations"])
        self.round_sizes = list(state["round_sizes"])
        self._epsilon = None
