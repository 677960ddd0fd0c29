"""`flwr run .` as a Flower user runs it: the run config carries the experiment's keys, a
simulated federation too small for the experiment is refused in one line, and a tiny run on
a SuperLink of our own reproduces `autofednlp run`."""

import csv
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict, parse_config_args
from test_deployment import BIN, REPO, Processes, free_port

from autofednlp.config import ConfigError, load_config
from autofednlp.config.runconfig import (
    EXTRA_KEYS,
    experiment_from_run_config,
    pyproject_table,
    run_config_defaults,
)
from autofednlp.server.app import check_federation_size, simulated_supernodes


def _pyproject_run_config() -> dict:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return flatten_dict(config["tool"]["flwr"]["app"]["config"])


def test_pyproject_declares_every_experiment_key_with_its_default():
    # if this fails: python -m autofednlp.config.runconfig, and paste the table into pyproject
    expected = {**EXTRA_KEYS, **run_config_defaults()}
    assert _pyproject_run_config() == expected
    assert flatten_dict(tomllib.loads(pyproject_table())["tool"]["flwr"]["app"]["config"]) == (
        expected
    )


def _as_flower_passes_it(text: str) -> tuple[dict, set[str]]:
    """The run config the ServerApp gets for `--run-config text`, and the keys given."""
    given = parse_config_args([text])
    return {**_pyproject_run_config(), **given}, set(given)


def test_run_config_keys_set_the_experiment():
    run_config, given = _as_flower_passes_it(
        'federation.rounds=5 tune.kind=\'lora\' data.labels=\'["a", "b", "c"]\' '
        "cost.devices='{rpi4 = 0.5, jetson-nano = 0.5}' client.learning_rate=0.001"
    )
    cfg = experiment_from_run_config(run_config, given)
    assert (cfg.federation.rounds, cfg.tune.kind, cfg.data.labels) == (5, "lora", ["a", "b", "c"])
    assert cfg.cost.devices == {"rpi4": 0.5, "jetson-nano": 0.5}
    assert cfg.client.learning_rate == 0.001
    assert cfg.tune.depth == load_config().tune.depth  # untouched keys keep their defaults


def test_auto_defaults_resolve_from_the_run_config_too():
    run_config, given = _as_flower_passes_it("strategy.name='autofed' strategy.trial_pace='keep'")
    cfg = experiment_from_run_config(run_config, given)
    assert (cfg.served_ema, cfg.probes_serve, cfg.depth_step) == (
        0.0,
        False,
        1,
    )
    run_config, given = _as_flower_passes_it("strategy.name='autofed' federation.served_ema=0.25")
    cfg = experiment_from_run_config(run_config, given)
    assert (cfg.served_ema, cfg.probes_serve, cfg.depth_step) == (
        0.25,
        True,
        2,
    )


def test_a_config_file_is_overridden_only_by_the_keys_given(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text('name = "from-file"\n[federation]\nrounds = 7\nclients_per_round = 4\n')
    run_config, given = _as_flower_passes_it(f"config='{exp}' federation.clients_per_round=2")
    cfg = experiment_from_run_config(run_config, given)
    assert (cfg.name, cfg.federation.rounds, cfg.federation.clients_per_round) == (
        "from-file",
        7,  # pyproject's default (20) in the run config does not override the file
        2,
    )
    # without Flower's record of the keys given, a value that differs from the default counts
    assert experiment_from_run_config(run_config, None).federation.clients_per_round == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("federation.rounds=0", "federation.rounds = 0: must be >= 1"),
        ("federation.rounds=2.5", "federation.rounds = 2.5: expected an integer"),
        ("tune.kind='nope'", "tune.kind = 'nope': must be one of"),
        ("data.labels='a, b'", "data.labels = 'a, b': expected a list"),
        ("cost.devices='rpi4'", "cost.devices = 'rpi4': expected a table"),
        ("config='/no/such.toml'", "config file '/no/such.toml' does not exist"),
    ],
)
def test_bad_run_config_values_are_one_line_naming_the_key(text, message):
    run_config, given = _as_flower_passes_it(text)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")) as e:
        experiment_from_run_config(run_config, given)
    assert "\n" not in str(e.value)


def test_a_simulated_federation_smaller_than_the_experiment_is_refused_in_one_line():
    cfg = load_config(None, ["data.num_clients=100"])
    with pytest.raises(ConfigError) as e:
        check_federation_size(cfg, 2)
    line = str(e.value)
    assert "\n" not in line and "has 2 SuperNodes" in line
    assert 'flwr run . --federation-config "num-supernodes=100"' in line
    check_federation_size(cfg, 100)
    check_federation_size(cfg, 120)  # extra SuperNodes stay idle
    check_federation_size(cfg, None)  # deployment: devices join over time


def test_the_node_count_is_read_once_the_engine_has_registered_its_nodes(monkeypatch):
    import autofednlp.server.app as server_app

    class Grid:  # nodes appear a few at a time, as the engine registers them
        counts = iter([0, 2, 5, 5])

        def get_node_ids(self):
            return range(next(self.counts))

    monkeypatch.setattr(server_app, "InMemoryGrid", Grid)
    assert simulated_supernodes(Grid(), settle_s=0) == 5
    assert simulated_supernodes(object()) is None  # not the simulation engine


