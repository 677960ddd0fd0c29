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
        [  # stall counter, best reading and trajectory are checkpointed
            "strategy.name=autofed",
            "tune.depth=0",
            "tune.width=8",
            "strategy.max_width=16",
            "strategy.patience=1",
            "strategy.trial_rounds=1",
        ],
    ],
    ids=["fixed", "autofed-published", "autofed-robust"],
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
    ):
        assert a.get(key) == b.get(key), key
    wa = torch.load(whole / "trainable_state.pt")
    wb = torch.load(cut / "trainable_state.pt")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_without_checkpoint_is_a_user_error(tmp_path, capsys):
    from autofednlp.cli import main

    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err
