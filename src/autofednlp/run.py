"""Run an experiment on Flower's simulation engine, in this process, and return its summary."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autofednlp.config import ConfigError, ExperimentConfig, load_config, to_dict, to_toml
from autofednlp.report import progress as show
from autofednlp.report.results import (
    load_checkpoint,
    lock_run_dir,
    new_run_dir,
    save_checkpoint,
    unlock_run_dir,
    write_json_atomic,
)

# the run directory this process is writing now: what an interrupt message points to
active_run_dir: Path | None = None

# how close to the majority-class accuracy a target may be before it is worth a warning
NEAR_MAJORITY = 0.05


def preflight(cfg: ExperimentConfig) -> None:
    """Catch user mistakes here, with one-line errors, before any engine starts; say what is
    happening meanwhile (the first run on a machine spends a minute here)."""
    show.note("loading PyTorch and Transformers")
    from autofednlp.client.worker import client_data
    from autofednlp.cost.devices import get_profile
    from autofednlp.model.build import check_model, resolve_model_path
    from autofednlp.runtime import runtime_for

    runtime_for(cfg)  # "cuda" on a machine without it: one line now, not in every client
    for device in cfg.cost.devices:
        get_profile(device)
    show.note(f"loading model {cfg.model.name!r}")
    # a model that cannot load, of a family we do not serve, or that the tune kind does not
    # apply to fails here, in one line
    layers = check_model(cfg.model.name, cfg.tune.kind, tuple(cfg.tune.lora_targets))
    if cfg.tune.kind != "full" and cfg.tune.depth > layers:
        raise ConfigError(f"tune.depth = {cfg.tune.depth}: the model has only {layers} layers")
    from transformers import AutoConfig

    model_cfg = AutoConfig.from_pretrained(resolve_model_path(cfg.model.name))
    positions = getattr(model_cfg, "max_position_embeddings", None)
    if positions is not None and cfg.data.max_length > positions:
        raise ConfigError(
            f"data.max_length = {cfg.data.max_length}: the model reads at most {positions} "
            "tokens per sample"
        )
    show.note(f"reading data {cfg.data.dataset!r}")
    data = client_data(cfg)  # tokenizes once and fills the on-disk cache the clients read
    if len(data.partitions) != cfg.data.num_clients:
        raise ConfigError(f"data.num_clients = {cfg.data.num_clients}: got {len(data.partitions)}")
    _describe_data(cfg, data)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _describe_data(cfg: ExperimentConfig, data: Any) -> None:
    """The data actually used, and the yardstick: the majority-class accuracy."""
    st = getattr(data, "stats", None) or {}
    sizes = f"{len(data.train)} train / {len(data.validation)} validation / {len(data.test)} test"
    if st:
        used = f"{st['rows_read']} rows read"
        if st.get("sampled") is not None:
            used += f", {st['sampled']} sampled (data.max_samples)"
        show.note(f"data: {used}; {sizes}; {len(data.label_names)} classes")
        dropped = {why: n for why, n in st.get("dropped", {}).items() if n}
        if dropped:
            whys = ", ".join(f"{n} {why}" for why, n in dropped.items())
            show.warn(f"data: {sum(dropped.values())} rows dropped ({whys})")
        if st.get("truncated"):
            total = len(data.train) + len(data.validation) + len(data.test)
            show.note(
                f"data: {st['truncated']} of {total} samples fill all {cfg.data.max_length} "
                "tokens (longer ones are truncated; data.max_length)"
            )
        words = sum(getattr(data, "lost_words", {}).values())
        if words:
            show.note(
                f"data: truncation cut {_count(words, 'word')} from "
                f"{_count(st.get('cut_sentences', 0), 'sentence')} (neither trained on nor "
                f"scored); raise data.max_length (now {cfg.data.max_length}), or set "
                'data.overlong = "refuse" to stop and name the first such sentence'
            )
    else:
        show.note(f"data: {sizes}; {len(data.label_names)} classes")
    from autofednlp.report.progress import majority_accuracy

    if data.validation.labels.dim() != 1 or cfg.target_metric != "accuracy":
        return  # the yardstick is a classifier's accuracy; entity F1 of "always O" is 0
    majority = majority_accuracy(data.validation.labels.tolist())
    target = cfg.federation.target_accuracy
    if majority is None:
        return
    show.note(
        f"yardstick: always predicting the most frequent class scores {majority:.3f} on the "
        f"validation split; target: {target:.3f} (federation.target_accuracy)"
    )
    if target <= majority + NEAR_MAJORITY:
        show.warn(
            f"federation.target_accuracy = {target} is "
            f"{'below' if target < majority else 'near'} the majority-class accuracy "
            f"({majority:.3f}): a model that learned nothing reaches it"
        )


# Why `autofednlp run` still calls a deprecated Flower function (checked in flwr 1.42.0's
# sources): `flwr.simulation.run_simulation` is the only public way to run the simulation
# engine inside this process with apps bound to our configuration, a resume checkpoint and our
# signal handling. The other names `flwr.simulation` exports are no in-process route:
# `start_simulation` is the legacy API (deprecated since 1.13), and `run_simulation_process` is
# the `flwr-simulation` process that a SuperLink started with `--simulation` launches, taking
# its run from that SuperLink's Runtime API (it then calls the private `_run_simulation`). That
# supported route is `flwr run .`, and it works for this app too (README, "Two routes"; a test
# checks it reproduces this one). Flower's notice says the function "will be removed in a
# future version" without naming one, so flwr stays pinned (==1.42.0, pyproject.toml); moving
# `autofednlp run` onto a SuperLink it starts itself is the way off it when the pin moves.
RUN_SIMULATION_DEPRECATED = "`run_simulation` function is deprecated"


def _shorten_run_simulation_notice(record: logging.LogRecord) -> bool:
    # Flower's multi-line banner tells the caller of `run_simulation` (us) to use `flwr run`;
    # the user gets one line, in each run, that says what it means for them.
    if RUN_SIMULATION_DEPRECATED not in record.getMessage():
        return True
    show.note(
        "Flower 1.42 marks flwr.simulation.run_simulation, which `autofednlp run` uses, "
        "deprecated (no removal version announced; flwr is pinned to 1.42.0); "
        "`flwr run .` is Flower's own route and runs the same experiment (README)"
    )
    return False


def _quiet_flower() -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    flwr_log = logging.getLogger("flwr")
    flwr_log.setLevel(logging.WARNING)
    if _shorten_run_simulation_notice not in flwr_log.filters:
        flwr_log.addFilter(_shorten_run_simulation_notice)


# runs an experiment into a claimed run directory: (cfg, run dir, progress, resume) -> summary
Engine = Callable[[ExperimentConfig, Path, str | bool, dict | None], dict[str, Any]]


def run_experiment(
    cfg: ExperimentConfig,
    run_dir: str | None = None,
    progress: str | bool = "lines",
    run_on: Engine | None = None,
) -> dict[str, Any]:
    """Run `cfg` on its configured engine (or `run_on`: the ServerApp that `flwr run`
    started) and return the summary."""
    old = show.set_mode(progress)
    try:
        rd = new_run_dir(cfg, run_dir, create=False)
        preflight(cfg)
        rd = _claim(cfg, rd, run_dir is None)
        show.note(f"writing results to {rd}")
        _clear_stale_cache(cfg, rd)
        return _run_and_clean(cfg, rd, progress, None, run_on or _run_on_engine)
    finally:
        show.set_mode(old)


def _claim(cfg: ExperimentConfig, rd: Path, chosen: bool, tries: int = 5) -> Path:
    """Lock `rd` for this run. Two runs started together both passed the emptiness check:
    the lock decides. A directory we chose ourselves (`<name>-<timestamp>`) that another run
    took first is replaced by the next free name; one the user named is refused."""
    for _ in range(tries):
        try:
            lock_run_dir(rd)
        except ConfigError:
            if not chosen:
                raise
            rd = new_run_dir(cfg, None, create=False)
            continue
        if not any(p.name != "run.lock" for p in rd.iterdir()):
            return rd
        unlock_run_dir(rd)
        if not chosen:
            raise ConfigError(f"run directory {str(rd)!r} already exists and is not empty")
        rd = new_run_dir(cfg, None, create=False)
    raise ConfigError(f"output_dir = {cfg.output_dir!r}: no free run directory after {tries} tries")


def config_differences(recorded: dict[str, Any], current: dict[str, Any], prefix: str = ""):
    """Dotted keys whose values differ between two config tables, with both values."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key), current.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict) and key != "devices":
            out += config_differences(a, b, f"{name}.")
        elif a != b:
            out.append((name, a, b))
    return out


