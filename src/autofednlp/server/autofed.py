"""AutoFedNLP: progressive (depth, width) upgrades chosen by trial groups, by the published
rule (`strategy.trials = "published"`; `server/robust.py` holds the default, robust one).

Each trial forms disjoint, freshly sampled groups of clients, one per candidate configuration
(keep, deeper, wider). Every group trains its candidate with FedAvg inside the group for the
same simulated time budget, so a cheaper candidate runs more rounds. The group that reached the
best validation accuracy wins; its weights start the next trial for everyone. The engine may
run the groups' rounds one after another, but the clock counts them as concurrent: a trial lasts
as long as its slowest group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from autofednlp.cost.clock import RoundCost
from autofednlp.model.grow import grow_state
from autofednlp.model.kinds import TuneSpec
from autofednlp.server.loop import FederatedRun
from autofednlp.server.policies import (
    GroupOutcome,
    candidate_policy,
    overlay,
    pick_winner,
    trial_budget_s,
)


@dataclass
class Group:
    name: str
    spec: TuneSpec
    state: dict[str, torch.Tensor]
    time_s: float = 0.0
    rounds: int = 0
    accuracies: list[float] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)
    states: list[dict[str, torch.Tensor]] = field(default_factory=list)
    # a shadow trial's moving average of the weights its probes left (`federation.served_ema`):
    # what its looks judge, and what is served if it wins
    average: dict[str, torch.Tensor] | None = None


class AutoFedRun(FederatedRun):
    """A `FederatedRun` whose configuration grows, trial by trial."""

    def grow(self, state: dict, old: TuneSpec, new: TuneSpec) -> dict[str, torch.Tensor]:
        if new == old:
            return state
        grown = grow_state(state, self.initial_state(new), old, new)
        self.aggregator.grow(old.label(), new.label(), grown)
        return grown

    def step_trial_groups(
        self,
        server_round: int,
        groups: list[Group],
        results: list,
        trunk: dict,
        updated: bool,
        share: bool = True,
    ) -> None:
        """A robust trial round's new weights from its groups' averages (`groups[0]` is keep)
        and the trunk averaged over all of them (`updated`: from any update): the server optimizer
        steps the trunk with the current configuration's state and each candidate's own
        tensors with the candidate's, whose state then follows the current one's on the trunk
        (without `share` a candidate keeps its own group's trunk). With fedavg both steps take
        the averages as they are."""
        keep, agg = groups[0], self.aggregator
        if updated:
            trunk = agg.step(keep.spec.label(), keep.state, trunk, server_round)
        for g, res in zip(groups, results):
            own = res.state
            if g is not keep and res.updates:
                own = agg.step(g.spec.label(), g.state, res.state, server_round)
                agg.share(keep.spec.label(), g.spec.label())
            g.state = overlay(own, trunk) if share or g is keep else own

    def run(self) -> dict[str, Any]:
        fed, st = self.cfg.federation, self.cfg.strategy
        policy = candidate_policy(self.cfg, self.model_for(self.spec).num_layers)
        saved = getattr(self, "_resumed_strategy", None)
        if saved:
            start_acc, trajectory = saved["start_acc"], saved["trajectory"]
            trial, reached = saved["trial"], saved["reached"]
        else:
            start_acc = self.evaluate("validation", self.spec, self.state)[0]
            trajectory, trial, reached = [], 0, False
        server_round = self.next_round - 1
        while self.more_rounds(server_round) and not (fed.stop_at_target and reached):
            trial += 1
            groups = [
                Group(c.name, c.spec, self.grow(self.state, self.spec, c.spec))
                for c in policy(self.spec)
            ]
            group_size = max(1, fed.clients_per_round // len(groups))
            budget = trial_budget_s(st, self.spec, [0.0]) if st.budget == "paper" else None
            trial_start, spent = self.clock.time_s, []
            while self.more_rounds(
                server_round, trial_start + max((g.time_s for g in groups), default=0.0)
            ):
                active = [
                    g
                    for g in groups
                    if (budget is None or g.time_s < budget) and g.rounds < st.max_group_rounds
                ]
                if not active:
                    break
                server_round += 1
                clients = self.sample(group_size * len(active))
                chunks = [clients[i :: len(active)] for i in range(len(active))]
                results = self.train_groups(
                    server_round, [(g.spec, g.state, c) for g, c in zip(active, chunks)]
                )
                for g, res in zip(active, results):
                    g.state, g.rounds = res.state, g.rounds + 1
                    g.time_s += res.cost.duration_s
                    spent.append(res.cost)
                    metrics = self.evaluate_metrics("validation", g.spec, g.state)
                    g.accuracies.append(metrics[self.metric])  # the target metric
                    g.times_s.append(g.time_s)
                    g.states.append(g.state)
                    row = self.round_row(server_round, g.spec, res)
                    row.update(
                        trial=trial,
                        group=g.name,
                        served=g.name == "keep",  # the current configuration, as it trains
                        sim_time_s=trial_start + g.time_s,
                        **self.metric_columns(metrics),
                    )
                    self.record(row)
                    reached = reached or self.time_to_target() is not None
                if budget is None:
                    budget = trial_budget_s(st, self.spec, [g.time_s for g in groups])
                if fed.stop_at_target and reached:
                    break
            outcomes = [GroupOutcome(g.name, g.accuracies, g.times_s, start_acc) for g in groups]
            w = groups[pick_winner(outcomes, st.winner)]
            # The winner's weights at its best validated round: what the rule judged it by.
            best = max(range(len(w.accuracies)), key=lambda j: (w.accuracies[j], -j), default=-1)
            if best >= 0:
                self.state, start_acc = w.states[best], w.accuracies[best]
            self.spec = w.spec
            self._advance(spent, max(g.time_s for g in groups))
            if best >= 0 and (w is not groups[0] or best != len(w.accuracies) - 1):
                # the winner's weights at its best round are handed out from here on (keep
                # at its last round: what was handed out already, no change)
                self.record_adoption(server_round, trial)
                reached = reached or self.time_to_target() is not None
            trajectory.append(
                {
                    "trial": trial,
                    "winner": w.name,
                    "config": w.spec.label(),
                    "depth": w.spec.depth,
                    "width": w.spec.width,
                    "budget_s": budget,
                    "sim_time_s": self.clock.time_s,
                    "val_accuracy": start_acc,
                    "groups": {g.name: g.spec.label() for g in groups},
                }
            )
            self.recorder.trial(trajectory[-1])
            for g in groups:
                g.states.clear()
            if self.cfg.federation.checkpoint_every > 0:
                self.checkpoint(
                    server_round + 1,
                    {
                        "start_acc": start_acc,
                        "trajectory": trajectory,
                        "trial": trial,
                        "reached": reached,
                    },
                )
        return self.finish({"trajectory": trajectory, "trials": trial})

    def restore(self, ckpt: dict[str, Any]) -> None:
        super().restore(ckpt)
        self._resumed_strategy = ckpt["strategy"]
        for entry in ckpt["strategy"].get("trajectory", []):
            self.recorder.trial(entry)  # the recorder starts again from the checkpoint's rows

    def _advance(self, spent: list[RoundCost], duration_s: float) -> None:
        total = RoundCost(
            duration_s=duration_s,
            energy_j=sum(c.energy_j for c in spent),
            bytes_down=sum(c.bytes_down for c in spent),
            bytes_up=sum(c.bytes_up for c in spent),
            compute_s=sum(c.compute_s for c in spent),
        )
        self.clock.advance(total)
