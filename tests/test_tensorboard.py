"""The `tensorboard` option: event files that say what rounds.csv says, once per step."""

import csv
import json

import pytest
from small_run import small_config

from autofednlp.run import resume_experiment, run_experiment
from autofednlp.server.autofed import AutoFedRun


def _scalars(run_dir):
    """{tag: [(step, value), ...]} as TensorBoard reads the run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _rows(run_dir):
    with open(run_dir / "rounds.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_scalars_match_rounds_csv(tiny_model_dir, tmp_path):
    cfg = small_config(tiny_model_dir, tmp_path, "federation.rounds=3", "tensorboard=true")
    summary = run_experiment(cfg, str(tmp_path / "r"), progress=False)
    rows, tb = _rows(tmp_path / "r"), _scalars(tmp_path / "r")
    assert [s for s, _ in tb["val/accuracy"]] == [1, 2, 3]
    for (_, v), r in zip(tb["val/accuracy"], rows):
        assert v == pytest.approx(float(r["val_accuracy"]))
    assert [s for s, _ in tb["val/accuracy_vs_sim_ms"]] == [
        round(float(r["sim_time_s"]) * 1000) for r in rows
    ]
    assert tb["sim/traffic_mb"][-1][1] == pytest.approx(
        (summary["bytes_up"] + summary["bytes_down"]) / 1e6
    )
    assert tb["sim/energy_j"][-1][1] == pytest.approx(summary["energy_j"])
    assert {"val/loss", "train/loss", "sim/time_s"} <= set(tb)


def test_no_tensorboard_directory_without_the_option(tiny_model_dir, tmp_path):
    run_experiment(
        small_config(tiny_model_dir, tmp_path, "federation.rounds=1"), str(tmp_path / "r")
    )
    assert (tmp_path / "r" / "rounds.csv").exists()
    assert not (tmp_path / "r" / "tensorboard").exists()


def test_autofed_groups_and_winners_after_a_resume(tiny_model_dir, tmp_path, monkeypatch):
    """Killed after trial 2 was logged but before its checkpoint: the resumed run logs every
    step once, each group under its own tags and each trial's winner under the plain ones."""
    cfg = small_config(
        tiny_model_dir,
        tmp_path,
        "federation.rounds=5",
        "federation.checkpoint_every=1",
        "strategy.name=autofed",
        'strategy.trials="published"',  # every round is part of a trial
        "strategy.trial_rounds=1",
        "strategy.max_group_rounds=2",
        "strategy.max_width=16",
        "tune.depth=0",
        "tune.width=8",
        "tensorboard=true",
    )
    real_checkpoint, calls = AutoFedRun.checkpoint, []

    def killed_at_second_checkpoint(self, *args, **kw):
        calls.append(1)
        if len(calls) == 3:  # the first is written before round 1
            raise KeyboardInterrupt
        real_checkpoint(self, *args, **kw)

    monkeypatch.setattr(AutoFedRun, "checkpoint", killed_at_second_checkpoint)
    run_dir = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, str(run_dir), progress=False)
    assert len(_scalars(run_dir)["val/accuracy"]) == 2  # trial 2 logged, its checkpoint not
    monkeypatch.setattr(AutoFedRun, "checkpoint", real_checkpoint)
    summary = resume_experiment(str(run_dir), progress=False)

    rows, tb = _rows(run_dir), _scalars(run_dir)
    for group in {r["group"] for r in rows}:
        mine = [r for r in rows if r["group"] == group]
        logged = tb[f"val/accuracy/{group}"]
        assert [s for s, _ in logged] == [int(r["round"]) for r in mine]
        assert [v for _, v in logged] == pytest.approx([float(r["val_accuracy"]) for r in mine])
    trajectory = json.loads((run_dir / "summary.json").read_text())["trajectory"]
    assert summary["trials"] == len(trajectory) >= 2
    last_round = {
        t["trial"]: max(int(r["round"]) for r in rows if int(r["trial"]) == t["trial"])
        for t in trajectory
    }
    assert [s for s, _ in tb["val/accuracy"]] == [last_round[t["trial"]] for t in trajectory]
    assert [v for _, v in tb["val/accuracy"]] == pytest.approx(
        [t["val_accuracy"] for t in trajectory]
    )
    assert [v for _, v in tb["config/depth"]] == [t["depth"] for t in trajectory]
    assert [v for _, v in tb["config/width"]] == [t["width"] for t in trajectory]
