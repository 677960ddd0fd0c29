"""Trials at a plateau of the served model (`strategy.plateau_rounds`, off by default).

At a plateau the served model gains nothing per round, so a trial may take every client of a
round and run at the candidates' pace (`_plateau_trial`). Whether the served model is at a
plateau (`_plateau`) is judged on its validation loss (`ServedLoss`), and a plateau is
remembered by its level across the trial that it triggered.
"""

from __future__ import annotations

import math

from autofednlp.server.policies import StallDetector
from autofednlp.server.served_loss import ServedLoss


class PlateauTrials(ServedLoss):
    """A mixin for `RobustAutoFedRun`: the plateau test and the plateau trial's rounds."""

    # (mean, standard error) of the served validation loss when the current plateau was first
    # seen; None when the last trial was not at a plateau or grew the model
    _plateau_ref: tuple[float, float] | None = None

    def _plateau(self, window: int) -> str | None:
        """Whether the served model is at a plateau, and by which test (None: it is not).

        "slope": its validation loss over the last `window` readings falls by no more than
        `confidence_z` standard errors of the least-squares slope. "level": the mean of
        those readings is not lower, by `confidence_z` standard errors of the difference,
        than it was when the plateau was first seen. The second remembers a plateau across
        a plateau trial: readings that dip and recover around a flat level make a falling
        slope over a few of them, which the slope alone takes for progress (the tweets'
        escalated d=2 trial, sixth measurement). Sets or clears the reference."""
        z = self.cfg.strategy.confidence_z
        rate, rate_se = self.served_loss_trend(window)
        level, level_se = self.served_loss_level(window)
        ref = self._plateau_ref
        if ref is not None and level >= ref[0] - z * math.hypot(ref[1], level_se):
            return "level"
        if rate <= z * rate_se:
            self._plateau_ref = (level, level_se)
            return "slope"
        self._plateau_ref = None
        return None

    def _settled(self, window: int) -> bool:
        """`strategy.trial_gate = "plateau"`: whether the configuration served now has stopped
        improving on its own readings: `window` of them at least, and its validation loss over
        the last `window` falling by no more than `confidence_z` standard errors of the
        least-squares slope. Its readings only: right after a growth the stall detector
        compares the new configuration with the best reading of the one before, and under
        label skew two readings without a new record come easily while it still climbs.
        On BBC News, alpha 0.5, it moved the second shadow trial from 1.2-1.9 s after the
        growth to d=2 to 2.9-3.3 s after it, and gained nothing at 90/95%: the served d=2
        read the same with the clients that trial lent (RESULTS.md, seventeenth
        measurement)."""
        points = self._served_losses(current=True)
        if len(points) < window:
            return False
        rate, rate_se = self._trend(points[-window:])
        return rate <= self.cfg.strategy.confidence_z * rate_se

    def _plateau_trial(
        self, trial: int, groups: list, server_round: int, stall: StallDetector
    ) -> tuple:
        """A trial at a plateau of the served model (`plateau_rounds`): for up to
        `plateau_rounds` rounds, every client of a round trains keep (the served model's
        round, with its server optimizer) and every candidate, each from its own weights, and
        the round lasts until the slowest client could have trained them all (the sum of the
        tasks' round times, an upper bound). At a plateau the served model gains nothing per
        round, so slowing its rounds to the candidates' pace costs it nothing, while new
        capacity, which starts at zero, gets as many clients and rounds as a fixed run of its
        configuration would to show a gain: a two-layer step on the tweets' plateau showed
        nothing on 5 probes in 2 rounds and a clear gain on 10 in 5 (RESULTS.md, sixth
        measurement). Keep and the candidates are paired on the same clients and the same
        round; judging a candidate against the served model as it stood instead let a
        candidate's first round beat the served model's last, noisy one (d=1 won at once on
        the tweets, against a served round that read 0.69 between 0.75s).
        (server_round, rounds, early, pick, evidence, extra seconds per round)."""
        fed, st = self.cfg.federation, self.cfg.strategy
        keep = groups[0]
        losses: dict[str, list] = {g.name: [] for g in groups}
        extra: dict[str, float] = {}
        rounds = 0
        early, pick, evidence = False, None, []
        while rounds < st.plateau_rounds and self.more_rounds(server_round):
            server_round += 1
            rounds += 1
            clients = self.sample(fed.clients_per_round)
            if not extra:
                keep_s = self.steady_round_s(clients, keep)
                extra = {g.name: max(0.0, self.steady_round_s(clients, g) - keep_s) for g in groups}
            # one call per group: a client is in one group of a call
            tasks = [[(g.spec, g.state, clients)] for g in groups]
            sent = [self.send_groups(server_round, t) for t in tasks]
            results = [
                self.receive_groups(server_round, t, d, step=g is keep)[0]
                for g, t, d in zip(groups, tasks, sent)
            ]
            self._advance([r.cost for r in results], sum(r.cost.duration_s for r in results))
            for g, res in zip(groups, results):
                self._score(trial, server_round, g, res, losses, 0.0, g.name, g is keep)
            self.state = keep.state  # keep's round is the served model's
            stall.observe(keep.accuracies[-1])
            # new capacity's first round may read low: futility from the second look on
            evidence, pick = self._look(groups, losses, rounds, st.plateau_rounds, 2)
            if pick != "go on":
                early = True
                break
        pick = self._final(evidence, rounds, early, pick)
        return server_round, rounds, early, pick, evidence, extra
