"""Client-level differential privacy: clipping, noise, the accountant, resume."""

import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.supercore.differential_privacy import compute_clip_model_update
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from small_run import small_config

from autofednlp.config import PrivacyConfig
from autofednlp.privacy.accountant import PrivacyLedger
from autofednlp.privacy.clip import clip_update, privatize_update, update_norm
from autofednlp.run import run_experiment
from autofednlp.server.flower_strategies import central_dp_mean, noise_rng


def _states(n, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [
        {"a": torch.randn(3, 4, generator=g) * scale, "b": torch.randn(5, generator=g) * scale}
        for _ in range(n)
    ]


def test_clipping_bounds_every_update_and_matches_flowers():
    ref, *clients = _states(6, scale=3.0)
    for s in clients:
        clipped = clip_update(ref, s, 0.5)
        assert update_norm(ref, clipped) <= 0.5 + 1e-6
        flower = [s[k].numpy().copy() for k in ref]
        compute_clip_model_update(flower, [ref[k].numpy() for k in ref], 0.5)
        for k, f in zip(ref, flower):
            assert np.allclose(clipped[k].numpy(), f, atol=1e-6)
    small = {k: ref[k] + 1e-3 for k in ref}  # inside the bound: unchanged
    assert all(torch.allclose(clip_update(ref, small, 0.5)[k], small[k]) for k in ref)
    noiseless = privatize_update(ref, clients[0], 0.5, 0.0, seed=1)
    assert update_norm(ref, noiseless) <= 0.5 + 1e-6


def test_central_dp_mean_is_the_clipped_mean_plus_seeded_noise():
    ref, *clients = _states(5, scale=3.0)
    rng = noise_rng(0)
    mean = central_dp_mean(ref, clients, 0.5, 0.0, rng, 1)
    expect = {k: sum(clip_update(ref, s, 0.5)[k] for s in clients) / len(clients) for k in ref}
    assert all(torch.allclose(mean[k], expect[k], atol=1e-6) for k in ref)
    assert update_norm(ref, mean) <= 0.5 + 1e-6
    a = central_dp_mean(ref, clients, 0.5, 1.0, noise_rng(3), 1)
    b = central_dp_mean(ref, clients, 0.5, 1.0, noise_rng(3), 1)
    outer = np.random.get_state()[1].copy()
    c = central_dp_mean(ref, clients, 0.5, 1.0, noise_rng(4), 1)
    assert all(torch.equal(a[k], b[k]) for k in ref) and not torch.equal(a["a"], c["a"])
    assert (np.random.get_state()[1] == outer).all()  # the caller's global RNG is untouched
    noise = torch.cat([(a[k] - expect[k]).flatten() for k in ref])
    assert 0.02 < float(noise.std()) < 0.3  # std 1.0 x 0.5 / 5 clients = 0.1


def _library_epsilon(schedule, delta):
    """Opacus's own RDP analysis of `schedule` [(noise multiplier, sample rate, steps)]."""
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(compute_rdp(q=q, noise_multiplier=s, steps=n, orders=orders) for s, q, n in schedule)
    return get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0]


@pytest.mark.parametrize("mode", ["central", "local"])
def test_epsilon_is_the_librarys_for_the_same_schedule(mode):
    cfg = PrivacyConfig(mode=mode, noise_multiplier=1.2, delta=1e-5)
    ledger = PrivacyLedger(cfg, 100)
    rounds = [list(range(i, i + 15)) for i in range(0, 60, 4)]  # overlapping: repeat clients
    rounds.append(list(range(90, 100)))  # a round with fewer clients (a trial's groups)
    for clients in rounds:
        ledger.record(clients)
    if mode == "local":  # no amplification: the most frequent client's releases
        most = max(Counter(c for r in rounds for c in r).values())
        want = _library_epsilon([(1.2, 1.0, most)], 1e-5)
    else:
        want = _library_epsilon([(1.2, 0.15, len(rounds) - 1), (1.2, 0.10, 1)], 1e-5)
    assert ledger.epsilon() == pytest.approx(want, rel=1e-9)
    assert ledger.summary()["rounds"] == len(rounds)
    zero = PrivacyLedger(PrivacyConfig(mode=mode, noise_multiplier=0.0), 100)
    zero.record([1, 2])
    assert zero.epsilon() == math.inf


def _rows(run_dir):
    with open(Path(run_dir) / "rounds.csv") as f:
        return list(csv.DictReader(f))


