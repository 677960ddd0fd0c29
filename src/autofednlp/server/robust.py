"""AutoFedNLP with trials that non-IID noise cannot flip (`strategy.trials = "robust"`).

The published rule (`server/autofed.py`) splits every round's clients into disjoint groups, one
per candidate, and lets the group with the single best validation reading win. Under label
skew a group of a few clients swings from round to round, so decisions and starting points are
picked on noise, and two thirds of the clients' work is thrown away. Here:

- The current configuration trains with every sampled client, like a fixed configuration,
  until its served target metric (accuracy; entity F1 for tagging) stalls (`StallDetector`)
  or, with `trial_every` > 0, that many rounds have passed; then a trial starts. Both waits
  follow the returns of past trials (`TrialSchedule`): shorter after a growth, longer after
  `keep` won; with `trial_wait_time` they are also counted in simulated time, so trials keep a
  bounded share of it however cheap the current configuration's rounds become.
- By default (`trial_pace = "background"`) a trial has no rounds of its own: a few probe
  clients train keep and every candidate from the same weights (paired on the same clients'
  data; a candidate pays for its extra round time at the served model's recent loss rate)
  while the other clients train the served model at its own pace (`_background_trial`).
- Otherwise each sampled client of a trial round trains one candidate (keep, deeper, wider),
  all grown from the current weights. The current configuration's tensors are the leading
  slice of every candidate's, and that shared trunk is averaged over every group's clients
  each round (`shared_average`): no client's work on it is lost, and `keep` is the served
  model. A candidate is judged as its own group's average against keep's own group's
  (`trial_judge = "groups"`) or as its added tensors on the shared trunk against the served
  keep (`"shared"`). A trial round lasts as long as its slowest client; with
  `trial_pace = "keep"` a candidate's clients train at most the local steps that fit in the
  time of keep's slowest client, as the server estimates it (`client_seconds`).
- A paired comparison of per-sample validation losses (same samples) judges each candidate
  against keep: it replaces the current configuration only if it is better by more than
  `confidence_z` standard errors and no worse on the target metric (`pick_paired`); one far
  ahead at an interim look wins at once (`early_decision`). It continues from its final
  weights, not from a lucky round's.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from autofednlp.client.worker import boundaries_filled
from autofednlp.cost.clock import client_cost
from autofednlp.cost.devices import client_device, get_profile
from autofednlp.cost.flops import fill_cache_flops, train_step_flops
from autofednlp.model.build import state_bytes
from autofednlp.model.kinds import TuneSpec
from autofednlp.report.results import is_served
from autofednlp.server.autofed import AutoFedRun, Group
from autofednlp.server.policies import (
    StallDetector,
    TrialSchedule,
    assign_groups,
    candidate_policy,
    overlay,
    paired_evidence,
    pick_paired,
    shared_average,
)

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


class RobustAutoFedRun(AutoFedRun):
    """Stall-triggered trials over a shared trunk, decided by a paired test."""

    def run(self) -> dict[str, Any]:
        fed, st = self.cfg.federation, self.cfg.strategy
        policy = candidate_policy(st, self.model_for(self.spec).num_layers)
        schedule = TrialSchedule(st.trial_every, st.trial_backoff, wait_time=st.trial_wait_time)
        saved = getattr(self, "_resumed_strategy", None)
        self._cached = {}
        self._plateau_ref = None
        if saved:
            trajectory, trial = saved["trajectory"], saved["trial"]
            stall = StallDetector(st.patience, st.min_delta, saved["best"], saved["since_gain"])
            since_trial = saved["since_trial"]
            schedule.restore(saved.get("schedule", {"scale": saved.get("schedule_scale", 1.0)}))
            self._cached = {int(c): set(b) for c, b in saved.get("cached", {}).items()}
            ref = saved.get("plateau_ref")
            self._plateau_ref = None if ref is None else (float(ref[0]), float(ref[1]))
        else:
            start = self.evaluate("validation")[0]
            trajectory, trial, since_trial = [], 0, 0
            stall = StallDetector(st.patience, st.min_delta, start)
        server_round = self.next_round - 1

        def state() -> dict[str, Any]:
            return {
                "trajectory": trajectory,
                "trial": trial,
                "best": stall.best,
                "since_gain": stall.since_gain,
                "since_trial": since_trial,
                "schedule": schedule.state(),
                "cached": {c: sorted(b) for c, b in self._cached.items()},
                "plateau_ref": None if self._plateau_ref is None else list(self._plateau_ref),
            }

        while self.more_rounds(server_round):
            candidates = policy(self.spec, self._reach(trajectory))
            if schedule.due(since_trial, stall, self.clock.time_s) and len(candidates) > 1:
                trial += 1
                start_s = self.clock.time_s
                server_round, entry = self._trial(trial, candidates, server_round, stall)
                trajectory.append(entry)
                self.recorder.trial(entry)
                # a trial at a plateau took nothing from the served model: no time to wait off
                cost_from = self.clock.time_s if entry.get("plateau") else start_s
                schedule.after_trial(entry["winner"] != "keep", cost_from, self.clock.time_s)
                stall.restart()
                since_trial = 0
                if fed.checkpoint_every > 0:
                    self.checkpoint(server_round + 1, state())
            else:
                server_round += 1
                acc = self._exploit_round(server_round)
                stall.observe(acc)
                since_trial += 1
                if self.due(server_round):
                    self.checkpoint(server_round + 1, state())
            if fed.stop_at_target and self.time_to_target() is not None:
                break
        # the last state, not the last periodic checkpoint's: an extension continues from it
        self._strategy = state()
        return self.finish({"trajectory": trajectory, "trials": trial})

    def _reach(self, trajectory: list[dict[str, Any]]) -> int:
        """Depth steps of the next deeper candidate: one more for each trial in a row that
        keep won, with `strategy.escalate`, or for each such trial at a plateau, with
        `strategy.plateau_rounds` (a layer that shows nothing alone at a plateau may show a
        gain with the one above it); else 1."""
        st = self.cfg.strategy
        lost = 0
        for entry in reversed(trajectory):
            if entry["winner"] != "keep" or not (st.escalate or entry.get("plateau")):
                break
            lost += 1
        return 1 + lost

    _cached: dict[int, set[int]]  # client -> boundaries its activation cache holds
    # (mean, standard error) of the served validation loss when the current plateau was first
    # seen; None when the last trial was not at a plateau or grew the model
    _plateau_ref: tuple[float, float] | None = None

    def receive_groups(self, server_round: int, groups: list, sent: Any, step: bool = True) -> list:
        """As the base class; also notes which boundaries each client's cache now holds."""
        results = super().receive_groups(server_round, groups, sent, step)
        for (spec, _, _), res in zip(groups, results):
            layers = self.model_for(spec).num_layers
            held = boundaries_filled(self.cfg, layers, spec.boundary(layers))
            for c in set(res.clients) - set(res.failed):
                self._cached.setdefault(c, set()).update(held)
        return results

    def _step_seconds(self, client: int, spec: TuneSpec, state: dict) -> tuple:
        """What the server can tell of `client` training `spec`: (samples, local steps of its
        full epochs, seconds per step, seconds of cache fill per first-epoch step, seconds of
        transfer). Data size and device from its last reply (unknown: the largest size seen,
        the configured device); cache fills from the boundaries it trained before; the FLOP
        counter; the links. An estimate for pacing trials, never charged."""
        sizes = [n for n, _ in self.client_info.values()]
        n, device = self.client_info.get(client, (max(sizes, default=1), ""))
        c = self.cfg
        batch, seq, cache = c.client.batch_size, c.data.max_length, c.client.activation_cache
        profile = get_profile(device or client_device(c, client))
        step_s = profile.compute_s(train_step_flops(self.shape, spec, batch, seq, cached=cache))
        layers = self.model_for(spec).num_layers
        fill_s = 0.0
        if cache and spec.boundary(layers) not in self._cached.get(client, ()):
            fill_s = profile.compute_s(fill_cache_flops(self.shape, spec, batch, seq))
        size = state_bytes(state)
        transfer_s = client_cost(c.cost, 0.0, size, size).total_s
        return n, c.client.local_epochs * math.ceil(n / batch), step_s, fill_s, transfer_s

    def _round_seconds(self, client: int, spec: TuneSpec, state: dict) -> tuple:
        """(full local steps, seconds after k steps as a function of k) for `client` on
        `spec`: the estimate is gathered once, then priced per step count."""
        n, full, step_s, fill_s, transfer_s = self._step_seconds(client, spec, state)
        first_epoch = math.ceil(n / self.cfg.client.batch_size)
        return full, lambda k: transfer_s + k * step_s + min(k, first_epoch) * fill_s

    def client_seconds(self, client: int, spec: TuneSpec, state: dict) -> float:
        """The simulated seconds `client` would take for a full round of `spec`, as the
        server can tell (`_step_seconds`)."""
        full, seconds = self._round_seconds(client, spec, state)
        return seconds(full)

    def steps_within(self, client: int, spec: TuneSpec, state: dict, budget_s: float) -> int:
        """The most local steps of `spec` that `client` can take within `budget_s` (at
        least 1); 0 when its full epochs fit."""
        full, seconds = self._round_seconds(client, spec, state)
        if seconds(full) <= budget_s:
            return 0
        k = max((k for k in range(1, full) if seconds(k) <= budget_s), default=1)
        return 0 if k >= full else k

    def _exploit_round(
        self, server_round: int, clients: list[int] | None = None, **row: Any
    ) -> float:
        """One round of the current configuration with `clients` (default: every sampled
        client); `row`: extra columns of its row."""
        if clients is None:
            clients = self.sample(self.cfg.federation.clients_per_round)
        (res,) = self.train_groups(server_round, [(self.spec, self.state, clients)])
        self.state = res.state
        self.clock.advance(res.cost)
        metrics = self.evaluate_metrics("validation")
        self._record_round(server_round, self.spec, res, metrics, **row, served=True)
        return metrics[self.metric]

    def _trial(
        self, trial: int, candidates: list, server_round: int, stall: StallDetector
    ) -> tuple[int, dict[str, Any]]:
        fed, st = self.cfg.federation, self.cfg.strategy
        groups = [
            Group(c.name, c.spec, self.grow(self.state, self.spec, c.spec)) for c in candidates
        ]
        if st.trial_pace == "background":
            return self._background_trial(trial, groups, server_round, stall)
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
        return server_round, self._entry(trial, groups, winner, early, rounds, evidence)

    def _background_trial(
        self, trial: int, groups: list, server_round: int, stall: StallDetector
    ) -> tuple[int, dict[str, Any]]:
        """A trial beside the served rounds (`trial_pace = "background"`).

        A few probe clients (`trial_probes`) train keep's configuration and every candidate,
        each from the weights the trial started with and each as a plain average, so a
        candidate and its reference see the same clients' data: the paired test weighs the
        configurations, not who was drawn into which group. Meanwhile the round's other
        clients train the served model round after round at its own pace. A probe round's
        results count once its slowest probe client could have trained all its tasks (the
        sum of the tasks' round times, an upper bound); its traffic and energy count at once.
        The served model pays for a trial with the clients it lends, not with rounds spent
        waiting for a deeper candidate.

        Time to accuracy asks which configuration is better per second, not per round. A
        candidate whose round costs `extra` more seconds than keep's (the server's estimate
        once caches are filled) must beat keep, after its j-th round, by more than what the
        served model has lately gained in j x extra seconds (`served_loss_rate`, validation
        loss per second). Repeating keep's rounds on the same few probes instead would overfit
        it to their labels under skew and flatter the candidate. A candidate that wins must
        also be no worse than the served model at that moment.

        With `plateau_rounds`, a trial that starts at a plateau of the served model
        (`_plateau`) is a `_plateau_trial` instead."""
        fed, st = self.cfg.federation, self.cfg.strategy
        window = max(3, 2 * st.patience)
        rate = self.served_loss_rate(window)
        plateau_by = self._plateau(window) if st.plateau_rounds else None
        if plateau_by:
            rate = 0.0  # at a plateau the served model gains nothing per second
            n_probe = fed.clients_per_round
            server_round, rounds, early, pick, evidence, extra = self._plateau_trial(
                trial, groups, server_round, stall
            )
            probe_rounds = rounds
        else:
            n_probe = st.trial_probes or max(1, fed.clients_per_round // 3)  # < per round
            server_round, rounds, probe_rounds, early, pick, evidence, extra = self._lent_trial(
                trial, groups, server_round, stall, n_probe, rate
            )
        served_acc, served_loss = self.evaluate("validation")
        start, behind = "served", None
        if pick is not None:
            state, start, loss = self._continue_from(groups[1 + pick])
            if loss <= served_loss:
                self.spec, self.state = groups[1 + pick].spec, state
            else:
                # better than keep on the probes, but not than the served model now: switching
                # would hand out a worse model
                behind, pick, start = groups[1 + pick].name, None, "served"
        winner = groups[0] if pick is None else groups[1 + pick]
        if pick is not None:
            self._plateau_ref = None  # a new configuration: its own plateau is still to come
        entry = self._entry(trial, groups, winner, early, rounds, evidence)
        entry.update(
            probe_rounds=probe_rounds,
            probes=n_probe,
            plateau=plateau_by is not None,
            plateau_by=plateau_by,
            served_loss_rate=round(rate, 6),
            extra_s={k: round(v, 5) for k, v in extra.items() if k != groups[0].name},
            continued_from=start,
        )
        if behind:
            entry["behind_served"] = behind
        if pick is None:
            entry["val_accuracy"] = served_acc
        return server_round, entry

    def _record_round(
        self, server_round: int, spec: TuneSpec, res: Any, metrics: dict, **columns: Any
    ) -> None:
        """A group's row: its round, `columns` (trial, group, served), the clock and its
        validation `metrics`."""
        row = {**self.round_row(server_round, spec, res), **columns}
        row.update(sim_time_s=self.clock.time_s, **self.metric_columns(metrics))
        self.record(row)

    def _lent_trial(
        self,
        trial: int,
        groups: list,
        server_round: int,
        stall: StallDetector,
        n_probe: int,
        rate: float,
    ) -> tuple:
        """A background trial's probe rounds on `n_probe` clients lent by the served model,
        which trains with the rest meanwhile; `rate`: the served loss rate a candidate's
        extra time is priced at. (server_round, rounds, probe_rounds, early, pick, evidence,
        extra seconds per round by group)."""
        fed, st = self.cfg.federation, self.cfg.strategy
        losses: dict[str, list] = {g.name: [] for g in groups}
        extra: dict[str, float] = {}
        rounds = probe_rounds = 0
        early, pick, evidence, cut = False, None, [], False
        while probe_rounds < st.trial_rounds and self.more_rounds(server_round):
            server_round += 1
            rounds += 1
            probes = self.sample(n_probe)
            if not extra:
                keep_s = self.steady_round_s(probes, groups[0])
                extra = {g.name: max(0.0, self.steady_round_s(probes, g) - keep_s) for g in groups}
            # one call per group (a client is in one group of a call); the replies are waited
            # for after the served round below, as a deployment would
            tasks = [[(g.spec, g.state, probes)] for g in groups]
            sent = [self.send_groups(server_round, t) for t in tasks]
            start_s, busy = self.clock.time_s, set(probes)
            results: list = []
            while True:
                clients = self.sample(fed.clients_per_round - len(busy), exclude=busy)
                stall.observe(self._exploit_round(server_round, clients, trial=trial, group="keep"))
                if not results:  # the simulated clock needs their costs: collect after round 1
                    results = [
                        self.receive_groups(server_round, t, s, step=False)[0]
                        for t, s in zip(tasks, sent)
                    ]
                    self._advance([r.cost for r in results], 0.0)
                    done_s = start_s + sum(r.cost.duration_s for r in results)
                if self.clock.time_s >= done_s:
                    break
                if not self.more_rounds(server_round):
                    cut = True  # the run ends before this probe round's results are in
                    break
                server_round += 1
                rounds += 1
            if cut:
                break
            probe_rounds += 1
            for g, res in zip(groups, results):
                # the time the candidate's rounds cost beyond keep's, as served loss forgone
                name = f"{g.name}_probe" if g is groups[0] else g.name
                self._score(
                    trial,
                    server_round,
                    g,
                    res,
                    losses,
                    probe_rounds * extra[g.name] * rate,
                    name,
                    False,
                )
            evidence = self._evidence(groups, losses, math.ceil(probe_rounds / 2))
            # a trial every candidate already clearly loses ends too: the served model has
            # lent its probe clients for nothing long enough
            pick = self._interim(evidence, probe_rounds, st.trial_rounds, futility_from=1)
            if pick != "go on":
                early = True
                break
        pick = self._final(evidence, probe_rounds, early, pick)
        return server_round, rounds, probe_rounds, early, pick, evidence, extra

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
            evidence = self._evidence(groups, losses, math.ceil(rounds / 2))
            # new capacity's first round may read low: futility from the second look on
            pick = self._interim(evidence, rounds, st.plateau_rounds, futility_from=2)
            if pick != "go on":
                early = True
                break
        pick = self._final(evidence, rounds, early, pick)
        return server_round, rounds, early, pick, evidence, extra

    def _score(
        self,
        trial: int,
        server_round: int,
        g: Group,
        res: Any,
        losses: dict[str, list],
        penalty: float,
        name: str,
        served: bool,
    ) -> None:
        """A trial group's round: its new weights, its validation reading and per-sample
        losses (plus `penalty`, served loss forgone), and its row (`name`, `served`)."""
        g.state = res.state
        ev = self.evaluate_result("validation", g.spec, g.state, per_sample=True)
        g.accuracies.append(ev.metrics[self.metric])
        losses[g.name].append(ev.sample_losses + penalty)
        metrics = {**ev.metrics, "loss": ev.loss}
        self._record_round(
            server_round, g.spec, res, metrics, trial=trial, group=name, served=served
        )

    def _interim(
        self, evidence: list, rounds: int, max_rounds: int, futility_from: int
    ) -> int | None | str:
        """The look after a trial's `rounds`-th of `max_rounds` rounds (`early_decision`):
        the candidate adopted at once (`early_win`), None when keep has won already (every
        candidate worse by twice the bar, from round `futility_from` on), or "go on"."""
        st = self.cfg.strategy
        if not st.early_decision or rounds >= max_rounds:
            return "go on"
        pick = early_win(evidence, rounds, st.confidence_z)
        if pick is not None:
            return pick
        bar = 2 * st.confidence_z
        if rounds >= futility_from and all(e.gain + bar * e.stderr < 0 for e in evidence):
            return None
        return "go on"

    def _final(self, evidence: list, rounds: int, early: bool, pick: Any) -> int | None:
        """The trial's decision: the interim look's if it ended the trial, else the paired
        test at the bar over its later rounds (None: keep; also when it had no round)."""
        if early:
            return pick
        return pick_paired(evidence, self.cfg.strategy.confidence_z) if rounds else None

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

    def served_loss_level(self, last: int) -> tuple[float, float]:
        """Mean of the served model's last `last` validation losses and its standard error
        (0 with fewer than 2 readings; (inf, 0) with none)."""
        losses = [v for _, v in self._served_losses()[-last:]]
        if not losses:
            return math.inf, 0.0
        mean = sum(losses) / len(losses)
        if len(losses) < 2:
            return mean, 0.0
        var = sum((v - mean) ** 2 for v in losses) / (len(losses) - 1)
        return mean, math.sqrt(var / len(losses))

    def _served_losses(self) -> list[tuple[float, float]]:
        """(simulated time, validation loss) of every served reading, from the recorded rows,
        so a resumed run computes the same."""
        return [
            (float(r["sim_time_s"]), float(r["val_loss"]))
            for r in self.recorder.rows
            if is_served(r) and r.get("val_loss") is not None
        ]

    def served_loss_rate(self, last: int) -> float:
        """How fast the served model's validation loss fell per simulated second over its
        `last` readings (least-squares slope; 0 when it did not fall). From the recorded rows,
        so a resumed run computes the same."""
        return self.served_loss_trend(last)[0]

    def served_loss_trend(self, last: int) -> tuple[float, float]:
        """(`served_loss_rate`, the standard error of that least-squares slope; 0 with fewer
        than 3 readings)."""
        points = self._served_losses()[-last:]
        if len(points) < 2:
            return 0.0, 0.0
        mt = sum(t for t, _ in points) / len(points)
        ml = sum(v for _, v in points) / len(points)
        var = sum((t - mt) ** 2 for t, _ in points)
        if var <= 0:
            return 0.0, 0.0
        slope = sum((t - mt) * (v - ml) for t, v in points) / var
        stderr = 0.0
        if len(points) > 2:
            residual = sum((v - ml - slope * (t - mt)) ** 2 for t, v in points)
            stderr = math.sqrt(residual / (len(points) - 2) / var)
        return max(0.0, -slope), stderr

    def steady_round_s(self, clients: list[int], g: Group) -> float:
        """The server's estimate of a round of `g`'s configuration on `clients` once their
        caches are filled (a fill is paid once): its slowest client's seconds."""

        def steady(c: int) -> float:
            _, full, step_s, _, transfer_s = self._step_seconds(c, g.spec, g.state)
            return transfer_s + full * step_s

        return max(steady(c) for c in clients)

    def _continue_from(self, winner: Group) -> tuple[dict[str, torch.Tensor], str, float]:
        """A background trial's winner continues from its probes' weights or from its added
        tensors on the served model's (which kept training meanwhile, with more clients),
        whichever has the lower validation loss: (weights, which, that loss)."""
        options = {"probe": winner.state, "served trunk": overlay(winner.state, self.state)}
        loss = {k: self.evaluate("validation", winner.spec, v)[1] for k, v in options.items()}
        best = min(options, key=lambda k: (loss[k], k != "served trunk"))
        return options[best], best, loss[best]

    def _entry(
        self, trial: int, groups: list, winner: Group, early: bool, rounds: int, evidence: list
    ) -> dict[str, Any]:
        """The trajectory's record of a decided trial."""
        return {
            "trial": trial,
            "winner": winner.name,
            "decided_early": early,
            "config": winner.spec.label(),
            "depth": winner.spec.depth,
            "width": winner.spec.width,
            "rounds": rounds,
            "sim_time_s": self.clock.time_s,
            "val_accuracy": winner.accuracies[-1] if winner.accuracies else None,
            "groups": {g.name: g.spec.label() for g in groups},
            "evidence": {
                e.name: {
                    "loss_gain": round(e.gain, 5),
                    "stderr": round(e.stderr, 5),
                    "z": round(e.gain / e.stderr, 2) if e.stderr > 0 else None,
                    "accuracy": round(e.accuracy, 4),
                    "keep_accuracy": round(e.keep_accuracy, 4),
                }
                for e in evidence
            },
        }

    @staticmethod
    def _evidence(groups: list, losses: dict[str, list], last: int) -> list:
        """Each candidate against `keep` over the trial's `last` rounds."""
        keep = groups[0]
        return [
            paired_evidence(
                g.name,
                losses[keep.name][-last:],
                losses[g.name][-last:],
                keep.accuracies[-last:],
                g.accuracies[-last:],
            )
            for g in groups[1:]
        ]
