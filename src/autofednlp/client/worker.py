"""What a device does when asked to train: plain Python, the same in every engine.

A fresh process (Flower's deployment engine starts one per message) pays for loading the data
and the model once; a long-lived one (a simulation actor) reuses them from the caches here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from autofednlp.client.cache import ActivationCache
from autofednlp.client.train import local_train
from autofednlp.config import ExperimentConfig
from autofednlp.cost.devices import client_device, get_profile
from autofednlp.data.federated import (
    FederatedData,
    TokenizedSplit,
    default_cache_dir,
    load_federated_data,
)
from autofednlp.data.local import device_data_key, load_device_data
from autofednlp.model.build import (
    build_model,
    learning_rate,
    load_trainable,
    model_shape,
    resolve_model_path,
    trainable_state,
)
from autofednlp.model.classifier import EncoderClassifier
from autofednlp.model.kinds import TuneSpec
from autofednlp.privacy.clip import privatize_update
from autofednlp.runtime import Runtime, oom_guard, runtime_for

_MODELS: dict[tuple, EncoderClassifier] = {}


def client_data(cfg: ExperimentConfig) -> FederatedData:
    return load_federated_data(cfg.data, resolve_model_path(cfg.model.name), cfg.seed)


@dataclass
class LocalData:
    """What one device trains on: its samples, stable ids for them (the activation cache's
    keys), the number of labels of the task, and a tag that scopes its cache to this data."""

    samples: TokenizedSplit
    sample_ids: torch.Tensor
    num_labels: int
    scope: str


def local_data(
    cfg: ExperimentConfig,
    partition_id: int,
    data_file: str = "",
    label_names: Sequence[str] = (),
) -> LocalData:
    """Client `partition_id`'s partition of the experiment's dataset or, on a device that
    names its own `data_file`, that file's rows with labels numbered by `label_names`."""
    if data_file:
        tokenizer = resolve_model_path(cfg.model.name)
        key = device_data_key(cfg.data, data_file, label_names, tokenizer)
        samples = load_device_data(cfg.data, data_file, label_names, tokenizer, key=key)
        ids = torch.arange(len(samples))
        return LocalData(samples, ids, len(label_names), f"file-{key[:16]}")
    data = client_data(cfg)
    if not 0 <= partition_id < len(data.partitions):
        raise ValueError(f"partition id {partition_id} is outside 0..{len(data.partitions) - 1}")
    ids = torch.as_tensor(data.partitions[partition_id])
    return LocalData(data.client(partition_id), ids, data.num_labels, "partition")


def _model_for(
    cfg: ExperimentConfig, num_labels: int, spec: TuneSpec, runtime: Runtime
) -> EncoderClassifier:
    # Frozen weights never change and trainable ones are overwritten on every call, so one
    # model per spec can serve every round in this process (on a GPU, it stays there).
    task = cfg.data.task_name
    key = (cfg.model.name, cfg.model.pooling, task, num_labels, spec, str(runtime.device))
    key += tuple(cfg.tune.lora_targets)
    if key not in _MODELS:
        if len(_MODELS) >= 4:
            _MODELS.pop(next(iter(_MODELS)))
        targets = tuple(cfg.tune.lora_targets)
        model = build_model(
            cfg.model.name, num_labels, spec, cfg.seed, cfg.model.pooling, task, targets
        )
        with oom_guard(cfg, runtime.device, f"loading {cfg.model.name}"):
            _MODELS[key] = model.to(runtime.device)
    return _MODELS[key]


def cache_root(cfg: ExperimentConfig) -> Path:
    if cfg.client.cache_dir:
        return Path(cfg.client.cache_dir)
    return default_cache_dir() / "activations"


def activation_cache(
    cfg: ExperimentConfig,
    run_id: str,
    partition_id: int,
    model: EncoderClassifier,
    scope: str = "partition",
) -> ActivationCache | None:
    """This client's activation cache for this run, or None where nothing is frozen.

    Opened afresh each round from the client's directory, as a new client process would: its
    index is what is on disk, so a fill is charged once per sample and boundary whichever
    process trains the client next.
    """
    if not cfg.client.activation_cache or model.embeddings_trainable():
        return None
    # the cached states are below the head: the task and pooling do not change them, but a
    # run never mixes tasks, so keeping them in the key costs nothing and is safe
    model_key = f"{resolve_model_path(cfg.model.name)}/{cfg.model.pooling}/{cfg.data.task_name}"
    if cfg.runtime.precision != "fp32":  # autocast changes the frozen layers' output
        model_key += f"/{cfg.runtime.precision}"
    namespace = f"{run_id}/{model_key}/{partition_id}/{scope}"
    return ActivationCache(
        namespace,
        cache_root(cfg) / run_id / f"client-{partition_id}",
        memory_budget_bytes=int(cfg.client.cache_memory_mb * 2**20),
        dtype=torch.float16 if cfg.client.cache_fp16 else torch.float32,
        **cache_lookahead(cfg, model.num_layers),
    )


