"""AutoFedNLP's policies as small named objects: which candidates a trial tries, how its
time budget is set, and how its winner is picked."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from autofednlp.config import ExperimentConfig, StrategyConfig
from autofednlp.model.kinds import TuneSpec


@dataclass(frozen=True)
class Candidate:
    name: str
    spec: TuneSpec


class CandidatePolicy(Protocol):
    def __call__(self, current: TuneSpec, reach: int = 1) -> list[Candidate]:
        """Candidates for the next trial, `keep` first; configurations only grow. `reach`:
        how many depth steps a deeper candidate takes (within the depth cap)."""


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

    def deeper(self, depth: int, reach: int) -> int:
        """A deeper candidate's depth: `reach` steps down, but not past the cap (a step of 2
        one layer short of it stops there); at the cap, one past it (dropped)."""
        if depth >= self.caps.max_depth:
            return depth + self.depth_step
        return min(depth + self.depth_step * reach, self.caps.max_depth)

    def __call__(self, current: TuneSpec, reach: int = 1) -> list[Candidate]:
        k, d, w = current.kind, current.depth, current.width
        return _distinct(
            current,
            [
                Candidate("deeper", TuneSpec(k, self.deeper(d, reach), w)),
                Candidate("wider", TuneSpec(k, d, w + self.width_step)),
            ],
            self.caps,
        )


@dataclass(frozen=True)
class UpgradeJoint(Upgrade):
    """Upgrade plus a candidate that is both deeper and wider."""

    def __call__(self, current: TuneSpec, reach: int = 1) -> list[Candidate]:
        k, d, w = current.kind, current.depth, current.width
        both = Candidate("deeper+wider", TuneSpec(k, self.deeper(d, reach), w + self.width_step))
        return _distinct(current, [*super().__call__(current, reach)[1:], both], self.caps)


CANDIDATE_POLICIES = {"upgrade": Upgrade, "upgrade-joint": UpgradeJoint}


def candidate_policy(cfg: ExperimentConfig, num_layers: int) -> CandidatePolicy:
    st = cfg.strategy
    max_depth = min(st.max_depth or num_layers, num_layers)
    return CANDIDATE_POLICIES[st.candidates](
        cfg.depth_step, st.width_step, Caps(max_depth, st.max_width)
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


@dataclass
class StallDetector:
    """Says when the served model has stopped improving: `patience` evaluations in a row
    without a gain of `min_delta` over the best reading so far. A trial is worth its cost only
    then; while the current configuration still climbs, every client keeps training it."""

    patience: int
    min_delta: float
    best: float
    since_gain: int = 0

    def observe(self, reading: float) -> None:
        if reading >= self.best + self.min_delta:
            self.since_gain = 0
        else:
            self.since_gain += 1
        self.best = max(self.best, reading)

    @property
    def stalled(self) -> bool:
        return self.since_gain >= self.patience

    def restart(self) -> None:
        self.since_gain = 0


@dataclass
class TrialSchedule:
    """When the next robust trial is due: after `every` rounds of the current configuration,
    or after the stall detector's `patience` evaluations without a gain, both scaled by `scale`.

    A trial is an investment: its rounds last as long as the slowest candidate, and the served
    model trains beside capacity it may not keep. So the schedule follows the returns. After a
    candidate wins, the next trial comes sooner (scale 1/backoff), since the next step of a
    growth that just paid often pays too; after `keep` wins, the next one comes later (scale x
    backoff, up to `max_scale`), since trials that keep nothing cost time for nothing.
    `backoff = 1` gives a fixed cadence.

    With `wait_time`, the wait is also counted in simulated time: the next trial comes only
    once `scale` x the simulated time the last trial took has passed since it ended. Counted in
    rounds alone, trials take a growing share of the time as the current configuration's rounds
    get cheaper (a full activation cache makes a head-only round several times cheaper than a
    trial round, whose deeper candidates still compute); counted in time too, trials take at
    most 1/(1 + scale) of it.
    """

    every: int
    backoff: float
    max_scale: float = 4.0
    scale: float = 1.0
    wait_time: bool = False
    last_cost_s: float = 0.0  # simulated seconds the last trial took
    last_end_s: float = 0.0  # the simulated clock when it ended

    def due(self, since_trial: int, stall: StallDetector, now_s: float = 0.0) -> bool:
        periodic = self.every > 0 and since_trial >= math.ceil(self.every * self.scale)
        rounds = periodic or stall.since_gain >= math.ceil(stall.patience * self.scale)
        waited = not self.wait_time or now_s - self.last_end_s >= self.scale * self.last_cost_s
        return rounds and waited

    def after_trial(self, grew: bool, start_s: float = 0.0, end_s: float = 0.0) -> None:
        if grew:
            self.scale = 1.0 / self.backoff
        else:
            self.scale = min(max(self.scale, 1.0) * self.backoff, self.max_scale)
        self.last_cost_s, self.last_end_s = end_s - start_s, end_s

    def state(self) -> dict[str, float]:
        return {"scale": self.scale, "last_cost_s": self.last_cost_s, "last_end_s": self.last_end_s}

    def restore(self, saved: dict[str, float]) -> None:
        self.scale = saved.get("scale", 1.0)
        self.last_cost_s = saved.get("last_cost_s", 0.0)
        self.last_end_s = saved.get("last_end_s", 0.0)


def shared_average(
    keep: dict[str, torch.Tensor], updates: list[tuple[dict[str, torch.Tensor], float]]
) -> dict[str, torch.Tensor]:
    """FedAvg of the current configuration's tensors over the updates of every trial group.

    Every candidate grows from the current configuration by function-preserving growth, so
    each of its tensors holds the current one as its leading slice (a deeper candidate adds
    tensors, a wider one adds rows and columns). That slice is the shared trunk: averaging it
    over all groups' clients means no client's work on it is thrown away, and candidates
    differ from `keep` only in what they add.
    """
    total = float(sum(w for _, w in updates))
    out = {}
    for name, ref in keep.items():
        idx = tuple(slice(0, n) for n in ref.shape)
        acc = torch.zeros_like(ref, dtype=torch.float64)
        for state, w in updates:
            acc += state[name][idx].to(torch.float64) * (w / total)
        out[name] = acc.to(ref.dtype)
    return out


def overlay(state: dict[str, torch.Tensor], trunk: dict[str, torch.Tensor]) -> dict:
    """`state` with the leading slice of each of `trunk`'s tensors replaced by the trunk's."""
    out = {name: t.clone() for name, t in state.items()}
    for name, t in trunk.items():
        out[name][tuple(slice(0, n) for n in t.shape)] = t
    return out


@dataclass(frozen=True)
class PairedEvidence:
    """A candidate against `keep` on the same validation samples: the mean per-sample loss
    reduction (positive: the candidate is better), its standard error, and both readings of
    the target metric (accuracy; entity F1 for tagging)."""

    name: str
    gain: float
    stderr: float
    accuracy: float
    keep_accuracy: float

    def clearly_better(self, z: float) -> bool:
        return self.gain - z * self.stderr > 0 and self.accuracy >= self.keep_accuracy


def paired_evidence(
    name: str,
    keep_losses: list[torch.Tensor],
    cand_losses: list[torch.Tensor],
    keep_acc: list[float],
    cand_acc: list[float],
) -> PairedEvidence:
    """Per-sample losses of the last rounds of a trial (one tensor per round, same samples in
    the same order), averaged over those rounds before the paired comparison: a sample's
    difference then reflects the candidate's added capacity, not one round's client draw."""
    diff = (torch.stack(keep_losses) - torch.stack(cand_losses)).double().mean(0)
    n = diff.numel()
    stderr = float(diff.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.inf
    return PairedEvidence(
        name,
        float(diff.mean()),
        stderr,
        sum(cand_acc) / len(cand_acc),
        sum(keep_acc) / len(keep_acc),
    )


def pick_paired(
    evidence: list[PairedEvidence], z: float, also: list[PairedEvidence] | None = None
) -> int | None:
    """Index of the candidate that is clearly better than `keep` with the largest mean gain,
    or None (keep the current configuration): noise alone rarely clears `z` standard errors.
    `also`: the same candidates against a second reference (a shadow's control), which each
    must clear as well."""
    better = [
        i
        for i, e in enumerate(evidence)
        if e.clearly_better(z) and (also is None or also[i].clearly_better(z))
    ]
    return max(better, key=lambda i: (evidence[i].gain, -i)) if better else None


# An interim look may adopt a candidate only after this many of its rounds. The paired test's
# standard error is over validation samples, not over a round's client draw, so one round can
# clear even twice the bar by chance: on the tweets (seed 2, RESULTS.md seventh measurement) a
# d=1 candidate won after one round at z 3.34 and then trained no better than a fixed d=1.
# Ending a trial for keep (futility) needs no such care: keeping changes nothing.
EARLY_WIN_ROUNDS = 2


def early_win(evidence: list, rounds: int, z: float) -> int | None:
    """The candidate an interim look after `rounds` rounds adopts: one better than keep by
    twice the bar (`pick_paired` at 2 z), and only from `EARLY_WIN_ROUNDS` rounds on."""
    return pick_paired(evidence, 2 * z) if rounds >= EARLY_WIN_ROUNDS else None


def assign_groups(
    clients: list[int], n_groups: int, estimate: Callable[[int, int], float]
) -> list[list[int]]:
    """Split a trial round's `clients` into `n_groups` groups of the usual sizes (as dealing
    them out in turn would give, group 0 first), so that the round's slowest client is as fast
    as a greedy can make it. A round lasts as long as its slowest client, and a deeper
    candidate costs more per example (and a fill where its boundary is not cached yet); dealt
    blindly, a large client on a deeper candidate decides the whole trial round.

    `estimate(client, group)`: that client's simulated seconds when training that group's
    configuration. The hardest clients (largest best-case estimate) are placed first, each in
    the group with room where it would finish soonest (ties: the earlier group). Deterministic
    in its inputs; group membership is then a function of the sampled clients, who are random.
    """
    sizes = [len(clients[i::n_groups]) for i in range(n_groups)]
    groups: list[list[int]] = [[] for _ in range(n_groups)]
    order = sorted(clients, key=lambda c: (-min(estimate(c, g) for g in range(n_groups)), c))
    for c in order:
        room = [g for g in range(n_groups) if len(groups[g]) < sizes[g]]
        g = min(room, key=lambda g: (estimate(c, g), g))
        groups[g].append(c)
    return [sorted(g) for g in groups]
