"""Flower's own strategy classes doing a group's aggregation step.

Our round loop aggregates plain tensors in every engine (the in-process one carries no Flower
Messages, and a trial round aggregates several groups, each of one configuration, from one
batch of replies), so it cannot *be* a Flower strategy. Instead each group's replies are wrapped
here into Flower reply Messages and passed through a Flower strategy's `aggregate_train`:

- `FedAdam`, `FedYogi`, `FedAvgM` take the group's averaged update and apply their server
  optimizer. Their state (moments, momentum) lives in the strategy object between rounds; we
  keep one state per configuration instead (a trial trains several configurations side by side,
  and a configuration grows), load it into a fresh strategy for each step and read it back, so
  it can be grown with the configuration and checkpointed.
- `DifferentialPrivacyServerSideFixedClipping` around `FedAvg` clips each client's update and
  adds Gaussian noise to the average (central DP). Flower draws that noise from NumPy's global
  RNG; we run it on a generator state of our own (seeded, checkpointed) and put the caller's back
  afterwards, so a resumed run draws the same noise and nothing else is disturbed.

Besides `server/app.py` and `client/app.py`, the only module that touches Flower's records.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
)

from autofednlp.config import AggregationConfig

State = dict[str, torch.Tensor]
Moments = dict[str, State]  # e.g. {"m_t": {tensor name: tensor}, "v_t": {...}}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Flower logs every aggregation at INFO; the run's own progress line says what happened."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _arrays(state: State) -> ArrayRecord:
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(t.detach().cpu().numpy())) for k, t in state.items()}
    )


def _state(record: ArrayRecord, like: State) -> State:
    return {k: torch.from_numpy(np.array(record[k].numpy())).to(like[k].dtype) for k in like}


def _reply(state: State, weight: float) -> Message:
    """A client's train reply as Flower's strategies expect it: arrays and a weight."""
    content = RecordDict(
        {"arrays": _arrays(state), "metrics": MetricRecord({"num-examples": float(weight)})}
    )
    # built with explicit metadata: outside a Flower run there is no task identity to take
    meta = Metadata(0, "", 0, 0, "", "", 0.0, 3600.0, MessageType.TRAIN)
    return Message(content=content, metadata=meta)


def _numpy_dict(state: State | None) -> dict[str, np.ndarray] | None:
    return None if not state else {k: t.numpy().copy() for k, t in state.items()}


def _torch_dict(arrays: dict[str, np.ndarray] | None) -> State:
    return {k: torch.from_numpy(np.array(v)) for k, v in (arrays or {}).items()}


class _FedOpt:
    """FedAdam / FedYogi: moments `m_t`, `v_t` per tensor name."""

    def __init__(self, cls: type, cfg: AggregationConfig) -> None:
        self.cls, self.cfg = cls, cfg

    def step(self, server_round: int, reference: State, average: State, moments: Moments):
        c = self.cfg
        s = self.cls(eta=c.eta, beta_1=c.beta_1, beta_2=c.beta_2, tau=c.tau)
        s.current_arrays = {k: t.detach().cpu().numpy() for k, t in reference.items()}
        s.m_t, s.v_t = _numpy_dict(moments.get("m_t")), _numpy_dict(moments.get("v_t"))
        with _quiet():
            arrays, _ = s.aggregate_train(server_round, [_reply(average, 1.0)])
        return _state(arrays, reference), {"m_t": _torch_dict(s.m_t), "v_t": _torch_dict(s.v_t)}


class _FedAvgM:
    """FedAvgM: a momentum vector, which Flower keeps as a list in the arrays' order."""

    def __init__(self, cfg: AggregationConfig) -> None:
        self.cfg = cfg

    def step(self, server_round: int, reference: State, average: State, moments: Moments):
        s = FedAvgM(
            server_learning_rate=self.cfg.server_learning_rate,
            server_momentum=self.cfg.server_momentum,
        )
        s.current_arrays = _arrays(reference)
        momentum = moments.get("momentum")
        if momentum:
            s.momentum_vector = [momentum[k].numpy().copy() for k in reference]
        with _quiet():
            arrays, _ = s.aggregate_train(server_round, [_reply(average, 1.0)])
        out = {}
        if s.momentum_vector is not None:
            out["momentum"] = _torch_dict(dict(zip(reference, s.momentum_vector, strict=True)))
        return _state(arrays, reference), out


def server_optimizer(cfg: AggregationConfig) -> _FedOpt | _FedAvgM | None:
    """Flower's server optimizer for `cfg.name`; None for fedavg and fedprox, whose server
    step is the average itself (kept in float64 by `aggregate.fedavg`, as before). Flower's
    `FedProx` adds nothing to FedAvg's aggregation: it only sends `proximal-mu` to clients,
    which read `aggregation.proximal_mu` from the experiment here (`client/train.py`).
    `server_round` is the run's round, as in Flower (FedAdam's bias correction counts it)."""
    if cfg.name == "fedadam":
        return _FedOpt(FedAdam, cfg)
    if cfg.name == "fedyogi":
        return _FedOpt(FedYogi, cfg)
    if cfg.name == "fedavgm":
        return _FedAvgM(cfg)
    return None


@contextlib.contextmanager
def _numpy_rng(state: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """NumPy's global RNG set to `state["rng"]` inside, the caller's restored after; the
    state reached inside is written back to `state["rng"]`."""
    outer = np.random.get_state()
    np.random.set_state(state["rng"])
    try:
        yield state
    finally:
        state["rng"] = np.random.get_state()
        np.random.set_state(outer)


def noise_rng(seed: int) -> dict[str, Any]:
    """A fresh, seeded noise generator state for `central_dp_mean`."""
    return {"rng": np.random.RandomState(seed).get_state()}


def central_dp_mean(
    reference: State,
    states: list[State],
    clip_norm: float,
    noise_multiplier: float,
    rng: dict[str, Any],
    server_round: int,
) -> State:
    """Equal-weight average of the clients' states, each client's update clipped to
    `clip_norm` and Gaussian noise of std noise_multiplier x clip_norm added to their sum, by
    Flower's `DifferentialPrivacyServerSideFixedClipping` around `FedAvg`. Equal weights: an
    example-weighted average would let one client's data size scale its influence (and the
    sensitivity the noise is calibrated to). `rng` is advanced in place."""
    strategy = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(), noise_multiplier, clip_norm, len(states)
    )
    strategy.current_arrays = _arrays(reference)
    replies = [_reply({k: s[k] for k in reference}, 1.0) for s in states]
    with _numpy_rng(rng), _quiet():
        arrays, _ = strategy.aggregate_train(server_round, replies)
    return _state(arrays, reference)
