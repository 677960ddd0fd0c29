"""Shadow trials (`strategy.trial_pace = "shadow"`) on the tiny in-code BERT: candidates carried
by a few probe clients beside the served model, each judged against the served model as it
stands after every probe round."""

from __future__ import annotations

import math

import pytest
import torch
from test_robust_trials import _cfg, _lent_run


def _shadow_run(tiny_model_dir, tmp_path, name, *extra):
    return _lent_run(
        tiny_model_dir,
        tmp_path,
        name,
        "federation.rounds=20",
        "tune.depth=0",
        'strategy.trial_pace="shadow"',
        "strategy.shadow_rounds=3",
        "strategy.patience=50",  # no stall-triggered trial: only the shadow's own starts
        *extra,
    )


def _probe_rounds(rows):
    return [r for r in rows if r["served"] != "True"]


def test_a_shadow_trial_carries_its_candidate_beside_the_served_model(tiny_model_dir, tmp_path):
    """The first trial starts after the first served round; the probes train the candidate
    alone (no keep on the probes), from its own weights from one probe round to the next, for
    up to shadow_rounds; every round serves a model trained by the clients the probes leave;
    each look pairs the candidate with the served model's reading of that moment."""
    _, summary, rows = _shadow_run(tiny_model_dir, tmp_path, "s")
    served = [r for r in rows if r["served"] == "True" and r["group"] != "adopted"]
    assert [int(r["round"]) for r in served] == list(range(1, 21))
    assert not served[0]["trial"]  # round 1 is served alone, then the shadow starts
    first = summary["trajectory"][0]
    assert first["shadow"] is True and first["probes"] == 2
    assert first["groups"] == {"keep": "bottleneck(d=0,w=8)", "deeper": "bottleneck(d=1,w=8)"}
    probes = [r for r in _probe_rounds(rows) if r["trial"] == "1"]
    assert {r["group"] for r in probes} == {"deeper"}  # keep is the served model itself
    assert len(probes) == first["probe_rounds"]
    in_trial = [r for r in served if r["trial"] == "1"]
    assert in_trial and all(len(r["clients"].split()) == 4 for r in in_trial)
    by_round = {r["round"]: r for r in served}
    last = probes[-1]
    ev = first["evidence"]["deeper"]
    # the look's keep is the served model at the probe round's end
    assert ev["keep_accuracy"] == pytest.approx(float(by_round[last["round"]]["val_accuracy"]))
    assert ev["accuracy"] == pytest.approx(float(last["val_accuracy"]))
    if first["winner"] == "keep":
        assert first["probe_rounds"] == 3 and not first["decided_early"]


def _evidence(monkeypatch, gain):
    """Every look reads the candidate `gain` better than the served model, standard error
    0.01 (isolates the decision from what the tiny model learns)."""
    import autofednlp.server.robust as robust
    from autofednlp.server.policies import PairedEvidence

    monkeypatch.setattr(
        robust, "paired_evidence", lambda name, *a: PairedEvidence(name, gain, 0.01, 0.6, 0.5)
    )


def _continue_from(monkeypatch, seen, no_worse=False):
    """Record what the first winner would continue from, and the served model's loss then;
    `no_worse`: report every winner as no worse than the served model."""
    from autofednlp.server.robust import RobustAutoFedRun

    real = RobustAutoFedRun._continue_from

    def spy(self, winner, adopting=False):
        state, start, loss = real(self, winner, adopting)
        if seen:
            return state, start, -math.inf if no_worse else loss
        seen.update(spec=winner.spec, loss=loss, served_loss=self.evaluate("validation")[1])
        seen["state"] = {k: v.clone() for k, v in state.items()}
        return state, start, -math.inf if no_worse else loss

    monkeypatch.setattr(RobustAutoFedRun, "_continue_from", spy)