def resume_experiment(
    run_dir: str,
    progress: str | bool = "lines",
    rounds: int | None = None,
    time_budget_s: float | None = None,
) -> dict[str, Any]:
    """Continue a killed run from its last checkpoint; it ends as the uninterrupted run would.

    The run's `config.toml` must still say what the run started with (a changed key is
    refused, named). A finished run is refused unless `rounds` extends it past its
    `federation.rounds` or `time_budget_s` past its `federation.time_budget_s` (0 = no
    budget); the extension is recorded in `extended.json` and the summary."""
    from autofednlp.client.cache import prune_newer_than
    from autofednlp.client.worker import cache_root
    from autofednlp.server.loop import run_id_for

    old = show.set_mode(progress)
    try:
        rd = Path(run_dir).resolve()
        if not rd.is_dir():
            raise ConfigError(f"--resume {str(run_dir)!r}: no such run directory")
        lock_run_dir(rd)  # before reading: a run still writing there is refused
        try:
            ckpt = load_checkpoint(rd)
            cfg = load_config(rd / "config.toml")
            recorded = ckpt.get("config")
            if recorded is not None:
                diff = config_differences(recorded, to_dict(cfg))
                if diff:
                    shown = ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in diff[:6])
                    more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
                    raise ConfigError(
                        f"--resume {str(rd)!r}: config.toml differs from the configuration the run "
                        f"started with: {shown}{more}; put it back, or start a new run"
                    )
            finished = (rd / "summary.json").is_file()
            extend = Extension(rounds, time_budget_s)
            if finished and not extend:
                raise ConfigError(
                    f"--resume {str(rd)!r}: the run is finished ({ckpt['next_round'] - 1} rounds); "
                    "to train it further, extend it: --resume DIR --set federation.rounds=N "
                    "(or --set federation.time_budget_s=S for a run with a time budget)"
                )
            if extend:
                _check_extension(rd, cfg, ckpt, extend, finished)
            show.note(f"resuming {rd} from round {ckpt['next_round']}")
            preflight(cfg)
            if extend:
                cfg = _extend(rd, cfg, ckpt, extend, finished)
            prune_newer_than(cache_root(cfg) / run_id_for(rd), ckpt["time_ns"])
        except BaseException:
            unlock_run_dir(rd)
            raise
        return _run_and_clean(cfg, rd, progress, ckpt, _run_on_engine)
    finally:
        show.set_mode(old)