def cache_lookahead(cfg: ExperimentConfig, num_layers: int) -> dict[str, int]:
    """How many boundaries below its own a client's cache fill keeps, and the lowest it
    keeps: only a run whose configuration grows ever asks for a lower boundary, and never
    below its depth cap. The server uses the same rule to know what a client holds."""
    if cfg.strategy.name != "autofed":
        return {"lookahead": 0, "lowest_boundary": 0}
    max_depth = min(cfg.strategy.max_depth or num_layers, num_layers)
    return {"lookahead": cfg.client.cache_lookahead, "lowest_boundary": num_layers - max_depth}


def boundaries_filled(cfg: ExperimentConfig, num_layers: int, boundary: int) -> set[int]:
    """The boundaries a client's cache holds for its samples after a round at `boundary`."""
    if not cfg.client.activation_cache:
        return set()
    la = cache_lookahead(cfg, num_layers)
    return {boundary, *range(max(la["lowest_boundary"], boundary - la["lookahead"]), boundary)}


def train_round(
    cfg: ExperimentConfig,
    partition_id: int,
    spec: TuneSpec,
    state: dict[str, torch.Tensor],
    server_round: int,
    device: str | None = None,
    run_id: str = "",
    data_file: str = "",
    label_names: Sequence[str] = (),
    max_steps: int = 0,
) -> tuple[dict[str, torch.Tensor], dict[str, float | int | str]]:
    """Train the received trainable tensors on this client's data for one round.

    Returns the updated tensors (on the CPU) and metrics: examples, loss, FLOPs executed and
    the simulated compute seconds on this client's device: counted from the FLOPs, so the same
    whatever hardware (`cfg.runtime`) ran the training. `run_id` scopes the activation cache
    to one run; `data_file` (with the server's `label_names`) is a device's own data, else the
    client trains on partition `partition_id` of the experiment's dataset. `max_steps` > 0
    caps the local steps (a robust trial's candidate keeping pace with the current
    configuration's round).
    """
    local = local_data(cfg, partition_id, data_file, label_names)
    runtime = runtime_for(cfg)
    model = _model_for(cfg, local.num_labels, spec, runtime)
    load_trainable(model, state)
    cache = activation_cache(cfg, run_id or "default", partition_id, model, local.scope)
    shape = model_shape(
        cfg.model.name,
        local.num_labels,
        cfg.model.pooling,
        cfg.data.task_name,
        tuple(cfg.tune.lora_targets),
    )
    seed = hash((cfg.seed, server_round, partition_id)) & 0x7FFFFFFF
    with oom_guard(cfg, runtime.device, f"training client {partition_id}"):
        result = local_train(
            model,
            local.samples,
            cfg.client,
            learning_rate(spec, cfg.client.learning_rate),
            spec.boundary(model.num_layers),
            shape,
            spec,
            seed,
            cache=cache,
            sample_ids=local.sample_ids,
            runtime=runtime,
            proximal_mu=cfg.aggregation.proximal_mu if cfg.aggregation.name == "fedprox" else 0.0,
            max_steps=max_steps,
        )
    device = device or client_device(cfg, partition_id)
    profile = get_profile(device)
    metrics = {
        "partition_id": partition_id,
        "data": "file" if data_file else "partition",
        "num_examples": result.num_examples,
        "num_samples": len(local.samples),  # the client's data, however much it trained on
        "train_loss": result.train_loss,
        "steps": result.steps,
        "flops": result.flops,
        "compute_s": profile.compute_s(result.flops),
        "device": device,
        "cache_misses": -1 if cache is None else cache.misses,
        "cache_hits": -1 if cache is None else cache.hits,
    }
    new_state = trainable_state(model)
    if cfg.privacy.mode == "local":  # the update leaves the device clipped and noised
        p = cfg.privacy
        noise_seed = hash((cfg.seed, server_round, partition_id, 13)) & 0x7FFFFFFF
        new_state = privatize_update(state, new_state, p.clip_norm, p.noise_multiplier, noise_seed)
    return new_state, metrics
