"""Aggregation strategies (FedAvg, FedProx, Flower's FedAdam / FedYogi / FedAvgM) in every group."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi
from small_run import small_config

from autofednlp.config import AggregationConfig, ExperimentConfig
from autofednlp.run import run_experiment
from autofednlp.server.aggregate import fedavg
from autofednlp.server.aggregation import GroupAggregator
from autofednlp.server.flower_strategies import _reply, server_optimizer


def _states(n, seed=0, shapes=(("a", (3, 4)), ("b", (5,)))):
    g = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(s, generator=g) for k, s in shapes} for _ in range(n)]


def _run(tiny_model_dir, tmp_path, *extra):
    cfg = small_config(tiny_model_dir, tmp_path, "tune.depth=1", "tune.width=8", *extra)
    return run_experiment(cfg, progress="quiet")


def _weights(summary):
    from pathlib import Path

    return torch.load(Path(summary["run_dir"]) / "trainable_state.pt")


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fedavg_aggregator_is_the_plain_weighted_average():
    ref, *clients = _states(4)
    updates = [(s, float(i + 1)) for i, s in enumerate(clients)]
    agg = GroupAggregator(ExperimentConfig())
    avg, shared = agg.average(ref, updates, 1)
    assert _same(avg, fedavg(updates)) and shared is updates
    assert agg.step("cfg", ref, avg, 1) is avg and agg.moments == {}


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedavgm"])
def test_server_step_equals_a_flower_strategy_kept_across_rounds(name):
    """Our per-configuration state, read out of and loaded back into fresh Flower strategies,
    gives what one Flower strategy object gives over the same rounds."""
    cfg = AggregationConfig(name=name)
    ours = server_optimizer(cfg)
    cls = {"fedadam": FedAdam, "fedyogi": FedYogi, "fedavgm": FedAvgM}[name]
    if name == "fedavgm":
        flower = cls(
            server_learning_rate=cfg.server_learning_rate, server_momentum=cfg.server_momentum
        )
    else:
        flower = cls(eta=cfg.eta, beta_1=cfg.beta_1, beta_2=cfg.beta_2, tau=cfg.tau)
    weights, moments = _states(1, seed=1)[0], {}
    flower_weights = {k: t.clone() for k, t in weights.items()}
    for rnd, average in enumerate(_states(3, seed=2), start=1):
        weights, moments = ours.step(rnd, weights, average, moments)
        arrays = ArrayRecord({k: Array(t.numpy()) for k, t in flower_weights.items()})
        if name == "fedavgm":
            flower.current_arrays = arrays
        else:
            flower.current_arrays = {k: a.numpy() for k, a in arrays.items()}
        out, _ = flower.aggregate_train(rnd, [_reply(average, 1.0)])
        # the model's dtype, as the round loop keeps its weights
        flower_weights = {k: torch.from_numpy(np.array(out[k].numpy())).float() for k in weights}
        assert _same(weights, flower_weights), rnd
    assert moments and all(t.abs().sum() > 0 for m in moments.values() for t in m.values())


def test_grown_configuration_keeps_the_old_moments_and_starts_new_ones_at_zero():
    agg = GroupAggregator(ExperimentConfig(aggregation=AggregationConfig(name="fedadam")))
    small = {"w": torch.zeros(2, 3)}
    agg.step("small", small, {"w": torch.ones(2, 3)}, 1)
    grown = {"w": torch.zeros(4, 3), "new": torch.zeros(5)}
    agg.grow("small", "big", grown)
    for name, m in agg.moments["big"].items():
        assert torch.equal(m["w"][:2], agg.moments["small"][name]["w"])
        assert not m["w"][2:].any() and not m["new"].any()
    agg.moments["big"]["m_t"]["w"] += 7  # the big one's state moves on alone ...
    agg.share("small", "big")  # ... until it takes the shared trunk's state again
    assert torch.equal(agg.moments["big"]["m_t"]["w"][:2], agg.moments["small"]["m_t"]["w"])
    agg.grow("none", "big", grown)  # grown from a configuration without state: afresh
    assert "big" not in agg.moments


@pytest.mark.parametrize("name", ["fedprox", "fedadam", "fedyogi", "fedavgm"])
def test_each_strategy_runs_and_learns_something(tiny_model_dir, tmp_path, name):
    s = _run(tiny_model_dir, tmp_path, f'aggregation.name="{name}"')
    assert s["aggregation"] == name and s["rounds"] == 2
    base = _weights(_run(tiny_model_dir, tmp_path / "base", 'aggregation.name="fedavg"'))
    assert not _same(_weights(s), base)  # the strategy changed what was trained


def test_fedprox_with_mu_zero_is_fedavg(tiny_model_dir, tmp_path):
    a = _run(tiny_model_dir, tmp_path / "a", 'aggregation.name="fedavg"')
    b = _run(tiny_model_dir, tmp_path / "b", "aggregation.proximal_mu=0")  # fedprox: the default
    assert _same(_weights(a), _weights(b)) and a["test_accuracy"] == b["test_accuracy"]


@pytest.mark.parametrize("trials", ["robust", "published"])
def test_server_optimizer_in_trial_groups(tiny_model_dir, tmp_path, trials):
    s = _run(
        tiny_model_dir,
        tmp_path,
        'strategy.name="autofed"',
        f'strategy.trials="{trials}"',
        "tune.depth=0",
        "strategy.trial_every=1",
        "strategy.trial_rounds=1",
        "federation.rounds=3",
        'aggregation.name="fedadam"',
    )
    assert s["trials"] >= 1 and s["aggregation"] == "fedadam"