@pytest.mark.parametrize("gain, wins", [(-0.05, False), (0.015, False), (0.02, True)])
def test_a_shadow_candidate_wins_only_when_clearly_better_than_the_served_model(
    tiny_model_dir, tmp_path, monkeypatch, gain, wins
):
    """Noise (better by less than the bar, 1.64 x 0.01) or a worse candidate does not win,
    however many looks; a clearly better one wins at its second look (one round's reading is
    never enough); then the grown model trains with every client until a stall calls a trial."""
    _evidence(monkeypatch, gain)
    seen: dict = {}
    _continue_from(monkeypatch, seen, no_worse=True)
    run, summary, rows = _shadow_run(tiny_model_dir, tmp_path, "w")
    first = summary["trajectory"][0]
    if not wins:
        assert first["winner"] == "keep" and first["probe_rounds"] == 3
        assert run.spec.depth == 0 and not seen
        return
    assert first["winner"] == "deeper" and first["probe_rounds"] == 2 and first["decided_early"]
    assert seen["spec"].depth == 1
    # after a growth the next trial waits for a stall (patience 50: none in this run)
    assert len(summary["trajectory"]) == 1 and run.spec.depth == 1
    end = int(_probe_rounds(rows)[-1]["round"])
    after = [r for r in rows if int(r["round"]) > end]
    assert after and all(r["served"] == "True" and not r["trial"] for r in after)
    assert {r["config"] for r in after} == {"bottleneck(d=1,w=8)"}
    assert all(len(r["clients"].split()) == 6 for r in after)  # every client again


def test_a_shadow_that_reads_worse_than_the_served_model_now_is_not_handed_out(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Clearly better on the looks (mocked), the winner still replaces the served model only
    if its real validation loss, from whichever start reads better, is no worse than the
    served model's at that moment; if it is worse, keep stays and the entry says so."""
    _evidence(monkeypatch, 1.0)
    seen: dict = {}
    _continue_from(monkeypatch, seen)
    run, summary, _ = _shadow_run(tiny_model_dir, tmp_path, "x", "federation.rounds=12")
    first = summary["trajectory"][0]
    assert seen and first["probe_rounds"] == 2
    if seen["loss"] <= seen["served_loss"]:
        assert first["winner"] == "deeper" and run.spec == seen["spec"]
    else:
        assert first["winner"] == "keep" and first["behind_served"] == "deeper"
        assert run.spec.depth == 0
    assert all(torch.isfinite(v).all() for v in seen["state"].values())


def test_shadow_needs_clients_to_lend(tiny_model_dir, tmp_path):
    from autofednlp.config import ConfigError

    with pytest.raises(ConfigError, match="strategy.trial_probes"):
        _cfg(
            tiny_model_dir,
            tmp_path,
            'strategy.trial_pace="shadow"',
            "strategy.trial_probes=6",
            "strategy.name=autofed",
        )
    with pytest.raises(ConfigError, match="strategy.shadow_rounds"):
        _cfg(tiny_model_dir, tmp_path, "strategy.shadow_rounds=0")


def test_a_served_base_shadow_lays_its_added_tensors_over_the_served_model(
    tiny_model_dir, tmp_path, monkeypatch
):
    """`shadow_base = "served"`: after each probe round the candidate is the probes' weights
    or its added tensors (the new layer's adapter) over the served model as it stands then,
    whichever reads the lower validation loss; the next probe round trains from that."""
    from autofednlp.server.policies import overlay
    from autofednlp.server.robust import RobustAutoFedRun

    looks: list = []
    real_pick, real_lend = RobustAutoFedRun._nearer_served, RobustAutoFedRun._lend

    def pick(self, g, state):
        chosen = real_pick(self, g, state)
        rebased = overlay(state, self.state)
        losses = [self.evaluate("validation", g.spec, s)[1] for s in (state, rebased)]
        looks.append(
            (state, rebased, chosen, losses, {k: v.clone() for k, v in self.state.items()})
        )
        return chosen

    starts: list = []

    def lend(self, trial, groups, probes, server_round, stall, first=None):
        starts.append({k: v.clone() for k, v in groups[0].state.items()})
        return real_lend(self, trial, groups, probes, server_round, stall, first)

    monkeypatch.setattr(RobustAutoFedRun, "_nearer_served", pick)
    monkeypatch.setattr(RobustAutoFedRun, "_lend", lend)
    _, summary, _ = _shadow_run(tiny_model_dir, tmp_path, "b", 'strategy.shadow_base="served"')
    first = summary["trajectory"][0]
    assert len(looks) == first["probe_rounds"] >= 2
    rebased_any = False
    # the first trial at d=0 has one candidate (deeper): one look per probe round
    for i, (own, rebased, chosen, (own_loss, rebased_loss), served) in enumerate(looks):
        added = [k for k in own if k not in served]
        assert added and any("adapter" in k for k in added)
        # the rebased candidate: the served model's tensors (their leading slice, for a
        # wider candidate), the probes' added ones
        for k, t in served.items():
            lead = tuple(slice(0, n) for n in t.shape)
            assert torch.equal(rebased[k][lead], t)
            rest = torch.ones_like(own[k], dtype=torch.bool)
            rest[lead] = False
            assert torch.equal(rebased[k][rest], own[k][rest])
        assert all(torch.equal(rebased[k], own[k]) for k in added)
        want = rebased if rebased_loss <= own_loss else own
        assert all(torch.equal(chosen[k], want[k]) for k in own)
        rebased_any |= want is rebased
        if i + 1 < len(starts):  # the next probe round starts from the chosen weights
            assert all(torch.equal(starts[i + 1][k], chosen[k]) for k in own)
    assert rebased_any  # the served model trains with more clients: its base reads better


def test_sample_errors_are_the_target_metrics_per_sample_terms():
    """A class is wrong (1) or right (0); a tagged sentence scores its share of labelled tokens
    tagged wrong, ignoring unlabelled positions (0 for a sentence with none)."""
    from autofednlp.model.tasks import IGNORE, make_task

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    errors = make_task("classification").sample_errors(logits, torch.tensor([0, 0, 1]))
    assert errors.tolist() == [0.0, 1.0, 1.0]
    # tags: argmax per token; sentence 1 gets 1 of 3 labelled tokens wrong, sentence 2 has none
    tag_logits = torch.tensor(
        [[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0], [1, 0], [1, 0]]]
    ).float()
    labels = torch.tensor([[1, 0, 1, IGNORE], [IGNORE, IGNORE, IGNORE, IGNORE]])
    errors = make_task("tagging").sample_errors(tag_logits, labels)
    assert errors.tolist() == pytest.approx([1 / 3, 0.0])


