"""`federation.served_ema`: the server hands out a moving average of the global weights, on the
tiny in-code BERT. Clients still train from the latest global weights."""

from __future__ import annotations

import csv

import pytest
import torch
from small_run import small_config

from autofednlp.config import ConfigError, load_config


def _fixed_run(tiny_model_dir, tmp_path, name, decay, spy=None):
    from autofednlp.client.worker import client_data
    from autofednlp.server import make_run
    from autofednlp.server.inprocess import InProcessTransport

    cfg = small_config(
        tiny_model_dir,
        tmp_path,
        "federation.rounds=4",
        "tune.depth=1",
        "tune.width=8",
        f"federation.served_ema={decay}",
    )
    run = make_run(cfg, client_data(cfg), InProcessTransport(cfg), tmp_path / name, False)
    if spy is not None:
        fold = run.fold_served

        def recording_fold():
            spy.append({k: v.clone() for k, v in run.state.items()})
            fold()

        run.fold_served = recording_fold
    summary = run.run()
    return run, summary, list(csv.DictReader(open(tmp_path / name / "rounds.csv")))


def test_the_served_model_is_the_moving_average_and_training_is_unchanged(tiny_model_dir, tmp_path):
    """Each round's global weights fold into the average; the readings, the test metrics and
    the saved weights are the average's; clients train exactly as without it."""
    globals_: list[dict] = []
    run, summary, rows = _fixed_run(tiny_model_dir, tmp_path, "ema", 0.5, globals_)
    _, plain_summary, plain_rows = _fixed_run(tiny_model_dir, tmp_path, "plain", 0.0)

    assert len(globals_) == 4
    expected = dict(globals_[0])
    for g in globals_[1:]:
        expected = {k: 0.5 * expected[k] + 0.5 * g[k] for k in g}
    saved = torch.load(tmp_path / "ema" / "trainable_state.pt")
    assert all(torch.allclose(saved[k], expected[k], atol=1e-6) for k in expected)
    # the raw weights go on training: the checkpoint holds the last global weights
    assert all(torch.equal(run.state[k], globals_[-1][k]) for k in expected)
    assert not all(torch.allclose(saved[k], run.state[k]) for k in expected)
    # same training (same clients, same losses), different served readings
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in plain_rows]
    assert rows[0]["val_loss"] == plain_rows[0]["val_loss"]  # round 1: the average is one model
    assert [r["val_loss"] for r in rows[1:]] != [r["val_loss"] for r in plain_rows[1:]]
    assert float(rows[-1]["val_accuracy"]) == pytest.approx(summary["final_val_accuracy"])
    acc, loss = run.evaluate("validation", run.spec, expected)
    assert float(rows[-1]["val_loss"]) == pytest.approx(loss, rel=1e-5)


def test_the_average_restarts_when_the_configuration_changes(tiny_model_dir, tmp_path):
    from autofednlp.model.kinds import TuneSpec

    run, _, _ = _fixed_run(tiny_model_dir, tmp_path, "r", 0.5)
    old = run.served_state()
    assert old is not run.state
    grown_spec = TuneSpec(run.spec.kind, run.spec.depth + 1, run.spec.width)
    run.spec, run.state = grown_spec, run.initial_state(grown_spec)
    # before the new configuration's first fold, the server hands out its weights as they are
    assert run.served_state() is run.state
    run.fold_served()
    assert all(torch.equal(run.served_state()[k], run.state[k]) for k in run.state)


