"""The real packaged MiniLM, real adapters, and Flower's real simulation engine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autofednlp.config import load_config
from autofednlp.run import run_experiment

pytestmark = pytest.mark.slow

SMALL_BBC = [
    "data.max_samples=400",
    "data.max_length=64",
    "data.num_clients=8",
    "data.partitioner=iid",
    "federation.clients_per_round=4",
]


@pytest.mark.parametrize(
    "kind, rounds",
    [("bottleneck", 3), ("lora", 3), ("freeze", 3), ("full", 2)],
)
def test_each_kind_learns_on_bbc_news(tmp_path, kind, rounds):
    cfg = load_config(
        None,
        [
            *SMALL_BBC,
            f"tune.kind={kind}",
            "tune.depth=2",
            "tune.width=16",
            f"federation.rounds={rounds}",
            "federation.engine=inprocess",
            "federation.served_ema=0",  # each kind's own weights: an average lags 2-3 rounds
            f'output_dir="{tmp_path}"',
        ],
    )
    summary = run_experiment(cfg, progress=False)
    chance = 1 / 5
    assert summary["best_val_accuracy"] > chance + 0.4, summary
    assert summary["test_accuracy"] > chance + 0.3, summary


def _cli(*args, timeout=600, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "autofednlp.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def _engine_processes():
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "raylet" in line or "gcs_server" in line]


@pytest.mark.serial  # counts the machine's engine processes
def test_cli_run_on_flower_simulation_engine(tmp_path):
    before = _engine_processes()
    run_dir = tmp_path / "run"
    res = _cli(
        "run",
        "--set", "data.max_samples=300",
        "--set", "data.max_length=64",
        "--set", "data.num_clients=10",
        "--set", "data.partitioner=iid",
        "--set", "federation.clients_per_round=4",
        "--set", "federation.rounds=2",
        "--set", "federation.target_accuracy=0.5",
        "--set", "federation.target_hold=1",  # 2 rounds: the first reading at 0.5 counts
        "--run-dir", str(run_dir),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "round   2/2" in res.stderr
    # Flower's banner about `run_simulation` becomes one line saying what it means (run.py)
    assert "DEPRECATED FEATURE" not in res.stderr
    assert res.stderr.count("marks flwr.simulation.run_simulation") == 1
    assert "final test accuracy" in res.stdout
    clients = json.loads((run_dir / "clients.json").read_text())
    assert [c["client"] for c in clients] == list(range(10))  # every virtual node identified
    assert sum(c.get("rounds_trained", 0) for c in clients) == 2 * 4
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["bytes_up"] > 0
    assert summary["time_to_accuracy"] is not None  # 0.5 on 5 classes is reached
    assert _engine_processes() == before, "the simulation engine left processes running"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--set", "data.alpha=-1"], "data.alpha = -1.0: must be > 0"),
        (["--set", "tune.depth=9"], "tune.depth = 9: the model has only 6 layers"),
        (["--set", "cost.devices={pixel = 1}"], "unknown device 'pixel'"),
        (["--set", "data.dataset=no/such-dataset"], "data.dataset = 'no/such-dataset'"),
        (["--set", "data.dataset=/nope/x.csv"], "/nope/x.csv"),
        (["missing.toml"], "config file 'missing.toml' does not exist"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(args, fragment, tmp_path):
    res = _cli("run", *args, "--quiet", timeout=120, cwd=tmp_path)  # no progress notes
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and fragment in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []  # no empty run directory left behind


def test_cli_help_lists_every_option_with_default():
    res = _cli("run", "--help", timeout=60)
    assert res.returncode == 0
    for key in ("federation.clients_per_round", "tune.width", "cost.upload_mb_per_s"):
        assert key in res.stdout
    assert "(default: 15)" in res.stdout


def test_entity_f1_rises_on_twitter_ner(tmp_path):
    """The real MiniLM tags Twitter NER: from an untrained token head (F1 ~0) to a clearly
    non-zero entity F1 in 3 rounds on 300 tweets (~35 s on one busy core)."""
    cfg = load_config(
        Path(__file__).parent.parent / "configs" / "twitter-ner.toml",
        [
            "data.max_samples=300",
            "data.num_clients=3",
            "data.partitioner=iid",
            "federation.clients_per_round=3",
            "federation.rounds=3",
            "client.batch_size=4",
            "client.local_epochs=2",
            "client.learning_rate=0.01",
            "federation.engine=inprocess",
            "federation.served_ema=0",  # the latest weights: an average lags a 3-round run
            f'output_dir="{tmp_path}"',
        ],
    )
    summary = run_experiment(cfg, progress=False)
    assert summary["task"] == "tagging" and summary["target_metric"] == "f1"
    assert summary["best_val_f1"] > 0.1, summary
    assert summary["test_f1"] > 0.1, summary