def test_a_metric_shadow_pairs_errors_on_the_target_metric(tiny_model_dir, tmp_path):
    """`shadow_test = "metric"`: each look pairs per-sample errors, so its gain is the share of
    validation samples the candidate gets right beyond the served model's: exactly its
    accuracy minus the served accuracy of that look (a loss-based look's gain is not)."""
    _, summary, _ = _shadow_run(
        tiny_model_dir, tmp_path, "m", "federation.rounds=6", 'strategy.shadow_test="metric"'
    )
    first = summary["trajectory"][0]
    assert first["test"] == "metric"
    ev = first["evidence"]["deeper"]
    assert "loss_gain" not in ev
    assert ev["error_gain"] == pytest.approx(ev["accuracy"] - ev["keep_accuracy"], abs=1e-4)


def test_shadow_test_must_be_loss_or_metric(tiny_model_dir, tmp_path):
    from autofednlp.config import ConfigError

    with pytest.raises(ConfigError, match="strategy.shadow_test"):
        _cfg(tiny_model_dir, tmp_path, 'strategy.shadow_test="accuracy"')


def test_pick_paired_with_a_second_reference_needs_both_cleared():
    """A candidate clearly better than keep but not than the second reference (a shadow's
    control) does not win; among those that clear both, the largest gain over keep wins."""
    from autofednlp.server.policies import PairedEvidence, pick_paired

    def ev(name, gain):
        return PairedEvidence(name, gain, 0.01, 0.6, 0.5)

    served = [ev("a", 0.10), ev("b", 0.05)]
    assert pick_paired(served, 1.64) == 0
    assert pick_paired(served, 1.64, also=[ev("a", 0.01), ev("b", 0.05)]) == 1
    assert pick_paired(served, 1.64, also=[ev("a", 0.01), ev("b", -0.2)]) is None


