"""AutoFedNLP's policies, function-preserving growth, trial groups and the activation cache."""

import csv
import json

import pytest
import torch

from autofednlp.config import ConfigError, StrategyConfig, load_config
from autofednlp.model.build import build_model, load_trainable, trainable_state
from autofednlp.model.grow import grow_state
from autofednlp.model.kinds import TuneSpec
from autofednlp.server.policies import (
    Caps,
    GroupOutcome,
    Upgrade,
    UpgradeJoint,
    pick_winner,
    trial_budget_s,
)

B = "bottleneck"


@pytest.mark.parametrize(
    "current, caps, expected",
    [
        (TuneSpec(B, 1, 8), Caps(6, 64), ["keep", "deeper", "wider"]),
        (TuneSpec(B, 0, 8), Caps(6, 64), ["keep", "deeper"]),  # wider at depth 0 is a no-op
        (TuneSpec(B, 6, 8), Caps(6, 64), ["keep", "wider"]),
        (TuneSpec(B, 2, 64), Caps(6, 64), ["keep", "deeper"]),
        (TuneSpec(B, 6, 64), Caps(6, 64), ["keep"]),
    ],
)
def test_upgrade_candidates_respect_caps(current, caps, expected):
    cands = Upgrade(1, 8, caps)(current)
    assert [c.name for c in cands] == expected
    assert cands[0].spec == current
    for c in cands:
        assert c.spec.depth >= current.depth and c.spec.width >= current.width


@pytest.mark.parametrize(
    "depth, reach, expected",
    [(0, 1, 1), (0, 2, 2), (1, 3, 4), (4, 3, 6), (5, 2, 6), (6, 2, None)],
)
def test_a_deeper_candidate_reaches_further_within_the_cap(depth, reach, expected):
    cands = {c.name: c.spec for c in Upgrade(1, 8, Caps(6, 64))(TuneSpec(B, depth, 8), reach)}
    assert (cands["deeper"].depth if "deeper" in cands else None) == expected
    joint = {c.name: c.spec for c in UpgradeJoint(1, 8, Caps(6, 64))(TuneSpec(B, 1, 8), 2)}
    assert joint["deeper"].depth == joint["deeper+wider"].depth == 3


@pytest.mark.parametrize("depth, expected", [(0, 2), (3, 5), (5, 6), (6, None)])
def test_a_two_layer_step_stops_at_the_cap(depth, expected):
    """depth_step 2 (the shadow's default) one layer short of the cap goes to the cap: the
    last layer stays reachable."""
    cands = {c.name: c.spec for c in Upgrade(2, 8, Caps(6, 64))(TuneSpec(B, depth, 8))}
    assert (cands["deeper"].depth if "deeper" in cands else None) == expected


def test_escalate_counts_the_trials_keep_won_in_a_row_at_a_plateau_always(tiny_model_dir, tmp_path):
    from autofednlp.client.worker import client_data
    from autofednlp.server import make_run
    from autofednlp.server.inprocess import InProcessTransport

    won = [{"winner": w} for w in ("deeper", "keep", "wider", "keep", "keep")]
    for escalate, reach in ((True, 3), (False, 1)):
        cfg = _cfg(
            tiny_model_dir,
            tmp_path,
            "strategy.trials=robust",
            f"strategy.escalate={str(escalate).lower()}",
        )
        run = make_run(cfg, client_data(cfg), InProcessTransport(cfg), tmp_path / "x", False)
        assert run._reach(won) == reach and run._reach(won[:3]) == 1
    # without escalate, only the trials keep won at a plateau count
    at = [{"winner": "keep", "plateau": p} for p in (True, False, True, True)]
    assert run._reach(at) == 3 and run._reach(at[:2]) == 1 and run._reach(at[:1]) == 2
    assert run._reach([*at, {"winner": "deeper", "plateau": True}]) == 1


def test_joint_policy_adds_deeper_and_wider():
    cands = UpgradeJoint(2, 16, Caps(6, 64))(TuneSpec(B, 1, 8))
    assert [(c.name, c.spec.depth, c.spec.width) for c in cands] == [
        ("keep", 1, 8),
        ("deeper", 3, 8),
        ("wider", 1, 24),
        ("deeper+wider", 3, 24),
    ]


