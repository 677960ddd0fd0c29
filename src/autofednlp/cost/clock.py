"""Simulated time and energy: what a round costs on the devices and links being modelled."""

from __future__ import annotations

from dataclasses import dataclass

from autofednlp.config import CostConfig

BYTES_PER_MB = 1_000_000


@dataclass(frozen=True)
class ClientCost:
    """One client's share of one round, in simulated seconds and joules."""

    download_s: float
    compute_s: float
    upload_s: float
    energy_j: float
    bytes_down: int
    bytes_up: int

    @property
    def total_s(self) -> float:
        return self.download_s + self.compute_s + self.upload_s


def client_cost(cost: CostConfig, compute_s: float, bytes_down: int, bytes_up: int) -> ClientCost:
    """Download the model, train, upload the update; energy = power x time per activity."""
    down_s = bytes_down / (cost.download_mb_per_s * BYTES_PER_MB)
    up_s = bytes_up / (cost.upload_mb_per_s * BYTES_PER_MB)
    energy = cost.compute_watts * compute_s + cost.transmit_watts * (down_s + up_s)
    return ClientCost(down_s, compute_s, up_s, energy, bytes_down, bytes_up)


@dataclass(frozen=True)
class RoundCost:
    """A synchronous round lasts as long as its slowest sampled client."""

    duration_s: float
    energy_j: float
    bytes_down: int
    bytes_up: int
    compute_s: float  # sum over clients

    @staticmethod
    def of(costs: list[ClientCost], timeout_s: float | None = None) -> RoundCost:
        if not costs:
            return RoundCost(timeout_s or 0.0, 0.0, 0, 0, 0.0)
        duration = max(c.total_s for c in costs)
        return RoundCost(
            duration_s=duration,
            energy_j=sum(c.energy_j for c in costs),
            bytes_down=sum(c.bytes_down for c in costs),
            bytes_up=sum(c.bytes_up for c in costs),
            compute_s=sum(c.compute_s for c in costs),
        )


class SimClock:
    """Accumulates simulated seconds, energy and traffic over a run."""

    def __init__(self) -> None:
        self.time_s = 0.0
        self.energy_j = 0.0
        self.bytes_down = 0
        self.bytes_up = 0

    def advance(self, rc: RoundCost) -> None:
        self.time_s += rc.duration_s
        self.energy_j += rc.energy_j
        self.bytes_down += rc.bytes_down
        self.bytes_up += rc.bytes_up

    def state(self) -> dict[str, float]:
        return {
            "time_s": self.time_s,
            "energy_j": self.energy_j,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
        }