def test_a_shadow_control_trains_keeps_configuration_on_the_probes(tiny_model_dir, tmp_path):
    """`shadow_control`: the probes train the current configuration beside the candidate,
    every probe round, and the entry records each candidate's evidence against it, read at
    the trial's last look from the control's own row."""
    _, summary, rows = _shadow_run(
        tiny_model_dir,
        tmp_path,
        "c",
        "federation.rounds=8",
        "strategy.shadow_control=true",
        'strategy.shadow_base="served"',
    )
    first = summary["trajectory"][0]
    probes = [r for r in _probe_rounds(rows) if r["trial"] == "1"]
    control = [r for r in probes if r["group"] == "control"]
    deeper = [r for r in probes if r["group"] == "deeper"]
    assert len(control) == len(deeper) == first["probe_rounds"] >= 1
    assert {r["config"] for r in control} == {"bottleneck(d=0,w=8)"}
    assert [r["clients"] for r in control] == [r["clients"] for r in deeper]  # same probes
    ev = first["control_evidence"]["deeper"]
    assert ev["keep_accuracy"] == pytest.approx(float(control[-1]["val_accuracy"]))
    assert ev["accuracy"] == pytest.approx(float(deeper[-1]["val_accuracy"]))


@pytest.mark.parametrize("control_gain, wins", [(0.0, False), (0.05, True)])
def test_a_shadow_candidate_must_clear_its_control_too(
    tiny_model_dir, tmp_path, monkeypatch, control_gain, wins
):
    """Clearly better than the served model on every look (mocked), a candidate no better
    than the control trained on the same probes does not win; one clearly better than both
    wins at its second look."""
    from autofednlp.server.policies import PairedEvidence
    from autofednlp.server.robust import RobustAutoFedRun

    def evidence(groups, losses, last):
        gain = control_gain if groups[0].name == "control" else 0.05
        return [PairedEvidence(g.name, gain, 0.01, 0.6, 0.5) for g in groups[1:]]

    monkeypatch.setattr(RobustAutoFedRun, "_evidence", staticmethod(evidence))
    _continue_from(monkeypatch, {}, no_worse=True)
    run, summary, _ = _shadow_run(tiny_model_dir, tmp_path, "k", "strategy.shadow_control=true")
    first = summary["trajectory"][0]
    assert first["control_evidence"]["deeper"]["loss_gain"] == control_gain
    if wins:
        assert first["winner"] == "deeper" and first["probe_rounds"] == 2
        assert run.spec.depth == 1
    else:
        assert first["winner"] == "keep" and first["probe_rounds"] == 3
        assert run.spec.depth == 0


@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_a_shadow_judges_its_candidates_as_they_would_be_served(
    tiny_model_dir, tmp_path, monkeypatch, ema
):
    """With `federation.served_ema` the served side of a look is a moving average of the
    served weights, so each carried group (candidate and control) is judged on its own moving
    average of the weights its probes left, with the same decay, restarted at the trial; a
    winner is served as that average. Without it, the raw weights as before."""
    from autofednlp.server.robust import RobustAutoFedRun

    _evidence(monkeypatch, 0.05)  # a clear win at the second look
    _continue_from(monkeypatch, {}, no_worse=True)
    looks: dict = {}
    real_score, real_trial = RobustAutoFedRun._score, RobustAutoFedRun._background_trial

    def score(self, trial, server_round, g, res, losses, penalty, name, served, judged=None):
        real_score(self, trial, server_round, g, res, losses, penalty, name, served, judged)
        state = {k: v.clone() for k, v in g.state.items()}
        kept = None if judged is None else {k: v.clone() for k, v in judged.items()}
        looks.setdefault(g.name, []).append((state, kept))
        if judged is not None:
            assert self.evaluate("validation", g.spec, judged)[1] == pytest.approx(
                float(self.recorder.rows[-1]["val_loss"])
            )  # the row, and the look, read the average

    adopted: dict = {}

    def trial(self, n, groups, server_round, stall):
        out = real_trial(self, n, groups, server_round, stall)
        if not adopted:
            adopted.update(spec=self.spec, served=self.served_state(), groups=groups)
        return out

    monkeypatch.setattr(RobustAutoFedRun, "_score", score)
    monkeypatch.setattr(RobustAutoFedRun, "_background_trial", trial)
    run, summary, _ = _shadow_run(
        tiny_model_dir,
        tmp_path,
        f"e{ema}",
        f"federation.served_ema={ema}",
        "strategy.shadow_control=true",
    )
    assert set(looks) == {"control", "deeper"} and len(looks["deeper"]) == 2
    assert summary["trajectory"][0]["winner"] == "deeper" and adopted["spec"].depth == 1
    won = next(g for g in adopted["groups"] if g.name == "deeper")
    if ema == 0:
        assert all(judged is None for seq in looks.values() for _, judged in seq)
        assert won.average is None
        return
    for seq in looks.values():
        (s1, a1), (s2, a2) = seq
        # restarted at the trial from the first look's weights, then folded at the decay
        assert all(torch.equal(a1[k], s1[k]) for k in s1)
        assert all(torch.allclose(a2[k], torch.lerp(s1[k], s2[k], 1 - ema)) for k in s2)
        assert any(not torch.equal(a2[k], s2[k]) for k in s2)  # not the raw weights
    assert all(torch.equal(adopted["served"][k], won.average[k]) for k in won.average)


