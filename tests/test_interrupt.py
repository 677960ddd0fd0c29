"""Ctrl-C and SIGTERM stop a real `autofednlp run` within seconds, leave no process behind and
a checkpoint that `--resume` continues exactly; a run directory has one writer at a time."""

import csv
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

COMPARED = ["round", "config", "sim_time_s", "val_accuracy", "clients", "bytes_up", "energy_j"]


def _argv(tiny_model_dir, *extra):
    sets = [
        f'model.name="{tiny_model_dir}"',
        "data.max_samples=120",
        "data.max_length=32",
        "data.num_clients=6",
        "federation.clients_per_round=3",
        "federation.rounds=8",
        "federation.engine=inprocess",
        "federation.checkpoint_every=3",
        "tune.depth=1",
        "tune.width=8",
        *extra,
    ]
    return [x for s in sets for x in ("--set", s)]


def _cmd(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return [sys.executable, "-m", "autofednlp.cli", "run", *args], env


def _rows(run_dir):
    with open(run_dir / "rounds.csv") as f:
        return [{k: r[k] for k in COMPARED} for r in csv.DictReader(f)]


def _wait_for_rows(proc, run_dir, n, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        path = run_dir / "rounds.csv"
        if path.exists() and path.read_text().count("\n") - 1 >= n:
            return
        time.sleep(0.05)
    raise AssertionError("the run ended or stalled before it could be interrupted")


@pytest.fixture(scope="module")
def whole_run(tiny_model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    cmd, env = _cmd(*_argv(tiny_model_dir), "--progress", "quiet", "--run-dir", str(run_dir))
    subprocess.run(cmd, env=env, check=True, timeout=600)
    return run_dir


def _interrupt(tiny_model_dir, run_dir, sig, *extra):
    """Start a run, send `sig` once it is past the round-3 checkpoint; (stderr, seconds)."""
    cmd, env = _cmd(*_argv(tiny_model_dir, *extra), "--run-dir", str(run_dir))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(proc, run_dir, 4)
    t0 = time.monotonic()
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    stop_s = time.monotonic() - t0
    assert proc.returncode == 128 + sig, err[-2000:]
    assert stop_s < 10, f"took {stop_s:.1f} s to stop"
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"continue from round 4 with: autofednlp run --resume {run_dir.resolve()}" in last
    assert not (run_dir / "summary.json").exists()
    return err, stop_s


def test_sigint_stops_the_run_at_once_and_resume_ends_like_the_whole_run(
    tiny_model_dir, tmp_path, whole_run
):
    run_dir = tmp_path / "cut"
    _interrupt(tiny_model_dir, run_dir, signal.SIGINT)
    cmd, env = _cmd("--resume", str(run_dir), "--progress", "quiet")
    subprocess.run(cmd, env=env, check=True, timeout=600)
    assert _rows(run_dir) == _rows(whole_run)
    a = torch.load(whole_run / "trainable_state.pt")
    b = torch.load(run_dir / "trainable_state.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_stops_the_run_as_sigint_does(tiny_model_dir, tmp_path):
    err, _ = _interrupt(tiny_model_dir, tmp_path / "cut", signal.SIGTERM)
    assert "terminated; results so far are in" in err


def test_interrupt_before_the_first_periodic_checkpoint_can_be_resumed(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "early"
    argv = _argv(tiny_model_dir, "federation.checkpoint_every=100")
    cmd, env = _cmd(*argv, "--progress", "quiet", "--run-dir", str(run_dir))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(proc, run_dir, 1)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "from round 1" in err, err
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["next_round"] == 1 and ckpt["rows"] == []


@pytest.mark.slow
@pytest.mark.serial  # Flower's simulation engine
def test_sigint_on_the_simulation_engine_leaves_no_process_behind(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "sim"
    argv = _argv(tiny_model_dir, "federation.engine=simulation", "federation.rounds=200")
    cmd, env = _cmd(*argv, "--progress", "quiet", "--run-dir", str(run_dir))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(proc, run_dir, 2, timeout=600)
    engine = psutil.Process(proc.pid).children(recursive=True)
    assert engine, "the simulation engine started no process"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    stop_s = time.monotonic() - t0
    assert proc.returncode == 130 and stop_s < 15, f"rc {proc.returncode}, {stop_s:.1f} s"
    # Ray's actors exit after the driver; on a loaded machine that takes a few seconds.
    _, alive = psutil.wait_procs(engine, timeout=10)
    left = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [" ".join(p.cmdline()[:3]) for p in left]


def test_a_second_writer_of_a_run_directory_is_refused(tmp_path):
    """The lock is held by a live process; a second one is refused naming the holder."""
    from autofednlp.config import ConfigError
    from autofednlp.report.results import lock_run_dir, unlock_run_dir

    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from autofednlp.report.results import lock_run_dir; "
            f"lock_run_dir({str(run_dir)!r}); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"in use by another run \\(pid {holder.pid} "):
            lock_run_dir(run_dir)
    finally:
        holder.kill()
        holder.wait()
    lock_run_dir(run_dir)  # a dead holder (even killed) leaves no stale lock
    unlock_run_dir(run_dir)


def test_two_runs_started_together_into_one_directory(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "same"
    procs = []
    for seed in (0, 7):
        cmd, env = _cmd(
            *_argv(tiny_model_dir, "federation.rounds=3", f"seed={seed}"),
            "--progress",
            "quiet",
            "--run-dir",
            str(run_dir),
        )
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    (err,) = [e for rc, e in results if rc == 2]
    assert len(err.strip().splitlines()) == 1, err
    assert "in use by another run" in err or "already exists and is not empty" in err, err
    rows = _rows(run_dir)
    assert [r["round"] for r in rows] == ["1", "2", "3"]  # one run's rows, not two interleaved


def test_a_run_directory_taken_first_by_another_run(tmp_path):
    """A name we chose ourselves moves on to the next free one; a name the user gave is
    refused."""
    from autofednlp.config import ConfigError, load_config
    from autofednlp.report.results import unlock_run_dir
    from autofednlp.run import _claim

    cfg = load_config(None, [f'output_dir="{tmp_path}"'])
    taken = tmp_path / "default-20261130-120000"
    taken.mkdir()
    (taken / "rounds.csv").write_text("round\n")  # the other run got there first
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        _claim(cfg, taken, chosen=False)
    other = _claim(cfg, taken, chosen=True)
    assert other != taken and other.parent == tmp_path and (other / "run.lock").exists()
    unlock_run_dir(other)