def test_winner_is_numeric_and_ties_keep_the_current_configuration():
    def o(name, accs):
        return GroupOutcome(name, accs, [float(i + 1) for i in range(len(accs))], 0.5)

    # 0.9 > 0.85 as numbers ("0.9" < "0.85" as strings was the published code's bug)
    assert pick_winner([o("keep", [0.85]), o("deeper", [0.9])], "best_accuracy") == 1
    assert pick_winner([o("keep", [0.8]), o("deeper", [0.8]), o("w", [0.8])], "best_accuracy") == 0
    # gain per second: keep gains 0.1 in 1 s, deeper 0.2 in 4 s
    keep = GroupOutcome("keep", [0.6], [1.0], 0.5)
    deeper = GroupOutcome("deeper", [0.5, 0.6, 0.65, 0.7], [1.0, 2.0, 3.0, 4.0], 0.5)
    assert pick_winner([keep, deeper], "gain_per_s") == 0
    assert pick_winner([keep, deeper], "best_accuracy") == 1


def test_budgets():
    slowest = StrategyConfig(budget="slowest", trial_rounds=3)
    assert trial_budget_s(slowest, TuneSpec(B, 2, 8), [1.0, 4.0, 2.0]) == 12.0
    paper = StrategyConfig(budget="paper", trial_base_s=60)
    assert trial_budget_s(paper, TuneSpec(B, 2, 8), [1.0]) == 60 * 9


def test_autofed_needs_an_adapter_kind():
    with pytest.raises(ConfigError, match="tune.kind = 'full'"):
        load_config(None, ["strategy.name=autofed", "tune.kind=full"])


@pytest.mark.parametrize(
    "kind, old, new",
    [
        (B, (1, 8), (2, 8)),
        (B, (1, 8), (1, 16)),
        (B, (0, 8), (2, 8)),
        (B, (1, 8), (2, 24)),
        ("lora", (1, 4), (2, 4)),
        ("lora", (1, 4), (1, 8)),
    ],
)
def test_upgrades_preserve_predictions_exactly(tiny_model_dir, kind, old, new):
    old_spec, new_spec = TuneSpec(kind, *old), TuneSpec(kind, *new)
    model = build_model(tiny_model_dir, 3, old_spec, seed=0).eval()
    with torch.no_grad():  # a trained-looking model: every trained tensor non-zero
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.3)
    torch.manual_seed(0)
    ids = torch.randint(1000, 3000, (4, 10))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    with torch.no_grad():
        before = model(ids, mask)
    grown_model = build_model(tiny_model_dir, 3, new_spec, seed=0).eval()
    grown = grow_state(trainable_state(model), trainable_state(grown_model), old_spec, new_spec)
    load_trainable(grown_model, grown)
    assert sum(t.numel() for t in grown.values()) > sum(
        t.numel() for t in trainable_state(model).values()
    )
    with torch.no_grad():
        after = grown_model(ids, mask)
    assert torch.allclose(before, after, atol=1e-6), (before - after).abs().max()


def test_configurations_never_shrink(tiny_model_dir):
    a = trainable_state(build_model(tiny_model_dir, 3, TuneSpec(B, 2, 8), seed=0))
    b = trainable_state(build_model(tiny_model_dir, 3, TuneSpec(B, 1, 8), seed=0))
    with pytest.raises(ValueError, match="only grow"):
        grow_state(a, b, TuneSpec(B, 2, 8), TuneSpec(B, 1, 8))


def _cfg(tiny_model_dir, tmp_path, *extra):
    return load_config(
        None,
        [
            f'model.name="{tiny_model_dir}"',
            "data.max_samples=160",
            "data.max_length=32",
            "data.num_clients=12",
            "federation.clients_per_round=6",
            "federation.rounds=6",
            "federation.engine=inprocess",
            "strategy.name=autofed",
            "strategy.max_width=16",
            "tune.depth=1",
            "tune.width=8",
            f'output_dir="{tmp_path}"',
            *extra,
        ],
    )


def _run(cfg, run_dir):
    from autofednlp.client.worker import client_data
    from autofednlp.server import make_run
    from autofednlp.server.inprocess import InProcessTransport

    return make_run(cfg, client_data(cfg), InProcessTransport(cfg), run_dir, False).run()


