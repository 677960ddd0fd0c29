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
- With `trial_pace = "background"` a trial has no rounds of its own: a few probe clients
  train keep and every candidate from the same weights (paired on the same clients' data; a
  candidate pays for its extra round time at the served model's recent loss rate) while the
  other clients train the served model at its own pace (`_background_trial`). The default,
  `"shadow"`, lends probes the same way but carries each candidate for several probe rounds
  and judges it against the served model as it stands (`server/shadow.py`).
- Otherwise a trial has rounds of its own, each splitting the sampled clients into one group
  per candidate over a shared trunk (`server/group_trials.py`). With `plateau_rounds`, a trial
  at a plateau of the served model takes every client (`server/plateau.py`). Candidates are
  paced and priced by the server's round-time estimates (`server/pacing.py`).
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

from autofednlp.model.kinds import TuneSpec
from autofednlp.server.autofed import AutoFedRun, Group
from autofednlp.server.group_trials import GroupTrials
from autofednlp.server.pacing import ClientPacing
from autofednlp.server.plateau import PlateauTrials
from autofednlp.server.policies import (
    EARLY_WIN_ROUNDS,
    StallDetector,
    TrialSchedule,
    candidate_policy,
    early_win,
    overlay,
    paired_evidence,
    pick_paired,
)
from autofednlp.server.shadow import ShadowTrials


class RobustAutoFedRun(ClientPacing, ShadowTrials, PlateauTrials, GroupTrials, AutoFedRun):
    """Stall-triggered trials over a shared trunk, decided by a paired test."""

    def run(self) -> dict[str, Any]:
        fed, st = self.cfg.federation, self.cfg.strategy
        policy = candidate_policy(self.cfg, self.model_for(self.spec).num_layers)
        schedule = TrialSchedule(st.trial_every, st.trial_backoff, wait_time=st.trial_wait_time)
        saved = getattr(self, "_resumed_strategy", None)
        self._cached = {}
        self._plateau_ref = None
        if saved:
            trajectory, trial = saved["trajectory"], saved["trial"]
            late = saved.get("late_trial_s")
            stall = StallDetector(st.patience, st.min_delta, saved["best"], saved["since_gain"])
            since_trial = saved["since_trial"]
            schedule.restore(saved.get("schedule", {"scale": saved.get("schedule_scale", 1.0)}))
            self._cached = {int(c): set(b) for c, b in saved.get("cached", {}).items()}
            ref = saved.get("plateau_ref")
            self._plateau_ref = None if ref is None else (float(ref[0]), float(ref[1]))
        else:
            start = self.evaluate("validation")[0]
            trajectory, trial, since_trial, late = [], 0, 0, None
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
                "late_trial_s": late,
            }

        while self.more_rounds(server_round):
            candidates = policy(self.spec, self._reach(trajectory))
            due = schedule.due(since_trial, stall, self.clock.time_s)
            if due and st.trial_gate == "plateau":
                due = self._settled(max(3, 2 * st.patience))
            due = (due or self._shadow_due(trajectory, server_round)) and len(candidates) > 1
            if due and not self._trial_fits(candidates):
                # too late to decide one before the budget ends: the probes keep serving
                due = False
                if late is None:
                    late = self.clock.time_s
            if due:
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
        # when a due trial was first left out because it could not decide before the budget
        return self.finish({"trajectory": trajectory, "trials": trial, "late_trial_s": late})

    def _trial_fits(self, candidates: list) -> bool:
        """Whether a probe trial started now can gather what a winner needs,
        `EARLY_WIN_ROUNDS` probe rounds, before `federation.time_budget_s` runs out. Each probe
        round is priced at the server's estimate of its tasks on the last served round's
        clients once their caches are filled (`steady_round_s`): it leaves out cache fills,
        which only add, though it takes the slowest of a whole round where the probes are a
        few of its clients. Such a trial can only lend its probes:
        with 100 clients on BBC News the shadow's second trial (a d=4 and a wider candidate
        beside the control) started 0.9-1.9 s before the budget's end in every run, had one or
        two probe rounds and never won. Left out (in 5 of 6 seeds of alpha 1, RESULTS.md,
        twenty-sixth measurement), every target was reached at the same time, with 7-14% less
        upload traffic and 5-12% less client energy. Without a time budget, or with trial
        rounds of their own, every trial may start."""
        st = self.cfg.strategy
        budget = self.cfg.federation.time_budget_s
        if budget <= 0 or st.trial_pace not in ("background", "shadow"):
            return True
        last = self.last_served()
        if last is None:
            return True
        clients = last[0]
        keep = Group(candidates[0].name, self.spec, self.state)
        tasks = [
            Group(c.name, c.spec, self.grow(self.state, self.spec, c.spec)) for c in candidates[1:]
        ]
        if st.trial_pace == "background" or st.shadow_control:
            tasks.append(keep)  # keep on the probes, or the shadow's control
        if self.cfg.probes_serve:
            tasks.append(keep)  # the served round the probes train first
        probe_round_s = sum(self.steady_round_s(clients, g) for g in tasks)
        return self.clock.time_s + EARLY_WIN_ROUNDS * probe_round_s <= budget

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

    def _exploit_round(
        self, server_round: int, clients: list[int] | None = None, **row: Any
    ) -> float:
        """One round of the current configuration with `clients` (default: every sampled
        client); `row`: extra columns of its row."""
        if clients is None:
            clients = self.sample(self.cfg.federation.clients_per_round)
        (res,) = self.train_groups(server_round, [(self.spec, self.state, clients)])
        self.state = res.state
        self.fold_served()
        self.clock.advance(res.cost)
        metrics = self.evaluate_metrics("validation")
        self._record_round(server_round, self.spec, res, metrics, **row, served=True)
        return metrics[self.metric]

    def _trial(
        self, trial: int, candidates: list, server_round: int, stall: StallDetector
    ) -> tuple[int, dict[str, Any]]:
        st = self.cfg.strategy
        groups = [
            Group(c.name, c.spec, self.grow(self.state, self.spec, c.spec)) for c in candidates
        ]
        if st.trial_pace in ("background", "shadow"):
            return self._background_trial(trial, groups, server_round, stall)
        return self._group_trial(trial, groups, server_round, stall)

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
        (`_plateau`) is a `_plateau_trial` instead; with `trial_pace = "shadow"` every trial
        is a `_shadow_trial`, decided the same way from there on."""
        fed, st = self.cfg.federation, self.cfg.strategy
        control = None  # a shadow's evidence against its control (shadow_control)
        window = max(3, 2 * st.patience)
        # the rate's standard error is recorded beside it: a z in the trajectory counts only the
        # validation samples' noise, and over a few readings the rate can be mostly noise
        rate, rate_se = self.served_loss_trend(window)
        shadow = st.trial_pace == "shadow"
        lent = st.trial_probes or max(1, fed.clients_per_round // 3)  # < per round
        plateau_by = self._plateau(window) if st.plateau_rounds and not shadow else None
        if shadow:
            rate, extra, n_probe = 0.0, {}, lent  # against the served model at that moment
            server_round, rounds, probe_rounds, early, pick, evidence, control = self._shadow_trial(
                trial, groups, server_round, stall, n_probe
            )
        elif plateau_by:
            rate = 0.0  # at a plateau the served model gains nothing per second
            n_probe = fed.clients_per_round
            server_round, rounds, early, pick, evidence, extra = self._plateau_trial(
                trial, groups, server_round, stall
            )
            probe_rounds = rounds
        else:
            n_probe = lent
            server_round, rounds, probe_rounds, early, pick, evidence, extra = self._lent_trial(
                trial, groups, server_round, stall, n_probe, rate
            )
        served_acc, served_loss = self.evaluate("validation")
        start, behind = "served", None
        if pick is not None:
            won = groups[1 + pick]
            state, start, loss = self._continue_from(won, adopting=True)
            if loss <= served_loss:
                self.spec, self.state = won.spec, state
                if won.average is not None:
                    self._served = (won.spec, won.average)
                self.record_adoption(server_round, trial)
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
            shadow=shadow,
            test="metric" if self._pairs_errors() else "loss",
            plateau_by=plateau_by,
            served_loss_rate=round(rate, 6),
            served_loss_rate_se=round(rate_se, 6),
            extra_s={k: round(v, 5) for k, v in extra.items() if k != groups[0].name},
            continued_from=start,
        )
        if control is not None:
            entry["control_evidence"] = self._evidence_record(control)
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
        st = self.cfg.strategy
        losses: dict[str, list] = {g.name: [] for g in groups}
        extra: dict[str, float] = {}
        rounds = probe_rounds = 0
        early, pick, evidence = False, None, []
        while probe_rounds < st.trial_rounds and self.more_rounds(server_round):
            probes, first = self._draw_probes(n_probe)
            if not extra:
                keep_s = self.steady_round_s(probes, groups[0])
                extra = {g.name: max(0.0, self.steady_round_s(probes, g) - keep_s) for g in groups}
            server_round, lent, results = self._lend(
                trial, groups, probes, server_round, stall, first
            )
            rounds += lent
            if results is None:
                break  # the run ends before this probe round's results are in
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
            # a trial every candidate already clearly loses ends too: the served model has
            # lent its probe clients for nothing long enough
            evidence, pick = self._look(groups, losses, probe_rounds, st.trial_rounds, 1)
            if pick != "go on":
                early = True
                break
        pick = self._final(evidence, probe_rounds, early, pick)
        return server_round, rounds, probe_rounds, early, pick, evidence, extra

    def _draw_probes(self, n_probe: int) -> tuple[list[int], list[int] | None]:
        """A probe round's `n_probe` probes, and with `strategy.probes_serve` the clients of
        the served round they train first: the clients a fixed configuration would draw for
        that round, the probes picked among them from a stream of their own (`probe_rng`). The
        served rounds then draw every round's clients as a fixed configuration with the same
        seed does, whatever the trials do: a served model's time to a target is compared with
        a fixed configuration's on the same clients' data, not on another draw of them (on
        BBC News a head served on other draws reached 90% 0.4-1.4 times as soon as the fixed
        head, RESULTS.md, twenty-second measurement)."""
        if not self.cfg.probes_serve:
            return self.sample(n_probe), None
        clients = self.sample(self.cfg.federation.clients_per_round)
        return sorted(self.probe_rng.sample(clients, n_probe)), clients

    def _lend(
        self,
        trial: int,
        groups: list,
        probes: list[int],
        server_round: int,
        stall: StallDetector,
        first: list[int] | None = None,
    ) -> tuple[int, int, list | None]:
        """One probe round: each of `groups` trains on the `probes`, from its own weights,
        while the round's other clients train the served model round after round, until the
        probes could have trained all their tasks (the sum of the tasks' round times, an upper
        bound); their traffic and energy count at once. With `strategy.probes_serve` the
        probes first train the served round `first` (which holds them) as any sampled client,
        and take their trial tasks only after it; the served rounds meanwhile train the
        clients a fixed configuration would draw, less the probes still at work. (The last
        served round, the served rounds it took, the groups' results: None when the run ends
        before they are in.)"""
        fed = self.cfg.federation
        server_round += 1
        rounds = 1
        busy, serve = set(probes), self.cfg.probes_serve
        if serve:
            # the probes train this served round as any sampled client would, and their
            # trial tasks after it: the served model lends no one
            stall.observe(self._exploit_round(server_round, first, trial=trial, group="keep"))
            if not self.more_rounds(server_round):
                return server_round, rounds, None
            server_round += 1
            rounds += 1
        # one call per group (a client is in one group of a call); the replies are waited for
        # after the served round below, as a deployment would
        tasks = [[(g.spec, g.state, probes)] for g in groups]
        sent = [self.send_groups(server_round, t) for t in tasks]
        start_s = self.clock.time_s
        results: list = []
        while True:
            if serve:
                # a fixed configuration's draw, less the probes at work (never all of it:
                # trial_probes < clients_per_round)
                clients = [c for c in self.sample(fed.clients_per_round) if c not in busy]
            else:
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
                return server_round, rounds, results
            if not self.more_rounds(server_round):
                return server_round, rounds, None
            server_round += 1
            rounds += 1

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
        judged: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """A trial group's round: its new weights, its validation reading and per-sample
        losses (plus `penalty`, served loss forgone), and its row (`name`, `served`); the
        reading is of `judged` where given (a shadow's moving average), else of the weights."""
        g.state = res.state
        ev = self.evaluate_result(
            "validation", g.spec, g.state if judged is None else judged, per_sample=True
        )
        g.accuracies.append(ev.metrics[self.metric])
        losses[g.name].append(self._judged(ev) + penalty)
        metrics = {**ev.metrics, "loss": ev.loss}
        self._record_round(
            server_round, g.spec, res, metrics, trial=trial, group=name, served=served
        )

    def _look(
        self,
        groups: list,
        losses: dict[str, list],
        rounds: int,
        max_rounds: int,
        futility_from: int,
    ) -> tuple[list, int | None | str]:
        """The evidence over the trial's later half of `rounds` rounds, and the interim look's
        verdict on it (`_interim`)."""
        evidence = self._evidence(groups, losses, math.ceil(rounds / 2))
        return evidence, self._interim(evidence, rounds, max_rounds, futility_from)

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

    def _continue_from(
        self, winner: Group, adopting: bool = False
    ) -> tuple[dict[str, torch.Tensor], str, float]:
        """A background trial's winner continues from its probes' weights or from its added
        tensors on the served configuration's latest global weights (which kept training
        meanwhile, with more clients; never the served average of `federation.served_ema`),
        whichever has the lower validation loss: (weights, which, that loss). `adopting` a
        shadow's winner judged on its moving average (`winner.average`): the loss is that
        average's, which is what would be served."""
        options = {"probe": winner.state, "served trunk": overlay(winner.state, self.state)}
        loss = {k: self.evaluate("validation", winner.spec, v)[1] for k, v in options.items()}
        best = min(options, key=lambda k: (loss[k], k != "served trunk"))
        if adopting and winner.average is not None:
            return options[best], best, self.evaluate("validation", winner.spec, winner.average)[1]
        return options[best], best, loss[best]

    def _entry(
        self, trial: int, groups: list, winner: Group, early: bool, rounds: int, evidence: list
    ) -> dict[str, Any]:
        """The trajectory's record of a decided trial. A look pairs per-sample losses
        (`loss_gain`) or, under a shadow with `shadow_test = "metric"`, per-sample errors on the
        target metric's terms (`error_gain`: the share of samples the candidate gets right
        beyond the served model's)."""
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
            "evidence": self._evidence_record(evidence),
        }

    def _evidence_record(self, evidence: list) -> dict[str, dict[str, Any]]:
        """Each candidate's paired evidence as the trajectory records it (`_entry`)."""
        gain_key = "error_gain" if self._pairs_errors() else "loss_gain"
        return {
            e.name: {
                gain_key: round(e.gain, 5),
                "stderr": round(e.stderr, 5),
                "z": round(e.gain / e.stderr, 2) if e.stderr > 0 else None,
                "accuracy": round(e.accuracy, 4),
                "keep_accuracy": round(e.keep_accuracy, 4),
            }
            for e in evidence
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