def test_trials_serve_the_average_judge_against_it_and_restart_it_after_a_growth(
    tiny_model_dir, tmp_path, monkeypatch
):
    """A shadow trial with a served average: every served reading (and the served side of each
    paired look) is the average's of the global weights folded so far; a clearly better
    candidate (mocked evidence) is adopted and served as its own average over its looks, which
    the new configuration's rounds then fold into."""
    from test_shadow_trials import _continue_from, _shadow_run

    import autofednlp.server.robust as robust
    from autofednlp.server.loop import FederatedRun
    from autofednlp.server.policies import PairedEvidence

    looks: list[float] = []  # the served model's accuracy at each paired look

    def evidence(name, keep_losses, cand_losses, keep_acc, cand_acc):
        looks.append(keep_acc[-1])
        return PairedEvidence(name, 0.02, 0.01, 0.6, 0.5)  # clearly better: wins

    monkeypatch.setattr(robust, "paired_evidence", evidence)
    _continue_from(monkeypatch, {}, no_worse=True)
    folds: list = []  # (configuration, global weights, the average before it) at each fold
    fold = FederatedRun.fold_served

    def recording_fold(self):
        before = None if self._served is None else (self._served[0], dict(self._served[1]))
        folds.append((self.spec, {k: v.clone() for k, v in self.state.items()}, before))
        fold(self)

    monkeypatch.setattr(FederatedRun, "fold_served", recording_fold)
    run, summary, rows = _shadow_run(tiny_model_dir, tmp_path, "w", "federation.served_ema=0.6")

    assert summary["trajectory"][0]["winner"] == "deeper"
    assert [s.depth for s, _, _ in folds][0] == 0 and folds[-1][0].depth == 1
    adopted = [r for r in rows if r["group"] == "adopted"]
    served = [r for r in rows if r["served"] == "True" and r["group"] != "adopted"]
    assert len(served) == len(folds)
    averages, avg, spec, handed = [], None, None, 0
    for s, weights, before in folds:
        if s != spec and before is not None and before[0] == s:
            # the shadow's winner: served as its own average, which this round folds into
            avg, spec, handed = {k: 0.6 * before[1][k] + 0.4 * w for k, w in weights.items()}, s, 1
        elif s != spec:  # the run's first configuration: the average starts from its weights
            avg, spec = dict(weights), s
        else:
            avg = {k: 0.6 * avg[k] + 0.4 * w for k, w in weights.items()}
        averages.append((s, avg))
    assert handed == 1
    # the adoption is a served reading of its own, at that moment: the winner's average as
    # handed out, before the new configuration's first round folds into it
    (row,) = adopted
    first_new = next(before for s, _, before in folds if s.depth == 1)
    assert row["served"] == "True" and row["config"] == first_new[0].label()
    assert float(row["val_loss"]) == pytest.approx(
        run.evaluate("validation", first_new[0], first_new[1])[1], rel=1e-5
    )
    assert float(row["sim_time_s"]) == pytest.approx(summary["trajectory"][0]["sim_time_s"])
    for row, (s, avg) in zip(served, averages):
        assert row["config"] == s.label()
        assert float(row["val_loss"]) == pytest.approx(
            run.evaluate("validation", s, avg)[1], rel=1e-5
        )
    # the trial's looks compare with the served average of that moment
    by_round = {r["round"]: float(r["val_accuracy"]) for r in served}
    probe_ends = [r["round"] for r in rows if r["group"] == "deeper"]
    assert looks == pytest.approx([by_round[r] for r in probe_ends])
    saved = torch.load(tmp_path / "w" / "trainable_state.pt")
    assert all(torch.allclose(saved[k], averages[-1][1][k], atol=1e-6) for k in saved)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["federation.served_ema=1.0"], "must be in \\[0, 1\\)"),
        (["federation.served_ema=-0.1"], "must be in \\[0, 1\\)"),
        (
            ["strategy.name=autofed", 'strategy.trial_pace="keep"', "federation.served_ema=0.5"],
            "federation.served_ema.*trial_pace background",
        ),
        (
            [
                "strategy.name=autofed",
                'strategy.trial_pace="background"',
                "strategy.plateau_rounds=2",
                "federation.served_ema=0.5",
            ],
            "federation.served_ema.*plateau_rounds = 0",
        ),
        (
            ["strategy.name=autofed", 'strategy.trials="published"', "federation.served_ema=0.5"],
            "federation.served_ema.*strategy.trials = robust",
        ),
    ],
)
def test_bad_served_ema_is_refused_naming_the_key(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, extra)