def test_trial_groups_are_disjoint_concurrent_and_recorded(tiny_model_dir, tmp_path):
    summary = _run(_cfg(tiny_model_dir, tmp_path, 'strategy.trials="published"'), tmp_path / "r")
    rows = list(csv.DictReader(open(tmp_path / "r" / "rounds.csv")))
    assert {r["group"] for r in rows} >= {"keep", "deeper", "wider"}
    by_round = {}
    for r in rows:
        if r["group"] != "adopted":
            by_round.setdefault(r["round"], []).append(r)
    for group_rows in by_round.values():
        clients = [set(r["clients"].split()) for r in group_rows]
        assert sum(len(c) for c in clients) == len(set().union(*clients)), "groups overlap"
        assert all(len(c) == 2 for c in clients)  # 6 clients per round over 3 groups
    traj = summary["trajectory"]
    assert traj and [t["trial"] for t in traj] == list(range(1, len(traj) + 1))
    depths = [t["depth"] for t in traj]
    widths = [t["width"] for t in traj]
    assert depths == sorted(depths) and widths == sorted(widths)
    assert all(w <= 16 for w in widths)
    # groups run side by side: a trial lasts as long as its slowest group, not their sum
    first = [r for r in rows if r["trial"] == "1"]
    longest = max(float(r["sim_time_s"]) for r in first)
    assert traj[0]["sim_time_s"] == pytest.approx(longest)
    assert sum(float(r["round_time_s"]) for r in first) > longest
    # the winner is the group with the best validation accuracy in the trial
    best = max(first, key=lambda r: float(r["val_accuracy"]))
    assert traj[0]["val_accuracy"] == pytest.approx(float(best["val_accuracy"]))
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["trials"] == len(traj)
    # each trial's end hands out its winner's weights at their best round: a served reading of
    # its own at that moment, which trained nothing
    for t in traj:
        mine = [r for r in rows if r["trial"] == str(t["trial"]) and r["group"] == "adopted"]
        accs = [float(r["val_accuracy"]) for r in rows if r["trial"] == str(t["trial"])]
        keep = [
            float(r["val_accuracy"])
            for r in rows
            if r["trial"] == str(t["trial"]) and r["group"] == "keep"
        ]
        # keep winning at its last round hands out what was handed out: nothing to record
        changed = t["winner"] != "keep" or keep.index(max(keep)) != len(keep) - 1
        assert len(mine) == (1 if changed else 0)
        for row in mine:
            assert row["served"] == "True" and row["clients"] == ""
            assert row["config"] == t["config"]
            assert float(row["bytes_up"]) == float(row["round_time_s"]) == 0.0
            assert float(row["val_accuracy"]) == pytest.approx(t["val_accuracy"])
            assert float(row["sim_time_s"]) == pytest.approx(t["sim_time_s"])
            assert float(row["val_accuracy"]) == pytest.approx(max(accs))


def test_cache_is_exact_reused_and_cheaper(tiny_model_dir, tmp_path):
    fixed = ["strategy.name=fixed", "tune.depth=1", "federation.clients_per_round=12"]
    on = _run(_cfg(tiny_model_dir, tmp_path, *fixed, "federation.rounds=3"), tmp_path / "on")
    off = _run(
        _cfg(
            tiny_model_dir, tmp_path, *fixed, "federation.rounds=3", "client.activation_cache=false"
        ),
        tmp_path / "off",
    )
    rows = list(csv.DictReader(open(tmp_path / "on" / "rounds.csv")))
    # every client takes part every round: round 1 fills the cache, later rounds only hit it
    assert int(rows[0]["cache_misses"]) == 128 and int(rows[0]["cache_hits"]) == 0
    assert all(int(r["cache_misses"]) == 0 and int(r["cache_hits"]) == 128 for r in rows[1:])
    a = torch.load(tmp_path / "on" / "trainable_state.pt")
    b = torch.load(tmp_path / "off" / "trainable_state.pt")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert on["test_accuracy"] == off["test_accuracy"]
    assert on["sim_time_s"] < off["sim_time_s"]