@pytest.mark.parametrize("pace", ["shadow", "background"])
def test_probes_that_serve_train_a_served_round_first_and_are_not_lent(
    tiny_model_dir, tmp_path, pace
):
    """`probes_serve`: every served round trains the clients a fixed configuration with the
    same seed draws for it, less the probes still at work on their trial tasks; a probe
    round's probes are among the clients of the served round just before their tasks start,
    in none of the served rounds while they work, and their results count only once the
    clock has passed that round's end plus their tasks' round times."""
    settings = ("federation.rounds=12", "tune.depth=0", f'strategy.trial_pace="{pace}"')
    run, summary, rows = _lent_run(
        tiny_model_dir,
        tmp_path,
        pace,
        *settings,
        "strategy.shadow_rounds=3",
        "strategy.early_decision=false",
        "strategy.probes_serve=true",
    )
    *_, fixed = _lent_run(tiny_model_dir, tmp_path, "fixed", *settings, "strategy.name=fixed")
    draws = {int(r["round"]): set(r["clients"].split()) for r in fixed}
    assert all(len(c) == 6 for c in draws.values())
    served = [r for r in rows if r["served"] == "True"]
    assert [int(r["round"]) for r in served] == list(range(1, 13))
    clients = {int(r["round"]): set(r["clients"].split()) for r in served}
    ends = {int(r["round"]): float(r["sim_time_s"]) for r in served}
    at_work: dict[int, set] = {k: set() for k in clients}
    by_round: dict[int, list] = {}
    for r in _probe_rounds(rows):
        by_round.setdefault(int(r["round"]), []).append(r)
    assert by_round and summary["trajectory"][0]["probes"] == 2
    for rnd, group_rows in by_round.items():
        probe = set(group_rows[0]["clients"].split())
        assert len(probe) == 2 and {r["clients"] for r in group_rows} == {group_rows[0]["clients"]}
        began = max(k for k in range(1, rnd) if probe <= clients[k])
        for k in range(began + 1, rnd + 1):
            at_work[k] |= probe
        took = sum(float(r["round_time_s"]) for r in group_rows)
        assert ends[rnd] >= ends[began] + took - 1e-9
        assert rnd == began + 1 or ends[rnd - 1] < ends[began] + took
    assert any(at_work.values())
    last = max(by_round)  # after it a probe round may be under way whose results never came
    for k, c in clients.items():
        assert c == draws[k] - at_work[k] if k <= last else c <= draws[k] and len(c) >= 4, k
    # the probes' own stream is checkpointed: a resumed run draws the probes it would have
    from autofednlp.report.results import load_checkpoint

    run.checkpoint(13)
    before = run.probe_rng.getstate()
    run.probe_rng.seed(0)
    run.restore(load_checkpoint(tmp_path / pace))
    assert run.probe_rng.getstate() == before


def test_probes_serve_needs_a_pace_with_probes():
    from autofednlp.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="strategy.probes_serve = True: needs strategy.trials"):
        load_config(
            None,
            ['strategy.name="autofed"', 'strategy.trial_pace="keep"', "strategy.probes_serve=true"],
        )


def test_all_cached_chance_is_the_chance_that_a_draw_finds_only_filled_caches():
    from autofednlp.server.shadow import all_cached_chance

    assert all_cached_chance(29, 30, 15) == pytest.approx(0.5)  # 15 of the 30 draws miss one
    assert all_cached_chance(30, 30, 15) == 1.0
    assert all_cached_chance(14, 30, 15) == 0.0
    assert all_cached_chance(3, 4, 2) == pytest.approx(3 / 4 * 2 / 3)
    assert all_cached_chance(60, 100, 15) < 0.001  # 100 clients, 60 filled: no jump coming
    assert all_cached_chance(4, 4, 9) == 1.0  # a draw larger than the pool takes it all