@dataclasses.dataclass(frozen=True)
class Extension:
    """What `--resume` extends a run by: a new round cap and/or time budget (None: as it was)."""

    rounds: int | None = None
    time_budget_s: float | None = None

    def __bool__(self) -> bool:
        return self.rounds is not None or self.time_budget_s is not None


def _check_extension(
    rd: Path, cfg: ExperimentConfig, ckpt: dict[str, Any], ext: Extension, finished: bool
) -> None:
    fed, rounds, budget = cfg.federation, ext.rounds, ext.time_budget_s
    if rounds is not None and rounds <= fed.rounds:
        raise ConfigError(
            f"federation.rounds = {rounds}: extending a run needs more than its {fed.rounds} rounds"
        )
    if budget is not None:
        if not math.isfinite(budget) or budget < 0:
            raise ConfigError(
                f"federation.time_budget_s = {budget}: expected a finite number >= 0 (0 = none)"
            )
        if budget != 0 and (fed.time_budget_s == 0 or budget <= fed.time_budget_s):
            had = f"{fed.time_budget_s} s" if fed.time_budget_s else "none (no limit)"
            raise ConfigError(
                f"federation.time_budget_s = {budget}: extending a run needs a longer budget "
                f"than its {had} (or 0 for no limit)"
            )
    # The extension must let at least one more round start, or it would only rewrite the run.
    new_rounds = fed.rounds if rounds is None else rounds
    new_budget = fed.time_budget_s if budget is None else budget
    done, clock = ckpt["next_round"] - 1, float(ckpt["clock"]["time_s"])
    if done >= new_rounds:
        raise ConfigError(
            f"--resume {str(rd)!r}: the run has trained {done} rounds, so federation.rounds = "
            f"{new_rounds} adds none; give it more (--set federation.rounds=N)"
        )
    if new_budget > 0 and clock >= new_budget:
        raise ConfigError(
            f"--resume {str(rd)!r}: the run's simulated clock is at {clock:.4g} s, past "
            f"federation.time_budget_s = {new_budget}; give it a longer budget "
            "(--set federation.time_budget_s=S, or 0 for no limit)"
        )
    strategy = ckpt.get("strategy", {})
    if cfg.strategy.name == "autofed" and finished and "trajectory" not in strategy:
        raise ConfigError(
            f"--resume {str(rd)!r}: this AutoFedNLP run kept no trial state to extend from "
            "(it ran with federation.checkpoint_every = 0)"
        )