def _rows(run_dir: Path) -> list[tuple]:
    with (run_dir / "rounds.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        (r["round"], r["clients"], r["val_accuracy"], r["val_loss"], r["sim_time_s"]) for r in rows
    ]


@pytest.mark.slow
@pytest.mark.serial  # a SuperLink and Flower's simulation engine
def test_flwr_run_simulates_the_experiment_as_autofednlp_run_does(tiny_model_dir, tmp_path):
    # a tiny experiment, as `key=value` with TOML values: Flower's --run-config and our --set
    overrides = [
        f'model.name="{tiny_model_dir}"',
        "data.max_samples=120",
        "data.max_length=32",
        "data.num_clients=3",
        "federation.clients_per_round=3",
        "federation.rounds=2",
    ]
    home = tmp_path / "flwr-home"  # no config.toml: `flwr run` writes the default one
    http_port, control_port = free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        # the local SuperLink `flwr run` looks for: ours, on free ports, not a shared one
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "OMP_NUM_THREADS": "1",
    }
    link_dir = tmp_path / "superlink"  # its working directory is the ServerApp's
    link_dir.mkdir()
    run_root = tmp_path / "flwr-runs"
    procs = Processes(tmp_path, env, cwd=REPO)
    run_config = " ".join([*overrides, f'output_dir="{run_root}"'])
    try:
        # the SuperLink `flwr run` would start, started here so the test can stop it
        procs.start(
            "superlink",
            "flower-superlink",
            "--insecure", "--simulation", "--isolation", "subprocess",
            "--control-api-address", f"127.0.0.1:{control_port}",
            "--host", "127.0.0.1", "--port", str(http_port),
            "--database", ":flwr-in-memory:",
            cwd=link_dir,
        )  # fmt: skip
        procs.wait_for_line("superlink", "Uvicorn running on http://", 60)

        # Flower's default local federation has 2 SuperNodes: refused at once, in one line
        procs.start("too-small", "flwr", "run", ".", "--stream", "--run-config", run_config)
        assert procs.wait("too-small", 240) == 0  # `flwr run` exits 0 when a run fails
        out = procs.log("too-small")
        refusal = [line for line in out.splitlines() if "num-supernodes=3" in line]
        assert len(refusal) == 1 and "the simulated federation has 2 SuperNodes" in refusal[0]
        assert "Traceback" not in out and "waiting for SuperNodes" not in out
        assert not run_root.exists()  # refused before a run directory was made

        procs.start("flwr-run", "flwr", "run", ".", "--stream", "--run-config", run_config,
                    "--federation-config", "num-supernodes=3")  # fmt: skip
        assert procs.wait("flwr-run", 400) == 0
        out = procs.log("flwr-run")
    finally:
        survivors = procs.stop_all()
    assert not survivors, survivors
    run_dirs = list(run_root.glob("*/summary.json"))
    assert len(run_dirs) == 1, out[-3000:]
    flwr_dir = run_dirs[0].parent
    assert f"results                   {flwr_dir}" in out or str(flwr_dir) in out

    ref_dir = tmp_path / "autofednlp-run"
    argv = [sys.executable, "-m", "autofednlp.cli", "run", "--run-dir", str(ref_dir), "--quiet"]
    for o in overrides:
        argv += ["--set", o]
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _rows(flwr_dir) == _rows(ref_dir)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (flwr_dir, ref_dir))
    for key in ("test_accuracy", "bytes_up", "sim_time_s", "energy_j", "trainable_params"):
        assert a[key] == b[key], key


def test_a_file_valid_only_with_the_run_config_is_accepted(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text("[data]\nnum_clients = 3\n")  # alone: clients_per_round 15 > 3 clients
    run_config, given = _as_flower_passes_it(f"config='{exp}' federation.clients_per_round=3")
    cfg = experiment_from_run_config(run_config, given)
    assert (cfg.data.num_clients, cfg.federation.clients_per_round) == (3, 3)


def test_extra_simulated_supernodes_stay_idle(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity
    from test_deployment import IdentityGrid

    import autofednlp.server.app as server_app

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    monkeypatch.setattr(server_app, "InMemoryGrid", IdentityGrid)
    cfg = load_config(None, ["data.num_clients=3", "federation.clients_per_round=2"])
    grid = IdentityGrid({10 + i: i for i in range(5)})  # 5 virtual SuperNodes, 3 clients
    transport = server_app.GridTransport(grid, cfg, ["a", "b"], start_wait_s=0)
    assert sorted(transport.available_partitions()) == [0, 1, 2]


def test_flowers_run_simulation_banner_becomes_one_line(capsys):
    import logging

    from autofednlp.report import progress
    from autofednlp.run import _shorten_run_simulation_notice

    old = progress.set_mode("lines")
    try:
        banner = logging.LogRecord(
            "flwr",
            logging.WARNING,
            "",
            0,
            "DEPRECATED FEATURE: %s",
            ("The `run_simulation` function is deprecated and will be removed ...",),
            None,
        )
        other = logging.LogRecord("flwr", logging.WARNING, "", 0, "something else", (), None)
        assert _shorten_run_simulation_notice(banner) is False  # Flower's banner is dropped
        assert _shorten_run_simulation_notice(other) is True
    finally:
        progress.set_mode(old)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "pinned to 1.42.0" in err[0] and "flwr run ." in err[0]
