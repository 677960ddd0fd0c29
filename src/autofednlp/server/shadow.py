"""Shadow trials (`strategy.trial_pace = "shadow"`): candidates that keep training beside the
served model until they are better than it *now*.

A background trial judges a candidate after a round or two on a few probes, against keep
trained on the same probes, and prices its extra round time at the served model's loss rate.
That is right about the next seconds and myopic about the run: a deeper configuration's
advantage is its higher ceiling, which shows only after many rounds, and by then the head has
levelled off and a candidate grown from it needs the time it has left to recover from the
growth's dip (RESULTS.md, tenth measurement: on the tweets d=2 grown from the head in the first
15% of the budget reached d=2's ceiling; grown at the plateau it did not).

So the first shadow trial starts early, after the run's first served round, and lets the probes
carry each candidate from its own weights (or, with `shadow_base = "served"`, from whichever of
those and its added tensors over the served model reads the lower validation loss), probe round
after probe round, for up to `shadow_rounds`, while the other clients train the served model at
its own pace. After each probe round the candidate is compared with the served model as it
stands at that simulated moment, paired over the validation samples. Both had the same clock,
so the candidate's slower rounds need no price: it has already paid for them in rounds it did
not get. It replaces the served model once it is better by `confidence_z` standard errors and
no worse on the target metric, from its second round on (one round's reading is not enough,
`EARLY_WIN_ROUNDS`). Each look asks which model to hand out *now*, so the bar is the plain
one, not the interim look's twice: a false positive hands out a model no worse than the served
one, and twice the bar held back a d=2 candidate on the tweets that read 0.816 against the
served 0.782 (validation loss 0.39 against 0.50: per-sample losses of a more confident model
are heavy-tailed). The cost is the clients the served model lends for the trial's length; so
later trials follow the stall schedule: a shadow started again right after a growth to d=2 on
the tweets (seed 0) lent its probes for the rest of the run and lost, and the served d=2 missed
a target a fixed d=2 reached.

With `shadow_control` the probes also carry the current configuration (the control) from the
served weights at the trial's start, and a candidate must clear the control on the same looks
too. Under label skew the served model, training with the clients the trial leaves it, can read
far below what its configuration reaches with every client (RESULTS.md, fifteenth measurement:
0.51 against a fixed head's 0.80 on BBC News, alpha 0.5, seed 0), and a candidate ahead of it
then wins on the trial's own cost. Against the control, trained on the same probes' data, only
the configuration differs. In that seed it moved the growth from 0.79 s to 1.70 s (sixteenth
measurement); in seed 1 d=2 still won early, and lost to a fixed d=2.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from autofednlp.server.autofed import Group
from autofednlp.server.policies import EARLY_WIN_ROUNDS, StallDetector, pick_paired

# the name of a shadow's control group (`strategy.shadow_control`) in rows and evidence
CONTROL = "control"
# `strategy.shadow_warm_gate`: a winner waits while the served configuration's next round is
# expected to cost less than its last by this factor (set before any measurement)
WARM_FACTOR = 3.0


class ShadowTrials:
    """A mixin for `RobustAutoFedRun`: a shadow trial's probe rounds (`_shadow_trial`)."""

    def _shadow_due(self, trajectory: list, server_round: int) -> bool:
        """Whether a shadow trial starts now without waiting for a stall: the run's first,
        after its first served round."""
        return self.cfg.strategy.trial_pace == "shadow" and server_round >= 1 and not trajectory

    def _shadow_trial(
        self, trial: int, groups: list, server_round: int, stall: StallDetector, n_probe: int
    ) -> tuple:
        """Up to `shadow_rounds` probe rounds on `n_probe` clients lent by the served model,
        each candidate continuing from its own weights, each judged after every probe round
        against the served model at that moment (and, with `shadow_control`, against the
        current configuration carried by the same probes alongside). (server_round, rounds,
        probe_rounds, early, pick, evidence, evidence against the control or None): `early`
        when a candidate won before the last round."""
        st = self.cfg.strategy
        keep, candidates = groups[0], groups[1:]
        # with shadow_control the probes train the current configuration too
        control = [Group(CONTROL, keep.spec, self.state)] if st.shadow_control else []
        trained = control + candidates
        losses: dict[str, list] = {g.name: [] for g in groups + control}
        rounds = probe_rounds = 0
        pick, evidence, against_control = None, [], None
        while probe_rounds < st.shadow_rounds and self.more_rounds(server_round):
            probes, first = self._draw_probes(n_probe)
            server_round, lent, results = self._lend(
                trial, trained, probes, server_round, stall, first
            )
            rounds += lent
            if results is None:
                break  # the run ends before this probe round's results are in
            probe_rounds += 1
            # keep is the served model as it stands now, not keep trained on the probes
            served = self.evaluate_result("validation", per_sample=True)
            keep.accuracies.append(served.metrics[self.metric])
            losses[keep.name].append(self._judged(served))
            for g, res in zip(trained, results):
                if st.shadow_base == "served":
                    res = dataclasses.replace(res, state=self._nearer_served(g, res.state))
                g.state = res.state  # what the average folds in
                self._score(
                    trial, server_round, g, res, losses, 0.0, g.name, False, self._averaged(g)
                )
            # the served model moves on: each look compares this moment's readings only
            evidence = self._evidence(groups, losses, 1)
            if control:
                against_control = self._evidence(trained, losses, 1)
            if probe_rounds >= EARLY_WIN_ROUNDS:
                pick = pick_paired(evidence, st.confidence_z, also=against_control)
            if pick is not None and st.shadow_warm_gate and self._served_warming(keep):
                pick = None  # judged again at the next look, once the served rounds are cheap
            if pick is not None:
                break
        early = pick is not None and probe_rounds < st.shadow_rounds
        return server_round, rounds, probe_rounds, early, pick, evidence, against_control

    def _served_warming(self, keep) -> bool:
        """`strategy.shadow_warm_gate`: whether the served configuration's next round is
        expected to cost less than 1 / `WARM_FACTOR` of its last one. The expectation: with
        the chance that a served draw finds every client's cache filled for it
        (`all_cached_chance`), the server's estimate of its round once caches are filled
        (`steady_round_s`), else a round like the last.

        A head's first rounds under label skew fill its clients' caches; on BBC News, alpha
        0.1 with 30 clients, seven of them took 0.1-1.1 s, and the eighth on 0.015 s, after
        which the fixed head climbed from 0.66 to 0.95 in 0.2 s. A d=2 candidate adopted at
        the seventh (0.89 against 0.72), on 0.5-0.7 s rounds, lost every target by up to 3.2
        times (RESULTS.md, twenty-third measurement): a look compares the two at the moment,
        and the served model's progress per second was about to jump. Asking only whether the
        last round paid fills (the gate's first rule, twenty-fourth measurement) also held
        back growths with 100 clients, where a draw keeps finding new clients for 30-50
        rounds and the served rounds stay dear: there no jump is coming."""
        last = self.last_served()
        if last is None:
            return False
        clients, now = last
        pool = set(self.transport.available_partitions())
        cached = sum(self.cache_holds(c, keep.spec) for c in pool)
        chance = all_cached_chance(cached, len(pool), self.cfg.federation.clients_per_round)
        expected = chance * self.steady_round_s(clients, keep) + (1.0 - chance) * now
        return WARM_FACTOR * expected < now

    def _averaged(self, g) -> dict[str, torch.Tensor] | None:
        """With `federation.served_ema`, fold the weights the probes just left `g` (its
        `state`) into its moving average, with the served model's decay, and return it (None
        without). The served side of every look is such an average, which damps a few skewed
        clients' round-to-round swing; a candidate judged on its raw weights carried that swing
        alone (a d=2 on five probes read validation loss 0.52, 1.15, 0.63, 0.50, 0.75 in
        consecutive looks on the tweets, the served head 0.52-0.59 beside it), and lost
        the paired test on its own noise. If it wins, its average is what is served."""
        decay = self.cfg.served_ema
        if decay <= 0:
            return None
        if g.average is None:
            g.average = {k: v.detach().clone() for k, v in g.state.items()}
        else:
            g.average = {k: torch.lerp(g.average[k], v, 1.0 - decay) for k, v in g.state.items()}
        return g.average

    def _judged(self, ev) -> torch.Tensor:
        """What a look pairs of an evaluation (`strategy.shadow_test`): each sample's
        validation loss, or under a shadow with `metric` its error on the target metric's
        terms, which a more confident model at equal accuracy does not win. On BBC News
        (alpha 0.5, RESULTS.md fifteenth measurement) both made the same decisions: the deeper
        candidate was ahead of the served head on accuracy too."""
        return ev.sample_errors if self._pairs_errors() else ev.sample_losses

    def _pairs_errors(self) -> bool:
        """Whether the looks pair per-sample errors (a shadow with `shadow_test = "metric"`)."""
        st = self.cfg.strategy
        return st.trial_pace == "shadow" and st.shadow_test == "metric"

    def _nearer_served(self, g, state: dict) -> dict:
        """`shadow_base = "served"`: the candidate as the probes left it, or its added tensors
        laid over the served configuration's latest global weights (which trained with more
        clients meanwhile), whichever has the lower validation loss. The paired test then reads the
        same validation samples, so picking the better of the two favours the candidate a
        little; the z of the adoptions measured (15-24, RESULTS.md, thirteenth measurement)
        is far beyond what that choice can add."""
        g.state = state
        return self._continue_from(g)[0]  # the same choice a winner's weights get


def all_cached_chance(cached: int, pool: int, draw: int) -> float:
    """The chance that `draw` clients drawn without replacement from `pool`, of which
    `cached` hold a filled cache, all hold one."""
    draw = min(draw, pool)
    return math.comb(cached, draw) / math.comb(pool, draw)
