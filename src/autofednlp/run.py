"""Run an experiment on Flower's simulation engine, in this process, and return its summary."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from autofednlp.config import ConfigError, ExperimentConfig, load_config
from autofednlp.report.results import load_checkpoint, new_run_dir


def preflight(cfg: ExperimentConfig) -> None:
    """Catch user mistakes here, with one-line errors, before any engine starts."""
    from autofednlp.client.worker import client_data
    from autofednlp.cost.devices import get_profile
    from autofednlp.model.build import model_num_layers
    from autofednlp.runtime import runtime_for

    runtime_for(cfg)  # "cuda" on a machine without it: one line now, not in every client
    for device in cfg.cost.devices:
        get_profile(device)
    layers = model_num_layers(cfg.model.name)
    if cfg.tune.kind != "full" and cfg.tune.depth > layers:
        raise ConfigError(f"tune.depth = {cfg.tune.depth}: the model has only {layers} layers")
    data = client_data(cfg)  # tokenizes once and fills the on-disk cache the clients read
    if len(data.partitions) != cfg.data.num_clients:
        raise ConfigError(f"data.num_clients = {cfg.data.num_clients}: got {len(data.partitions)}")


def _not_run_simulation_deprecation(record: logging.LogRecord) -> bool:
    # We call `run_simulation` on the user's behalf (in flwr 1.42 it is the in-process route
    # that takes apps bound to our configuration); its deprecation notice is for us, not them.
    return "`run_simulation` function is deprecated" not in record.getMessage()


def _quiet_flower() -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    flwr_log = logging.getLogger("flwr")
    flwr_log.setLevel(logging.WARNING)
    if _not_run_simulation_deprecation not in flwr_log.filters:
        flwr_log.addFilter(_not_run_simulation_deprecation)


def run_experiment(
    cfg: ExperimentConfig, run_dir: str | None = None, progress: str | bool = "lines"
) -> dict[str, Any]:
    """Run `cfg` on its configured engine and return the summary."""
    rd = new_run_dir(cfg, run_dir, create=False)
    preflight(cfg)
    rd.mkdir(parents=True, exist_ok=True)
    return _run_and_clean(cfg, rd, progress, None)


def resume_experiment(run_dir: str, progress: str | bool = "lines") -> dict[str, Any]:
    """Continue a killed run from its last checkpoint; it ends as the uninterrupted run would."""
    from autofednlp.client.cache import prune_newer_than
    from autofednlp.client.worker import cache_root
    from autofednlp.server.loop import run_id_for

    rd = Path(run_dir).resolve()
    ckpt = load_checkpoint(rd)
    cfg = load_config(rd / "config.toml")
    preflight(cfg)
    prune_newer_than(cache_root(cfg) / run_id_for(rd), ckpt["time_ns"])
    return _run_and_clean(cfg, rd, progress, ckpt)


def _run_and_clean(
    cfg: ExperimentConfig, rd: Path, progress: str | bool, resume: dict | None
) -> dict[str, Any]:
    from autofednlp.client.worker import cache_root
    from autofednlp.server.loop import run_id_for

    summary = _run_on_engine(cfg, rd, progress, resume)
    # Simulated clients keep their activation caches on this machine: free the disk once the
    # run is complete (an interrupted run keeps them, for --resume).
    shutil.rmtree(cache_root(cfg) / run_id_for(rd), ignore_errors=True)
    return summary


def _run_on_engine(
    cfg: ExperimentConfig, rd: Path, progress: str | bool, resume: dict | None
) -> dict[str, Any]:
    if cfg.federation.engine == "inprocess":
        from autofednlp.client.worker import client_data
        from autofednlp.server import make_run
        from autofednlp.server.inprocess import InProcessTransport

        transport = InProcessTransport(cfg)
        return make_run(cfg, client_data(cfg), transport, rd, progress, resume).run()
    return _run_simulation(cfg, rd, progress, resume)


def _run_simulation(
    cfg: ExperimentConfig, rd: Path, progress: str | bool, resume: dict | None
) -> dict[str, Any]:
    """Start Flower's simulation engine with `cfg.data.num_clients` virtual SuperNodes, run the
    ServerApp/ClientApp pair to the end, shut the engine down, and return the summary."""
    from flwr.simulation import run_simulation

    from autofednlp.client.app import app as client_app
    from autofednlp.runtime import client_gpu_share, visible_gpus
    from autofednlp.server.app import make_server_app

    _quiet_flower()
    share, gpus = client_gpu_share(cfg), visible_gpus()
    backend_config = {
        "client_resources": {
            "num_cpus": cfg.federation.num_cpus_per_client,
            "num_gpus": share,
        },
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "num_gpus": gpus,
            "include_dashboard": False,
            "logging_level": "error",
            "log_to_driver": True,
        },
    }
    run_simulation(
        server_app=make_server_app(cfg, rd, progress, resume),
        client_app=client_app,
        num_supernodes=cfg.data.num_clients,
        backend_config=backend_config,
    )
    summary_path = Path(rd) / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"the run ended without a summary; see {rd}")
    return json.loads(summary_path.read_text(encoding="utf-8"))
