"""What a device does when asked to train: plain Python, the same in every engine.

A fresh process (Flower's deployment engine starts one per message) pays for loading the data
and the model once; a long-lived one (a simulation actor) reuses them from the caches here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from autofednlp.client.cache import ActivationCache
from autofednlp.client.train import local_train
from autofednlp.config import ExperimentConfig
from autofednlp.cost.devices import client_device, get_profile
from autofednlp.data.federated import FederatedData, default_cache_dir, load_federated_data
from autofednlp.model.build import (
    build_model,
    learning_rate,
    load_trainable,
    model_shape,
    resolve_model_path,
    trainable_state,
    trained_part,
)
from autofednlp.model.classifier import EncoderClassifier
from autofednlp.model.kinds import TuneSpec

_MODELS: dict[tuple, EncoderClassifier] = {}


def client_data(cfg: ExperimentConfig) -> FederatedData:
    return load_federated_data(cfg.data, resolve_model_path(cfg.model.name), cfg.seed)


def _model_for(cfg: ExperimentConfig, num_labels: int, spec: TuneSpec) -> EncoderClassifier:
    # Frozen weights never change and trainable ones are overwritten on every call, so one
    # model per spec can serve every round in this process.
    key = (cfg.model.name, cfg.model.pooling, num_labels, spec)
    if key not in _MODELS:
        if len(_MODELS) >= 4:
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = build_model(cfg.model.name, num_labels, spec, cfg.seed, cfg.model.pooling)
    return _MODELS[key]


def cache_root(cfg: ExperimentConfig) -> Path:
    if cfg.client.cache_dir:
        return Path(cfg.client.cache_dir)
    return default_cache_dir() / "activations"


def activation_cache(
    cfg: ExperimentConfig, run_id: str, partition_id: int, model: EncoderClassifier
) -> ActivationCache | None:
    """This client's activation cache for this run, or None where nothing is frozen.

    Opened afresh each round from the client's directory, as a new client process would: its
    index is what is on disk, so a fill is charged once per sample and boundary whichever
    process trains the client next.
    """
    if not cfg.client.activation_cache or model.embeddings_trainable():
        return None
    namespace = f"{run_id}/{resolve_model_path(cfg.model.name)}/{cfg.model.pooling}/{partition_id}"
    return ActivationCache(
        namespace,
        cache_root(cfg) / run_id / f"client-{partition_id}",
        memory_budget_bytes=int(cfg.client.cache_memory_mb * 2**20),
        dtype=torch.float16 if cfg.client.cache_fp16 else torch.float32,
    )


def train_round(
    cfg: ExperimentConfig,
    partition_id: int,
    spec: TuneSpec,
    state: dict[str, torch.Tensor],
    server_round: int,
    device: str | None = None,
    run_id: str = "",
) -> tuple[dict[str, torch.Tensor], dict[str, float | int | str]]:
    """Train the received trainable tensors on this client's partition for one round.

    Returns the updated tensors and metrics: examples, loss, FLOPs executed and the simulated
    compute seconds on this client's device. `run_id` scopes the activation cache to one run.
    """
    data = client_data(cfg)
    if not 0 <= partition_id < len(data.partitions):
        raise ValueError(f"partition id {partition_id} is outside 0..{len(data.partitions) - 1}")
    local = data.client(partition_id)
    model = _model_for(cfg, data.num_labels, spec)
    load_trainable(model, state)
    cache = activation_cache(cfg, run_id or "default", partition_id, model)
    shape = model_shape(cfg.model.name, data.num_labels, cfg.model.pooling)
    part = trained_part(spec)
    seed = hash((cfg.seed, server_round, partition_id)) & 0x7FFFFFFF
    result = local_train(
        model,
        local,
        cfg.client,
        learning_rate(spec, cfg.client.learning_rate),
        spec.boundary(model.num_layers),
        shape,
        part,
        seed,
        cache=cache,
        sample_ids=torch.as_tensor(data.partitions[partition_id]),
    )
    device = device or client_device(cfg, partition_id)
    profile = get_profile(device)
    metrics = {
        "partition_id": partition_id,
        "num_examples": result.num_examples,
        "train_loss": result.train_loss,
        "steps": result.steps,
        "flops": result.flops,
        "compute_s": profile.compute_s(result.flops),
        "device": device,
        "cache_misses": -1 if cache is None else cache.misses,
        "cache_hits": -1 if cache is None else cache.hits,
    }
    return trainable_state(model), metrics
