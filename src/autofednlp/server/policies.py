"""AutoFedNLP's policies as small named objects: which candidates a trial tries, how its
time budget is set, and how its winner is picked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from autofednlp.config import StrategyConfig
from autofednlp.model.kinds import TuneSpec


@dataclass(frozen=True)
class Candidate:
    name: str
    spec: TuneSpec


class CandidatePolicy(Protocol):
    def __call__(self, current: TuneSpec) -> list[Candidate]:
        """Candidates for the next trial, `keep` first; configurations only grow."""


@dataclass(frozen=True)
class Caps:
    max_depth: int
    max_width: int

    def allows(self, spec: TuneSpec) -> bool:
        return spec.depth <= self.max_depth and spec.width <= self.max_width


def _distinct(current: TuneSpec, options: list[Candidate], caps: Caps) -> list[Candidate]:
    """Drop candidates over the caps and those that train exactly what `keep` trains (at depth
    0 there are no adapters, so a wider one is the same model)."""
    out = [Candidate("keep", current)]
    for c in options:
        effective = c.spec if c.spec.depth > 0 else TuneSpec(c.spec.kind, 0, current.width)
        if caps.allows(c.spec) and effective not in [o.spec for o in out]:
            out.append(c)
    return out


@dataclass(frozen=True)
class Upgrade:
    """The published candidate set: keep, deeper (depth + step), wider (width + step)."""

    depth_step: int
    width_step: int
    caps: Caps

    def __call__(self, current: TuneSpec) -> list[Candidate]:
        k, d, w = current.kind, current.depth, current.width
        return _distinct(
            current,
            [
                Candidate("deeper", TuneSpec(k, d + self.depth_step, w)),
                Candidate("wider", TuneSpec(k, d, w + self.width_step)),
            ],
            self.caps,
        )


@dataclass(frozen=True)
class UpgradeJoint(Upgrade):
    """Upgrade plus a candidate that is both deeper and wider."""

    def __call__(self, current: TuneSpec) -> list[Candidate]:
        k, d, w = current.kind, current.depth, current.width
        both = Candidate("deeper+wider", TuneSpec(k, d + self.depth_step, w + self.width_step))
        return _distinct(current, [*super().__call__(current)[1:], both], self.caps)


CANDIDATE_POLICIES = {"upgrade": Upgrade, "upgrade-joint": UpgradeJoint}


def candidate_policy(cfg: StrategyConfig, num_layers: int) -> CandidatePolicy:
    max_depth = min(cfg.max_depth or num_layers, num_layers)
    return CANDIDATE_POLICIES[cfg.candidates](
        cfg.depth_step, cfg.width_step, Caps(max_depth, cfg.max_width)
    )


@dataclass(frozen=True)
class GroupOutcome:
    """What a group reached in a trial: validation accuracy after each of its rounds, and the
    group's simulated time at each."""

    name: str
    accuracies: list[float]
    times_s: list[float]
    start_accuracy: float


def best_accuracy(o: GroupOutcome) -> float:
    """The best validation accuracy the group reached within the budget."""
    return max(o.accuracies, default=o.start_accuracy)


def gain_per_s(o: GroupOutcome) -> float:
    """Accuracy gained over the trial's start, per simulated second, at the group's best."""
    if not o.accuracies:
        return 0.0
    i = max(range(len(o.accuracies)), key=lambda j: (o.accuracies[j], -j))
    return (o.accuracies[i] - o.start_accuracy) / max(o.times_s[i], 1e-9)


WINNER_RULES = {"best_accuracy": best_accuracy, "gain_per_s": gain_per_s}


def pick_winner(outcomes: list[GroupOutcome], rule: str) -> int:
    """Index of the winning group: the highest score, compared as numbers; ties go to the
    earlier candidate (keep first, so a tie never grows the model)."""
    score = WINNER_RULES[rule]
    return max(range(len(outcomes)), key=lambda i: (score(outcomes[i]), -i))


def trial_budget_s(cfg: StrategyConfig, current: TuneSpec, first_round_s: list[float]) -> float:
    """Simulated seconds every group gets in a trial.

    `slowest`: `trial_rounds` rounds of the slowest candidate (its first round's duration
    measured on the cost model), so cheaper candidates fit more rounds in the same time.
    `paper`: T = base x (4 x depth + 1), the published code's rule (base 60-100 s there).
    """
    if cfg.budget == "paper":
        return cfg.trial_base_s * (4 * current.depth + 1)
    return cfg.trial_rounds * max(first_round_s)