# AutoFedNLP with a one-round trial after every round, under central DP
TRIALS = [
    'strategy.name="autofed"',
    "tune.depth=0",
    "tune.width=8",
    "strategy.trial_every=1",
    "strategy.trial_rounds=1",
    'privacy.mode="central"',
]


def test_a_trial_run_counts_every_group_and_reports_epsilon(tiny_model_dir, tmp_path):
    cfg = small_config(
        tiny_model_dir,
        tmp_path,
        *TRIALS,
        'strategy.trial_pace="keep"',  # trial rounds: every group's clients in one release
        "federation.rounds=3",
        'aggregation.name="fedavgm"',
    )
    s = run_experiment(cfg, progress="quiet")
    rows = _rows(s["run_dir"])
    assert any(r["group"] for r in rows), "no trial ran"
    per_round = Counter()
    for r in rows:
        per_round[int(r["round"])] += len(r["clients"].split())
    ledger = PrivacyLedger(cfg.privacy, cfg.data.num_clients)
    for rnd in sorted(per_round):
        ledger.record(list(range(per_round[rnd])))
        eps = [float(r["epsilon"]) for r in rows if int(r["round"]) == rnd]
        assert eps == [pytest.approx(ledger.epsilon())] * len(eps)
    assert s["privacy"]["epsilon"] == pytest.approx(ledger.epsilon())
    assert s["privacy"]["rounds"] == 3


def test_background_trials_count_each_probe_task_as_a_release(tiny_model_dir, tmp_path):
    """Probe clients train keep's configuration and each candidate: the same clients in
    several releases of one round, so each task's group average is its own noisy release
    (sequential composition), as is each served round. RDP composes in any order, so the
    final epsilon is that of one release per row of the rounds file."""
    cfg = small_config(
        tiny_model_dir,
        tmp_path,
        *TRIALS,
        'strategy.trial_pace="background"',
        "federation.rounds=12",
    )
    s = run_experiment(cfg, progress="quiet")
    rows = _rows(s["run_dir"])
    assert any(r["served"] == "False" for r in rows), "no probe round finished"
    rows = [r for r in rows if r["group"] != "adopted"]  # an adoption releases nothing
    ledger = PrivacyLedger(cfg.privacy, cfg.data.num_clients)
    for r in rows:
        ledger.record([int(c) for c in r["clients"].split()])
    if all(t["probe_rounds"] for t in s["trajectory"]):
        assert s["privacy"]["epsilon"] == pytest.approx(ledger.epsilon())
        assert s["privacy"]["rounds"] == len(rows)
    else:  # the run ended inside a probe round: its tasks were sent (and count), never recorded
        assert s["privacy"]["epsilon"] > ledger.epsilon()
        assert s["privacy"]["rounds"] > len(rows)


def test_local_dp_runs(tiny_model_dir, tmp_path):
    cfg = small_config(
        tiny_model_dir, tmp_path, "tune.depth=1", "tune.width=8", 'privacy.mode="local"'
    )
    s = run_experiment(cfg, progress="quiet")
    assert s["privacy"]["mode"] == "local" and s["privacy"]["epsilon"] > 0
    assert json.loads((Path(s["run_dir"]) / "summary.json").read_text())["privacy"]


def test_clipping_bounds_every_round_of_a_run(tiny_model_dir, tmp_path):
    """Without noise, each round moves the weights by the mean of clipped updates: at most
    clip_norm, so two rounds at most 2 x clip_norm; without DP they move further."""
    from autofednlp.model.build import build_model, trainable_state
    from autofednlp.model.kinds import TuneSpec

    sets = ("tune.depth=1", "tune.width=8", "client.learning_rate=0.05")
    dp = ('privacy.mode="central"', "privacy.noise_multiplier=0", "privacy.clip_norm=0.01")
    moved = {}
    for name, extra in (("dp", dp), ("plain", ())):
        cfg = small_config(tiny_model_dir, tmp_path / name, *sets, *extra)
        s = run_experiment(cfg, progress="quiet")
        spec = TuneSpec("bottleneck", 1, 8)
        start = trainable_state(build_model(tiny_model_dir, len(s["label_names"]), spec, cfg.seed))
        end = torch.load(Path(s["run_dir"]) / "trainable_state.pt")
        moved[name] = update_norm(start, end)
    assert moved["dp"] <= 2 * 0.01 + 1e-6 < moved["plain"]