def _extend(
    rd: Path, cfg: ExperimentConfig, ckpt: dict[str, Any], ext: Extension, finished: bool
) -> ExperimentConfig:
    """Raise the run's `federation.rounds` and/or `federation.time_budget_s`, recorded in the
    checkpoint and `extended.json`."""
    fed, rounds, budget = cfg.federation, ext.rounds, ext.time_budget_s
    new = dataclasses.replace(
        fed,
        rounds=fed.rounds if rounds is None else rounds,
        time_budget_s=fed.time_budget_s if budget is None else budget,
    )
    cfg = dataclasses.replace(cfg, federation=new)
    path = rd / "extended.json"
    history = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    entry: dict[str, Any] = {"from_rounds": fed.rounds, "to_rounds": new.rounds}
    if budget is not None:
        entry |= {"from_time_budget_s": fed.time_budget_s, "to_time_budget_s": budget}
    history.append({**entry, "was_finished": finished, "at": time.strftime("%Y-%m-%d %H:%M:%S")})
    write_json_atomic(path, history)
    # the record agrees with itself from now on: config.toml and the checkpoint carry the new
    # config (an interrupt before the run restarts leaves it resumable) and the old summary
    # goes (the run is not finished any more)
    (rd / "config.toml").write_text(to_toml(cfg), encoding="utf-8")
    save_checkpoint(rd, {**ckpt, "config": to_dict(cfg)})
    (rd / "summary.json").unlink(missing_ok=True)
    what = []
    if rounds is not None:
        what.append(f"from {fed.rounds} to {rounds} rounds")
    if budget is not None:
        what.append(f"its time budget from {fed.time_budget_s or 'none'} to {budget or 'none'} s")
    show.note(f"extending the run {' and '.join(what)} (recorded in extended.json)")
    return cfg


def _clear_stale_cache(cfg: ExperimentConfig, rd: Path) -> None:
    """Activation caches are scoped by run directory: a killed run's cache, left for its
    --resume, must not serve a *new* run in the same directory, which would then be charged
    hits where it should pay fills (its simulated time would be too low)."""
    from autofednlp.client.worker import cache_root
    from autofednlp.server.loop import run_id_for

    shutil.rmtree(cache_root(cfg) / run_id_for(rd), ignore_errors=True)


def _run_and_clean(
    cfg: ExperimentConfig, rd: Path, progress: str | bool, resume: dict | None, run_on: Engine
) -> dict[str, Any]:
    from autofednlp.client.worker import cache_root
    from autofednlp.server.loop import run_id_for

    global active_run_dir
    active_run_dir = rd
    try:
        summary = run_on(cfg, rd, progress, resume)
    finally:
        active_run_dir = None
        unlock_run_dir(rd)
    extended = rd / "extended.json"
    if extended.is_file():
        summary["extended"] = json.loads(extended.read_text(encoding="utf-8"))
        write_json_atomic(rd / "summary.json", summary)
    # Simulated clients keep their activation caches on this machine: free the disk once the
    # run is complete (an interrupted run keeps them, for --resume).
    shutil.rmtree(cache_root(cfg) / run_id_for(rd), ignore_errors=True)
    return summary


def _run_on_engine(
    cfg: ExperimentConfig, rd: Path, progress: str | bool, resume: dict | None
) -> dict[str, Any]:
    if cfg.federation.engine == "inprocess":
        show.note("starting the in-process engine (clients train one after another here)")
        from autofednlp.client.worker import client_data
        from autofednlp.server import make_run
        from autofednlp.server.inprocess import InProcessTransport

        transport = InProcessTransport(cfg)
        return make_run(cfg, client_data(cfg), transport, rd, progress, resume).run()
    return _run_simulation(cfg, rd, progress, resume)


def _start_ray(init_args: dict[str, Any]) -> None:
    """Start Ray here, as Flower's backend would, then give SIGTERM back to our handler.

    `ray.init` replaces the process's SIGTERM handler with one that raises SystemExit in
    the main thread, which neither stops Flower's threads nor the Ray processes (the run
    then aborts after printing C++ stack traces). Flower skips its own `ray.init` when Ray
    is already running, and shuts it down at the end as usual."""
    import signal
    import sys

    import ray

    if ray.is_initialized():
        return
    handler = signal.getsignal(signal.SIGTERM)
    pythonpath = os.pathsep.join(sys.path)  # as Flower's RayBackend.init_ray passes it
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)
    if callable(handler):
        signal.signal(signal.SIGTERM, handler)


def _run_simulation(
    cfg: ExperimentConfig, rd: Path, progress: str | bool, resume: dict | None
) -> dict[str, Any]:
    """Start Flower's simulation engine with `cfg.data.num_clients` virtual SuperNodes, run the
    ServerApp/ClientApp pair to the end, shut the engine down, and return the summary."""
    from flwr.simulation import run_simulation

    from autofednlp.client.app import app as client_app
    from autofednlp.runtime import client_gpu_share, visible_gpus
    from autofednlp.server.app import make_server_app

    show.note(
        f"starting Flower's simulation engine (Ray, {cfg.data.num_clients} virtual SuperNodes)"
    )
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
    _start_ray(backend_config["init_args"])
    show.note(f"waiting for the {cfg.data.num_clients} virtual SuperNodes; round 1 follows")
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
