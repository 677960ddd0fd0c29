"""Kill a run part-way, resume it, and get exactly what the uninterrupted run gets."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

COMPARED = [
    "round",
    "trial",
    "group",
    "config",
    "sim_time_s",
    "val_accuracy",
    "clients",
    "bytes_up",
    "energy_j",
    "cache_hits",
    "cache_misses",
    "epsilon",
]


def _argv(tiny_model_dir, *extra):
    sets = [
        f'model.name="{tiny_model_dir}"',
        "data.max_samples=120",
        "data.max_length=32",
        "data.num_clients=8",
        "federation.clients_per_round=4",
        "federation.rounds=6",
        "federation.engine=inprocess",
        "federation.checkpoint_every=1",
        *extra,
    ]
    return [x for s in sets for x in ("--set", s)]


def _cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return [sys.executable, "-m", "autofednlp.cli", "run", "--progress", "quiet", *args], env


def _rows(run_dir):
    with open(run_dir / "rounds.csv") as f:
        return [{k: r[k] for k in COMPARED} for r in csv.DictReader(f)]


# robust trials that start at once (every reading a stall), one round each
ROBUST = [
    "strategy.name=autofed",
    "tune.depth=0",
    "tune.width=8",
    "strategy.max_width=16",
    "strategy.patience=1",
    "strategy.trial_rounds=1",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy",
    [
        ["strategy.name=fixed", "tune.depth=1", "tune.width=8"],
        [
            "strategy.name=autofed",
            'strategy.trials="published"',
            "tune.depth=0",
            "tune.width=8",
            "strategy.max_width=16",
            "strategy.trial_rounds=1",
        ],
        # stall counter, best reading, trajectory and the schedule's clock are checkpointed
        [*ROBUST, "strategy.trial_wait_time=true", 'strategy.trial_pace="keep"'],
        # background trials and escalate keep their state in the trajectory, the plateau's
        # reference level in the strategy state (trial 1 is at a plateau by its slope,
        # trial 2 by its level)
        [
            *ROBUST,
            'strategy.trial_pace="background"',
            "strategy.escalate=true",
            "strategy.plateau_rounds=1",
            "federation.rounds=12",
        ],
        # a shadow trial starts from the trajectory alone (none yet, or the last one grew)
        [
            *ROBUST,
            'strategy.trial_pace="shadow"',
            "strategy.shadow_rounds=2",
            "federation.rounds=12",
        ],
        [  # the served moving average is checkpointed beside the latest global weights
            *ROBUST,
            'strategy.trial_pace="background"',
            "federation.served_ema=0.5",
            "federation.rounds=10",
        ],
        [  # noise RNG, privacy ledger and server optimizer state are checkpointed
            "strategy.name=fixed",
            "tune.depth=1",
            "tune.width=8",
            'privacy.mode="central"',
            "privacy.noise_multiplier=0.5",
            'aggregation.name="fedadam"',
        ],
        [  # ... and the optimizer state of every configuration a trial grows
            "strategy.name=autofed",
            "tune.depth=0",
            "tune.width=8",
            "strategy.max_width=16",
            "strategy.trial_every=2",
            "strategy.trial_rounds=1",
            'strategy.trial_pace="background"',  # trials short enough to end in 6 rounds
            'privacy.mode="central"',
            'aggregation.name="fedavgm"',
        ],
    ],
    ids=[
        "fixed",
        "autofed-published",
        "autofed-robust",
        "robust-background",
        "robust-shadow",
        "robust-served-ema",
        "fixed-dp-fedadam",
        "robust-dp-fedavgm",
    ],
)
def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tiny_model_dir, tmp_path, strategy):
    argv = _argv(tiny_model_dir, *strategy)
    whole = tmp_path / "whole"
    cmd, env = _cli(*argv, "--run-dir", str(whole))
    subprocess.run(cmd, env=env, check=True, timeout=600)

    cut = tmp_path / "cut"
    cmd, env = _cli(*argv, "--run-dir", str(cut))
    proc = subprocess.Popen(cmd, env=env)
    kill_after = random.Random().randint(2, 4)  # rows written, so a checkpoint exists
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        rows = (
            (cut / "rounds.csv").read_text().count("\n") - 1 if (cut / "rounds.csv").exists() else 0
        )
        if rows >= kill_after and (cut / "checkpoint.pt").exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "summary.json").exists(), "the run finished before it could be killed"

    cmd, env = _cli("--resume", str(cut))
    subprocess.run(cmd, env=env, check=True, timeout=600)

    assert _rows(cut) == _rows(whole)
    a = json.loads((whole / "summary.json").read_text())
    b = json.loads((cut / "summary.json").read_text())
    for key in (
        "test_accuracy",
        "sim_time_s",
        "bytes_up",
        "energy_j",
        "time_to_accuracy",
        "config",
        "trajectory",
        "late_trial_s",
        "privacy",
    ):
        assert a.get(key) == b.get(key), key
    wa = torch.load(whole / "trainable_state.pt")
    wb = torch.load(cut / "trainable_state.pt")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_without_checkpoint_is_a_user_error(tmp_path, capsys):
    from autofednlp.cli import main

    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err


def _sets(tiny_model_dir, *extra):
    from small_run import small_overrides

    args = [*small_overrides(tiny_model_dir), "tune.depth=1", "tune.width=8", *extra]
    return [x for a in args for x in ("--set", a)]


@pytest.fixture(scope="module")
def _finished(tiny_model_dir, tmp_path_factory):
    from autofednlp.cli import main

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    argv = ["run", *_sets(tiny_model_dir), "--run-dir", str(run_dir), "--progress", "quiet"]
    assert main(argv) == 0
    return run_dir


@pytest.fixture
def finished_run(_finished, tmp_path):
    """A copy of one finished 2-round run, for each test to change."""
    import shutil

    return shutil.copytree(_finished, tmp_path / "run")


def _one_error(capsys, *fragments):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autofednlp: error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def test_resume_refuses_an_edited_config_naming_the_keys(finished_run, capsys):
    from autofednlp.cli import main

    (finished_run / "summary.json").unlink()  # as if interrupted
    path = finished_run / "config.toml"
    text = path.read_text()
    text = text.replace("width = 8", "width = 16").replace("seed = 0", "seed = 7")
    path.write_text(text.replace("max_samples = 120", "max_samples = 400"))
    before = (finished_run / "rounds.csv").read_text()
    assert main(["run", "--resume", str(finished_run), "--progress", "quiet"]) == 2
    line = _one_error(
        capsys, "data.max_samples (120 -> 400)", "seed (0 -> 7)", "tune.width (8 -> 16)"
    )
    assert "config.toml differs" in line
    assert (finished_run / "rounds.csv").read_text() == before


def test_resume_refuses_a_finished_run_and_rewrites_nothing(finished_run, capsys):
    from autofednlp.cli import main

    stamps = {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir() if p.name != "run.lock"}
    assert main(["run", "--resume", str(finished_run), "--progress", "quiet"]) == 2
    _one_error(capsys, "the run is finished (2 rounds)", "--set federation.rounds=N")
    assert {
        p.name: p.stat().st_mtime_ns for p in finished_run.iterdir() if p.name != "run.lock"
    } == stamps


def test_resume_takes_no_other_override(finished_run, capsys):
    from autofednlp.cli import main

    assert main(["run", "--resume", str(finished_run), "--set", "seed=3"]) == 2
    _one_error(capsys, "only --set federation.rounds=N", "'seed'")
    argv = ["run", "--resume", str(finished_run), "--set", "federation.rounds=2", "--quiet"]
    assert main(argv) == 2
    _one_error(capsys, "extending a run needs more than its 2 rounds")


def test_extending_a_finished_run_is_recorded_and_equals_the_longer_run(
    finished_run, tiny_model_dir, tmp_path, capsys
):
    from autofednlp.cli import main

    argv = ["run", "--resume", str(finished_run), "--set", "federation.rounds=4"]
    assert main([*argv, "--progress", "quiet"]) == 0
    summary = json.loads((finished_run / "summary.json").read_text())
    (ext,) = summary["extended"]
    assert ext["from_rounds"] == 2 and ext["to_rounds"] == 4 and ext["was_finished"]
    assert json.loads((finished_run / "extended.json").read_text()) == summary["extended"]
    assert "rounds = 4" in (finished_run / "config.toml").read_text()
    assert "extended" in capsys.readouterr().out  # the printed summary says so

    longer = tmp_path / "longer"
    sets = _sets(tiny_model_dir, "federation.rounds=4")
    assert main(["run", *sets, "--run-dir", str(longer), "--progress", "quiet"]) == 0
    # the same training; only the cost differs: a finished run's activation caches were freed,
    # so the extension refills them (misses where the longer run hit)
    same = ["round", "config", "clients", "val_accuracy", "bytes_up"]
    assert [{k: r[k] for k in same} for r in _rows(finished_run)] == [
        {k: r[k] for k in same} for r in _rows(longer)
    ]
    wa = torch.load(finished_run / "trainable_state.pt")
    wb = torch.load(longer / "trainable_state.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # and the extended run is finished again: a plain --resume is refused
    assert main(["run", "--resume", str(finished_run)]) == 2


def test_a_time_budget_ends_the_run_and_a_longer_one_extends_it(tiny_model_dir, tmp_path, capsys):
    """`federation.time_budget_s`: no round starts once the simulated clock has used it up;
    the rounds before are the unbudgeted run's; `--resume --set federation.time_budget_s=S`
    continues it exactly as far as the longer budget allows."""
    from autofednlp.cli import main

    def run(run_dir, *extra):
        argv = ["run", *_sets(tiny_model_dir, *extra), "--run-dir", str(run_dir)]
        assert main([*argv, "--progress", "quiet"]) == 0
        return _rows(run_dir)

    same = ["round", "config", "clients", "val_accuracy", "bytes_up"]
    full = run(tmp_path / "full", "federation.rounds=5")
    times = [float(r["sim_time_s"]) for r in full]
    assert times == sorted(times) and len(set(times)) == 5
    # a budget between rounds 2 and 3 ends: round 3 starts before it, round 4 does not
    budget = (times[1] + times[2]) / 2
    cut = run(tmp_path / "cut", "federation.rounds=50", f"federation.time_budget_s={budget}")
    assert [{k: r[k] for k in same} for r in cut] == [{k: r[k] for k in same} for r in full[:3]]
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["ended_by"] == "time_budget" and summary["time_budget_s"] == budget
    assert "ended by the time budget" in capsys.readouterr().out

    argv = ["run", "--resume", str(tmp_path / "cut"), "--progress", "quiet"]
    assert main([*argv, "--set", f"federation.time_budget_s={budget / 2}"]) == 2
    _one_error(capsys, "needs a longer budget")
    assert main([*argv, "--set", "federation.time_budget_s=inf"]) == 2
    _one_error(capsys, "expected a finite number")
    # more rounds alone, or a budget the clock has already passed, would add no round
    assert main([*argv, "--set", "federation.rounds=60"]) == 2
    _one_error(capsys, "past federation.time_budget_s", "give it a longer budget")
    assert main([*argv, "--set", f"federation.time_budget_s={(times[2] + budget) / 2}"]) == 2
    _one_error(capsys, "give it a longer budget")
    assert not (tmp_path / "cut" / "extended.json").exists()
    assert main([*argv, "--set", f"federation.time_budget_s={times[3]}"]) == 0
    longer = _rows(tmp_path / "cut")
    assert [r["round"] for r in longer] == ["1", "2", "3", "4"]
    assert [r["val_accuracy"] for r in longer] == [r["val_accuracy"] for r in full[:4]]
    (ext,) = json.loads((tmp_path / "cut" / "extended.json").read_text())
    assert ext["from_time_budget_s"] == budget and ext["to_time_budget_s"] == times[3]
    assert ext["from_rounds"] == ext["to_rounds"] == 50
    # a run that ended by its round cap gains nothing from a budget of 0 (none)
    argv = ["run", "--resume", str(tmp_path / "full"), "--progress", "quiet"]
    assert main([*argv, "--set", "federation.time_budget_s=0"]) == 2
    _one_error(capsys, "has trained 5 rounds", "adds none")
