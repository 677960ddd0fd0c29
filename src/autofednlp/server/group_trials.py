"""Trials with rounds of their own (`trial_pace` "keep", "place" or "slowest"), the robust
rule's design before background trials (`GroupTrials`).

Each sampled client of a trial round trains one candidate (keep, deeper, wider), all grown from
the current weights. The current configuration's tensors are the leading slice of every
candidate's, and that shared trunk is averaged over every group's clients each round
(`shared_average`): no client's work on it is lost, and `keep` is the served model. A
candidate is judged as its own group's average against keep's own group's (`trial_judge =
"groups"`) or as its added tensors on the shared trunk against the served keep ("shared"). A round
lasts as long as its slowest client; with "keep" a candidate's clients train at most the local
steps that fit in the time of keep's slowest client, as the server estimates it.
"""

from __future__ import annotations

import math
from typing import Any

from autofednlp.server.policies import (
    EARLY_WIN_ROUNDS,
    StallDetector,
    assign_groups,
    pick_paired,
    shared_average,
)


class GroupTrials:
    """A mixin for `RobustAutoFedRun`: a trial whose every round splits the sampled clients
    into one group per candidate."""

    def _group_trial(
        self, trial: int, groups: list, server_round: int, stall: StallDetector
    ) -> tuple[int, dict[str, Any]]:
        """The trial's rounds and decision: (the last round, its trajectory entry)."""
        fed, st = self.cfg.federation, self.cfg.strategy
        keep = groups[0]
        losses: dict[str, list] = {g.name: [] for g in groups}
        rounds, early = 0, False
        while rounds < st.trial_rounds and self.more_rounds(server_round):
            server_round += 1
            rounds += 1
            clients = self.sample(fed.clients_per_round)
            caps: dict[int, int] = {}
            if st.trial_pace == "place":
                chunks = assign_groups(
                    clients,
                    len(groups),
                    lambda c, i: self.client_seconds(c, groups[i].spec, groups[i].state),
                )
            else:
                chunks = [clients[i :: len(groups)] for i in range(len(groups))]
                # before any reply the server knows no client's size: nothing to pace by
                if st.trial_pace == "keep" and chunks[0] and self.client_info:
                    pace = max(self.client_seconds(c, keep.spec, keep.state) for c in chunks[0])
                    for g, members in zip(groups[1:], chunks[1:]):
                        for c in members:
                            caps[c] = self.steps_within(c, g.spec, g.state, pace)
            results = self.train_groups(
                server_round,
                [(g.spec, g.state, c) for g, c in zip(groups, chunks)],
                step=False,
                max_steps={c: k for c, k in caps.items() if k},
            )
            updates = [u for res in results for u in res.updates]
            trunk = shared_average(keep.state, updates) if updates else keep.state
            own_keep = results[0].state if results[0].updates else keep.state
            shared = st.trial_judge == "shared"
            self.step_trial_groups(server_round, groups, results, trunk, bool(updates), shared)
            # The groups run side by side: the round lasts as long as the slowest one.
            self._advance([r.cost for r in results], max(r.cost.duration_s for r in results))
            for g, res in zip(groups, results):
                ev = self.evaluate_result("validation", g.spec, g.state, per_sample=True)
                metrics = {**ev.metrics, "loss": ev.loss}
                judged = ev
                if g is keep:
                    served = metrics[self.metric]
                if g is keep and not shared:  # judged as its own group, as the candidates are
                    judged = self.evaluate_result("validation", g.spec, own_keep, per_sample=True)
                g.accuracies.append(judged.metrics[self.metric])  # the run's target metric
                losses[g.name].append(judged.sample_losses)
                self._record_round(
                    server_round, g.spec, res, metrics, trial=trial, group=g.name, served=g is keep
                )
            stall.observe(served)
            if st.early_decision and EARLY_WIN_ROUNDS <= rounds < st.trial_rounds:
                # An interim look, at twice the bar: new capacity starts at zero, so an early
                # reading is biased against a candidate, and one already far ahead need not
                # cost the trial's remaining rounds.
                evidence = self._evidence(groups, losses, math.ceil(rounds / 2))
                pick = pick_paired(evidence, 2 * st.confidence_z)
                if pick is not None:
                    early = True
                    break
        if not early:
            # Judge on the trial's later rounds: new capacity starts at zero and needs a round.
            evidence = self._evidence(groups, losses, math.ceil(rounds / 2))
            pick = pick_paired(evidence, st.confidence_z)
        winner = keep if pick is None else groups[1 + pick]
        self.spec, self.state = winner.spec, winner.state
        if winner is not keep:
            self.record_adoption(server_round, trial)
        return server_round, self._entry(trial, groups, winner, early, rounds, evidence)