@pytest.mark.parametrize(
    "case, chance, ratio, held",
    [
        ("filled, dear", 1.0, 1.01, True),  # every draw is filled: the next round is cheap
        ("filled, cheap", 1.0, 0.99, False),  # the last round was already near the steady one
        ("filling", 0.5, 1000.0, False),  # half the draws still pay a fill: no jump coming
    ],
)
def test_a_warm_gate_holds_a_winner_back_while_the_served_rounds_are_about_to_get_cheaper(
    tiny_model_dir, tmp_path, monkeypatch, case, chance, ratio, held
):
    """`shadow_warm_gate`: a clearly better candidate is not adopted while the served
    configuration's next round is expected to cost less than 1 / WARM_FACTOR of its last (the
    chance of a draw of filled caches times the steady estimate, plus a round like the last
    otherwise); else it wins as without the gate. The chance is asked of the clients whose
    caches hold the served configuration's boundary: those of the served rounds so far."""
    import autofednlp.server.shadow as shadow
    from autofednlp.server.robust import RobustAutoFedRun

    _evidence(monkeypatch, 0.02)  # clearly better at every look
    _continue_from(monkeypatch, {}, no_worse=True)
    estimates, asked = [], []

    def steady(self, clients, g):  # the served round, as the server would estimate it
        assert g.name == "keep" and g.spec == self.spec
        served = [r for r in self.recorder.rows if r.get("served")]
        assert clients == [int(c) for c in str(served[-1]["clients"]).split()]
        filled = {int(c) for r in served for c in str(r["clients"]).split()}
        assert asked[-1] == (len(filled), 12, 6)  # the served head's clients, of 12, 6 a draw
        estimates.append(served[-1]["round_time_s"] / (shadow.WARM_FACTOR * ratio))
        return estimates[-1]

    def spy(cached, pool, draw):
        asked.append((cached, pool, draw))
        return chance

    monkeypatch.setattr(RobustAutoFedRun, "steady_round_s", steady)
    monkeypatch.setattr(shadow, "all_cached_chance", spy)
    run, summary, _ = _shadow_run(
        tiny_model_dir, tmp_path, "g", "strategy.shadow_warm_gate=true", "data.num_clients=12"
    )
    first = summary["trajectory"][0]
    assert estimates  # asked only once a candidate clears the bar, from its second look on
    if held:
        assert first["winner"] == "keep" and first["probe_rounds"] == 3 and run.spec.depth == 0
        assert len(estimates) == 2  # its second and third looks (shadow_rounds 3)
    else:
        assert first["winner"] == "deeper" and first["probe_rounds"] == 2
        assert len(estimates) == 1 and run.spec.depth == 1


def test_a_trial_that_cannot_decide_before_the_time_budget_ends_is_not_started(
    tiny_model_dir, tmp_path
):
    """With a time budget, a due trial starts only if the server's estimate of its probe
    rounds (once caches are filled: fills only add) leaves room for the two a winner needs;
    otherwise the probes keep serving, every round trains all its clients, and the summary
    says when a trial was first left out. With room, the same trial starts."""
    _, roomy, free = _shadow_run(tiny_model_dir, tmp_path, "roomy", "federation.time_budget_s=1000")
    assert roomy["trials"] >= 1 and roomy["late_trial_s"] is None
    first_end = float(next(r for r in free if r["served"] == "True")["sim_time_s"])
    tight = f"federation.time_budget_s={first_end * 1.01}"
    run, summary, rows = _shadow_run(tiny_model_dir, tmp_path, "tight", tight)
    assert summary["trials"] == 0 and summary["trajectory"] == []
    assert summary["late_trial_s"] == pytest.approx(first_end)
    assert run._strategy["late_trial_s"] == summary["late_trial_s"]  # checkpointed state
    assert not _probe_rounds(rows)
    served = [r for r in rows if r["served"] == "True"]
    assert len(served) == 2 and all(len(r["clients"].split()) == 6 for r in served)
