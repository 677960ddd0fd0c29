"""Robust trials (`strategy.trials = "robust"`): a stall starts a trial, candidates share the
current configuration's trunk, a paired test decides, and only the served model's readings
count towards time to target."""

import csv
import json
import math

import pytest
import torch

from autofednlp.model.build import build_model, load_trainable, trainable_state
from autofednlp.model.grow import grow_state
from autofednlp.model.kinds import TuneSpec
from autofednlp.report.results import time_to_target
from autofednlp.server.policies import (
    GroupOutcome,
    StallDetector,
    TrialSchedule,
    overlay,
    paired_evidence,
    pick_paired,
    pick_winner,
    shared_average,
)

B = "bottleneck"


def test_stall_needs_patience_readings_without_a_real_gain():
    s = StallDetector(patience=3, min_delta=0.01, best=0.50)
    for acc in (0.60, 0.70, 0.705, 0.69):  # 0.705 is no gain of 0.01 over 0.70
        s.observe(acc)
    assert not s.stalled and s.since_gain == 2
    s.observe(0.71)  # still under 0.70 + 0.01
    assert s.stalled
    s.restart()
    assert not s.stalled
    s.observe(0.72)
    assert s.since_gain == 0 and s.best == 0.72


def _rounds_until_due(schedule, stall_readings=None):
    """Exploit rounds until `schedule` calls a trial, the served model climbing steadily (no
    stall) unless `stall_readings` are given."""
    best = stall_readings[0] if stall_readings else 0.0
    stall = StallDetector(patience=3, min_delta=0.005, best=best)
    for since in range(1, 100):
        stall.observe(stall_readings[since - 1] if stall_readings else 0.01 * since)
        if schedule.due(since, stall):
            return since
    return None


@pytest.mark.parametrize(
    "history, every, stall_patience",
    [
        ([], 4, 3),  # the base cadence
        ([True], 2, 2),  # a growth just paid: look again sooner
        ([False], 8, 6),  # keep won: wait longer
        ([False, False, False], 16, 12),  # backs off up to 4x
        ([False, False, True], 2, 2),  # a growth resets the back-off
    ],
)
def test_trial_schedule_follows_the_returns_of_past_trials(history, every, stall_patience):
    schedule = TrialSchedule(every=4, backoff=2.0)
    for grew in history:
        schedule.after_trial(grew)
    assert _rounds_until_due(schedule) == every
    flat = [0.5] * 40  # no gain at all: the stall rule fires first
    assert _rounds_until_due(TrialSchedule(0, 2.0, scale=schedule.scale), flat) == stall_patience


def test_trial_schedule_with_backoff_1_is_a_fixed_cadence():
    schedule = TrialSchedule(every=4, backoff=1.0)
    for grew in (True, False, False):
        schedule.after_trial(grew)
        assert _rounds_until_due(schedule) == 4


def _losses(seed, n=300):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g) * 2


def test_a_noisy_but_worse_candidate_does_not_win_a_clearly_better_one_does():
    keep = [_losses(0), _losses(1)]
    g = torch.Generator().manual_seed(5)
    # worse on average (+0.02 loss per sample), but with one lucky accuracy reading: the
    # published rule (best single reading) picks it, the paired test does not
    noisy = [k + 0.02 + 0.3 * torch.randn(k.shape, generator=g) for k in keep]
    noisy_acc, keep_acc = [0.91, 0.70], [0.80, 0.80]
    published = [
        GroupOutcome("keep", keep_acc, [1, 2], 0.7),
        GroupOutcome("x", noisy_acc, [1, 2], 0.7),
    ]
    assert pick_winner(published, "best_accuracy") == 1
    ev = paired_evidence("x", keep, noisy, keep_acc, noisy_acc)
    assert ev.gain < 0 and pick_paired([ev], 1.64) is None
    # clearly better: 0.1 lower loss on every sample give or take a little noise
    better = [k - 0.1 + 0.02 * torch.randn(k.shape, generator=g) for k in keep]
    ev_b = paired_evidence("b", keep, better, keep_acc, [0.82, 0.83])
    assert pick_paired([ev, ev_b], 1.64) == 1
    # better loss but lower accuracy is not "clearly better"
    ev_c = paired_evidence("c", keep, better, keep_acc, [0.78, 0.79])
    assert pick_paired([ev_c], 1.64) is None


@pytest.mark.parametrize(
    "kind, old, new", [(B, (1, 8), (2, 8)), (B, (1, 8), (1, 16)), ("lora", (1, 4), (1, 8))]
)
def test_shared_trunk_keeps_growth_exact(tiny_model_dir, kind, old, new):
    """After the trunk is averaged over all groups and laid into a candidate whose added
    capacity is still at zero, the candidate predicts exactly what `keep` with that trunk does."""
    o, n = TuneSpec(kind, *old), TuneSpec(kind, *new)
    small = build_model(tiny_model_dir, 3, o, seed=0).eval()
    big = build_model(tiny_model_dir, 3, n, seed=0).eval()
    torch.manual_seed(0)
    base = {k: torch.randn_like(v) * 0.3 for k, v in trainable_state(small).items()}
    grown = grow_state(base, trainable_state(big), o, n)
    # two clients' updates, one of each shape: the trunk is their weighted average
    upd_small = {k: v + 0.1 for k, v in base.items()}
    upd_big = {k: v - 0.2 for k, v in grown.items()}
    trunk = shared_average(base, [(upd_small, 1.0), (upd_big, 3.0)])
    for k, v in trunk.items():
        assert torch.allclose(v, base[k] + 0.25 * 0.1 - 0.75 * 0.2, atol=1e-6)
    cand = overlay(grown, trunk)  # its added capacity as grown: output side at zero
    load_trainable(small, trunk)
    load_trainable(big, cand)
    ids = torch.randint(1000, 3000, (3, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.allclose(small(ids, mask), big(ids, mask), atol=1e-6)


def test_only_served_readings_count_and_a_spike_must_hold():
    rows = [
        {"round": 1, "sim_time_s": 1.0, "val_accuracy": 0.70, "served": True},
        {"round": 1, "sim_time_s": 1.0, "val_accuracy": 0.95, "served": False},  # a candidate
        {"round": 2, "sim_time_s": 2.0, "val_accuracy": 0.91, "served": True},  # a spike
        {"round": 3, "sim_time_s": 3.0, "val_accuracy": 0.80, "served": True},
        {"round": 4, "sim_time_s": 4.0, "val_accuracy": 0.92, "served": True},
        {"round": 5, "sim_time_s": 5.0, "val_accuracy": 0.93, "served": True},
    ]
    assert time_to_target(rows, 0.9, hold=1) == {"sim_time_s": 2.0, "round": 2}
    assert time_to_target(rows, 0.9, hold=2) == {"sim_time_s": 4.0, "round": 4}
    assert time_to_target(rows, 0.9, hold=3) is None
    plain = [{k: v for k, v in r.items() if k != "served"} for r in rows]  # fixed runs' rows
    assert time_to_target(plain, 0.94, hold=1) == {"sim_time_s": 1.0, "round": 1}


def test_an_adopted_model_counts_from_the_moment_of_its_adoption():
    """A decision at the end of round 2 hands out the candidate that read 0.93 there: its
    `adopted` row, after the served row of that moment, starts the hold (before it, time to
    target waited for the new configuration's first round)."""
    rows = [
        {"round": 1, "sim_time_s": 1.0, "val_accuracy": 0.80, "served": True},
        {"round": 2, "sim_time_s": 2.0, "val_accuracy": 0.85, "served": True, "group": "keep"},
        {"round": 2, "sim_time_s": 2.0, "val_accuracy": 0.93, "served": False, "group": "deeper"},
        {"round": 2, "sim_time_s": 2.0, "val_accuracy": 0.93, "served": True, "group": "adopted"},
        {"round": 3, "sim_time_s": 3.0, "val_accuracy": 0.92, "served": True},
    ]
    assert time_to_target(rows, 0.9, hold=2) == {"sim_time_s": 2.0, "round": 2}
    before = [r for r in rows if r.get("group") != "adopted"]
    assert time_to_target(before, 0.9, hold=2) is None
    # a moment counts once, with its last reading: the replaced model's reading at the moment
    # of the adoption and the adopted one's are not a hold of two
    assert time_to_target(rows, 0.84, hold=3) is None
    assert time_to_target(rows, 0.84, hold=2) == {"sim_time_s": 2.0, "round": 2}
    dip = [*rows[:4], {**rows[4], "val_accuracy": 0.83}]
    assert time_to_target(dip, 0.84, hold=2) is None


def test_round_time_estimates_start_from_the_last_trained_round_not_an_adoption():
    """`last_served` (the warm gate's and the budget check's start) skips an adoption's row,
    which trained no client: its empty client list would leave nothing to estimate from."""
    from types import SimpleNamespace

    from autofednlp.server.pacing import ClientPacing

    rows = [
        {"round": 3, "served": True, "clients": "1 4 7", "round_time_s": 0.25},
        {"round": 3, "served": False, "group": "deeper", "clients": "2", "round_time_s": 0.4},
        {"round": 3, "served": True, "group": "adopted", "clients": "", "round_time_s": 0.0},
    ]
    run = SimpleNamespace(recorder=SimpleNamespace(rows=rows))
    assert ClientPacing.last_served(run) == ([1, 4, 7], 0.25)


def _cfg(tiny_model_dir, tmp_path, *extra):
    """test_autofed's small AutoFedNLP run (160 samples, 12 clients, 6 a round, d=1 w=8),
    with robust trials that start at once: every reading is a stall."""
    from test_autofed import _cfg as autofed_cfg

    return autofed_cfg(
        tiny_model_dir,
        tmp_path,
        "federation.rounds=7",
        "strategy.patience=1",
        "strategy.min_delta=1.0",
        "strategy.trial_every=0",
        "strategy.trial_rounds=2",
        'strategy.trial_pace="keep"',  # trial rounds; the background tests set their own
        *extra,
    )


def test_robust_run_trains_keep_with_everyone_and_trials_on_stalls(tiny_model_dir, tmp_path):
    from autofednlp.client.worker import client_data
    from autofednlp.server import make_run
    from autofednlp.server.inprocess import InProcessTransport

    cfg = _cfg(tiny_model_dir, tmp_path)
    summary = make_run(cfg, client_data(cfg), InProcessTransport(cfg), tmp_path / "r", False).run()
    rows = list(csv.DictReader(open(tmp_path / "r" / "rounds.csv")))
    by_round: dict[str, list] = {}
    for r in rows:
        by_round.setdefault(r["round"], []).append(r)
    # round 1: the current configuration with all 6 clients; then trials of 2 rounds
    assert [len(v) for v in by_round.values()][:3] == [1, 3, 3]
    assert by_round["1"][0]["group"] == "" and len(by_round["1"][0]["clients"].split()) == 6
    for group_rows in by_round.values():
        group_rows = [r for r in group_rows if r["group"] != "adopted"]  # a reading, no round
        served = [r for r in group_rows if r["served"] == "True"]
        assert len(served) == 1  # one model is handed out per round
        assert len(group_rows) == 1 or served[0]["group"] == "keep"
        clients = [set(r["clients"].split()) for r in group_rows]
        assert sum(len(c) for c in clients) == len(set().union(*clients)) == 6
        times = {r["sim_time_s"] for r in group_rows}
        assert len(times) == 1  # groups run side by side, in step
    traj = summary["trajectory"]
    assert traj and all(set(t["evidence"]) == set(t["groups"]) - {"keep"} for t in traj)
    assert all(t["rounds"] == 2 for t in traj[:-1])
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["trials"] == len(traj)


def test_trials_come_every_trial_every_rounds_without_a_stall(tiny_model_dir, tmp_path):
    from autofednlp.client.worker import client_data
    from autofednlp.server import make_run
    from autofednlp.server.inprocess import InProcessTransport

    cfg = _cfg(
        tiny_model_dir,
        tmp_path,
        "strategy.patience=100",  # never a stall
        "strategy.trial_every=2",
        "strategy.trial_rounds=1",
        "strategy.trial_backoff=1",  # a fixed cadence (the back-off has its own tests)
    )
    summary = make_run(cfg, client_data(cfg), InProcessTransport(cfg), tmp_path / "t", False).run()
    rows = list(csv.DictReader(open(tmp_path / "t" / "rounds.csv")))
    kinds = ["main" if r["group"] == "" else "trial" for r in rows if r["served"] == "True"]
    assert kinds == ["main", "main", "trial", "main", "main", "trial", "main"]
    assert summary["trials"] == 2


def test_growth_starts_from_fresh_capacity_after_a_candidate_lost(tiny_model_dir, tmp_path):
    """A losing candidate's trained weights are loaded into the server's cached model when it
    is evaluated; growing into the same spec again must still start its capacity at zero."""
    from autofednlp.client.worker import client_data
    from autofednlp.server import make_run
    from autofednlp.server.inprocess import InProcessTransport

    cfg = _cfg(tiny_model_dir, tmp_path)
    run = make_run(cfg, client_data(cfg), InProcessTransport(cfg), tmp_path / "g", False)
    deeper = TuneSpec(B, 2, 8)
    trained = {k: torch.randn_like(v) for k, v in run.initial_state(deeper).items()}
    run.evaluate("validation", deeper, trained)  # loads `trained` into the cached model
    grown = run.grow(run.state, run.spec, deeper)
    ups = [v for k, v in grown.items() if "adapter_up" in k and ".0." in k]  # the new layer
    assert ups and all(torch.count_nonzero(v) == 0 for v in ups)


def test_a_new_run_in_a_reused_directory_pays_its_own_cache_fills(
    tiny_model_dir, tmp_path, monkeypatch
):
    """A killed run leaves its activation cache (for --resume); a fresh run in the same
    directory must not be charged hits where it should pay fills."""
    import shutil

    from small_run import small_config

    import autofednlp.run as run_mod

    cfg = small_config(tiny_model_dir, tmp_path, "tune.depth=1", "tune.width=8")
    rd = tmp_path / "same"
    with monkeypatch.context() as m:  # the first run keeps its cache, as a killed one does
        m.setattr(run_mod.shutil, "rmtree", lambda *a, **k: None)
        first = run_mod.run_experiment(cfg, str(rd), progress=False)
    misses = [int(r["cache_misses"]) for r in csv.DictReader(open(rd / "rounds.csv"))]
    assert misses[0] > 0
    shutil.rmtree(rd)
    again = run_mod.run_experiment(cfg, str(rd), progress=False)
    assert [int(r["cache_misses"]) for r in csv.DictReader(open(rd / "rounds.csv"))] == misses
    assert again["sim_time_s"] == pytest.approx(first["sim_time_s"])


@pytest.mark.parametrize("early", [True, False])
def test_a_candidate_far_ahead_at_an_interim_look_ends_the_trial(
    tiny_model_dir, tmp_path, monkeypatch, early
):
    """An interim look asks for twice the bar, and adopts nothing before a trial's second
    round (one round's reading can clear any bar by chance); when a candidate clears it there,
    the trial ends and the candidate is adopted. Without early decisions every trial runs its
    rounds and is judged at the bar."""
    import autofednlp.server.group_trials as group_trials
    from autofednlp.client.worker import client_data
    from autofednlp.server import make_run
    from autofednlp.server.inprocess import InProcessTransport

    asked = []

    def far_ahead(evidence, z):  # the first candidate always clears the interim bar only
        asked.append(z)
        return 0 if z == pytest.approx(2 * 1.5) else None

    monkeypatch.setattr(group_trials, "pick_paired", far_ahead)
    cfg = _cfg(
        tiny_model_dir,
        tmp_path,
        "federation.rounds=4",
        "strategy.trial_rounds=3",
        "strategy.confidence_z=1.5",
        f"strategy.early_decision={str(early).lower()}",
    )
    summary = make_run(cfg, client_data(cfg), InProcessTransport(cfg), tmp_path / "e", False).run()
    first = summary["trajectory"][0]
    if early:
        assert asked[0] == pytest.approx(3.0)  # no look after round 1
        assert (first["rounds"], first["decided_early"], first["winner"]) == (2, True, "deeper")
    else:
        assert asked == [1.5]
        assert (first["rounds"], first["decided_early"], first["winner"]) == (3, False, "keep")
    # an adoption is a served reading at that moment; keep winning changes nothing served
    rows = list(csv.DictReader(open(tmp_path / "e" / "rounds.csv")))
    adopted = [r for r in rows if r["group"] == "adopted"]
    assert len(adopted) == (1 if early else 0)
    if early:
        (row,) = adopted
        assert row["served"] == "True" and row["config"] == first["config"]
        trial_rounds = [int(r["round"]) for r in rows if r["trial"] == "1" and r is not row]
        assert int(row["round"]) == max(trial_rounds) and float(row["round_time_s"]) == 0.0
        assert float(row["sim_time_s"]) == pytest.approx(first["sim_time_s"])


def test_assign_groups_puts_the_largest_clients_on_the_cheapest_configuration():
    from autofednlp.server.policies import assign_groups

    size = {c: s for c, s in zip(range(7), [50, 5, 40, 8, 30, 3, 10])}
    per_example = [1.0, 3.0, 2.0]  # keep, deeper, wider

    def estimate(c, g):
        return size[c] * per_example[g]

    groups = assign_groups(list(range(7)), 3, estimate)
    assert [len(g) for g in groups] == [3, 2, 2]  # the sizes dealing them out would give
    assert sorted(sum(groups, [])) == list(range(7))
    assert groups[0] == [0, 2, 4]  # the three largest train keep
    slowest = max(estimate(c, g) for g, members in enumerate(groups) for c in members)
    dealt = [list(range(7))[i::3] for i in range(3)]
    slowest_dealt = max(estimate(c, g) for g, members in enumerate(dealt) for c in members)
    assert slowest == 50 < slowest_dealt == 90  # client 4 (30 examples) on deeper
    assert assign_groups(list(range(7)), 3, estimate) == groups  # deterministic


def test_the_server_knows_what_each_client_cache_holds(tiny_model_dir, tmp_path):
    """The server's picture of its clients (data size from replies, cached boundaries from the
    configurations they trained, with the lookahead) must be what the clients hold: trial
    placement estimates cache fills from it."""
    from autofednlp.client.worker import activation_cache, client_data
    from autofednlp.server import make_run
    from autofednlp.server.inprocess import InProcessTransport

    cfg = _cfg(tiny_model_dir, tmp_path, f'client.cache_dir="{tmp_path / "cache"}"')
    data = client_data(cfg)
    run = make_run(cfg, data, InProcessTransport(cfg), tmp_path / "k", False)
    summary = run.run()
    assert summary["trials"] > 0
    assert run._cached and run.client_info
    model = run.model_for(run.spec)
    for client, held in run._cached.items():
        assert run.client_info[client][0] == len(data.partitions[client])
        cache = activation_cache(cfg, run.run_id, client, model)
        assert set(cache.stats()["boundaries"]) == held, client
    # the estimate charges a fill only where the boundary is not held
    from autofednlp.cost.devices import client_device, get_profile
    from autofednlp.cost.flops import fill_cache_flops

    client = next(iter(run._cached))
    held = run.client_seconds(client, run.spec, run.state)
    run._cached[client] = set()
    fresh = run.client_seconds(client, run.spec, run.state)
    n, batch = len(data.partitions[client]), cfg.client.batch_size
    fill = fill_cache_flops(run.shape, run.spec, batch, cfg.data.max_length)
    profile = get_profile(client_device(cfg, client))
    assert fresh - held == pytest.approx(-(-n // batch) * profile.compute_s(fill))


def test_keep_pace_caps_candidates_to_the_time_of_keeps_round(tiny_model_dir, tmp_path):
    """With trial_pace = "keep" a candidate's client trains at most the steps that fit in
    the estimated time of the slowest client of keep's group: the first trial round (the same
    clients and weights under every pace) is shorter than when it waits for the slowest
    candidate client, and keep's group is unchanged. "place" sends full epochs and only
    chooses who trains what."""
    from autofednlp.client.worker import client_data
    from autofednlp.server import make_run
    from autofednlp.server.inprocess import InProcessTransport

    first_trial, draws = {}, {}
    for pace in ("slowest", "keep", "place"):
        cfg = _cfg(
            tiny_model_dir,
            tmp_path,
            "federation.rounds=2",  # round 1 with everyone, round 2 a trial
            f'strategy.trial_pace="{pace}"',
            "data.max_samples=300",  # larger clients, so that a deeper candidate is slower
            "cost.upload_mb_per_s=1000",  # compute, not the links, decides the clients' times
            "cost.download_mb_per_s=1000",
        )
        sent: list = []
        transport = InProcessTransport(cfg)
        train = transport.train
        transport.train = lambda tasks, sent=sent, train=train: sent.append(tasks) or train(tasks)
        make_run(cfg, client_data(cfg), transport, tmp_path / pace, False).run()
        rows = list(csv.DictReader(open(tmp_path / pace / "rounds.csv")))
        first_trial[pace] = {
            r["group"]: float(r["round_time_s"]) for r in rows if r["round"] == "2"
        }
        draws[pace] = sorted(t.partition_id for t in sent[1])
        keep_spec = min((t.spec for t in sent[1]), key=lambda s: (s.depth, s.width))
        caps = {t.partition_id: t.max_steps for t in sent[1]}
        if pace == "keep":
            assert all(caps[t.partition_id] == 0 for t in sent[1] if t.spec == keep_spec)
            assert any(caps.values())  # some candidate client could not finish in keep's time
        else:
            assert not any(caps.values())
    assert draws["slowest"] == draws["keep"] == draws["place"]
    assert first_trial["keep"]["keep"] == first_trial["slowest"]["keep"]
    assert first_trial["slowest"]["deeper"] > first_trial["slowest"]["keep"]
    assert first_trial["keep"]["deeper"] < first_trial["slowest"]["deeper"]


@pytest.mark.parametrize("judge", ["shared", "groups"])
def test_trial_judge_decides_whose_trunk_a_candidate_carries(tiny_model_dir, tmp_path, judge):
    """shared: every candidate's copy of keep's tensors is the trunk averaged over all groups
    (so it equals keep's); groups: a candidate keeps its own group's average, the upper layers
    that trained beside its new capacity. keep, the served model, has the shared trunk."""
    from autofednlp.client.worker import client_data
    from autofednlp.server import make_run
    from autofednlp.server.inprocess import InProcessTransport

    cfg = _cfg(
        tiny_model_dir,
        tmp_path,
        "federation.rounds=2",
        "strategy.trial_rounds=1",
        f'strategy.trial_judge="{judge}"',
    )
    run = make_run(cfg, client_data(cfg), InProcessTransport(cfg), tmp_path / judge, False)
    seen = {}
    step = run.step_trial_groups

    def capture(server_round, groups, results, trunk, updated, share=True):
        step(server_round, groups, results, trunk, updated, share)
        seen.update({g.name: {k: v.clone() for k, v in g.state.items()} for g in groups})

    run.step_trial_groups = capture
    run.run()
    keep = seen.pop("keep")
    assert seen  # at least one candidate
    for state in seen.values():
        same = [
            torch.equal(state[k][tuple(slice(0, n) for n in v.shape)], v) for k, v in keep.items()
        ]
        assert all(same) if judge == "shared" else not all(same)


def test_a_time_budget_ends_trials_and_rounds_alike(tiny_model_dir, tmp_path):
    """No round of the current configuration or of a trial starts after the budget."""
    from autofednlp.client.worker import client_data
    from autofednlp.server import make_run
    from autofednlp.server.inprocess import InProcessTransport

    cfg = _cfg(tiny_model_dir, tmp_path)
    make_run(cfg, client_data(cfg), InProcessTransport(cfg), tmp_path / "a", False).run()
    rows = list(csv.DictReader(open(tmp_path / "a" / "rounds.csv")))
    ends = {}
    for r in rows:
        ends[int(r["round"])] = float(r["sim_time_s"])
    # a budget inside the first trial (rounds 2-3): its second round does not start
    assert rows[1]["trial"] == "1" and ends[3] > ends[2] > ends[1]
    budget = (ends[1] + ends[2]) / 2
    cfg = _cfg(
        tiny_model_dir, tmp_path, "federation.rounds=50", f"federation.time_budget_s={budget}"
    )
    summary = make_run(cfg, client_data(cfg), InProcessTransport(cfg), tmp_path / "b", False).run()
    cut = list(csv.DictReader(open(tmp_path / "b" / "rounds.csv")))
    assert sorted({int(r["round"]) for r in cut}) == [1, 2]
    assert summary["ended_by"] == "time_budget" and summary["trials"] == 1
    assert summary["trajectory"][0]["rounds"] == 1  # the trial was decided on what it had


def test_with_wait_time_trials_take_a_bounded_share_of_simulated_time():
    """A trial that took 0.5 s, lost by every candidate: the next one waits for the rounds
    rule and for scale (2) x 0.5 s of simulated time after it, however cheap rounds are."""
    stall = StallDetector(patience=1, min_delta=0.005, best=0.9)
    stall.observe(0.9)  # stalled: the rounds rule alone would call a trial now
    plain, timed = TrialSchedule(0, 2.0), TrialSchedule(0, 2.0, wait_time=True)
    for schedule in (plain, timed):
        schedule.after_trial(False, start_s=1.0, end_s=1.5)
    stall.since_gain = 2  # past patience x scale
    assert plain.due(0, stall, now_s=1.6)
    assert not timed.due(0, stall, now_s=1.6) and not timed.due(0, stall, now_s=2.49)
    assert timed.due(0, stall, now_s=2.5)
    restored = TrialSchedule(0, 2.0, wait_time=True)
    restored.restore(timed.state())
    assert restored.state() == {"scale": 2.0, "last_cost_s": 0.5, "last_end_s": 1.5}
    assert not restored.due(0, stall, now_s=2.49) and restored.due(0, stall, now_s=2.5)


def _lent_run(tiny_model_dir, tmp_path, name, *extra):
    """A run whose trials lend 2 probe clients (`extra`: the pace and the rest): (run,
    summary, rows)."""
    from autofednlp.client.worker import client_data
    from autofednlp.server import make_run
    from autofednlp.server.inprocess import InProcessTransport

    cfg = _cfg(
        tiny_model_dir,
        tmp_path,
        "strategy.trial_probes=2",
        # each mechanism alone: the default policy's other parts off (tests turn them on)
        "federation.served_ema=0",
        "strategy.probes_serve=false",
        "strategy.depth_step=1",
        'strategy.shadow_base="own"',
        "strategy.shadow_control=false",
        "strategy.shadow_warm_gate=false",
        *extra,
    )
    run = make_run(cfg, client_data(cfg), InProcessTransport(cfg), tmp_path / name, False)
    summary = run.run()
    return run, summary, list(csv.DictReader(open(tmp_path / name / "rounds.csv")))


def _background_run(tiny_model_dir, tmp_path, name, *extra):
    _, summary, rows = _lent_run(
        tiny_model_dir,
        tmp_path,
        name,
        "federation.rounds=9",
        'strategy.trial_pace="background"',
        "strategy.early_decision=false",
        *extra,
    )
    return summary, rows


def test_background_trials_pair_candidates_on_the_same_probes_beside_served_rounds(
    tiny_model_dir, tmp_path
):
    """trial_pace = "background": every round serves a model trained by the clients the probes
    leave (6 - 2); the probes train keep and each candidate (the same clients, paired); their
    results count only once the clock has passed the probe round's start plus the groups'
    round times; the clock is the served rounds' alone."""
    summary, rows = _background_run(tiny_model_dir, tmp_path, "bg")
    served = [r for r in rows if r["served"] == "True" and r["group"] != "adopted"]
    assert [int(r["round"]) for r in served] == list(range(1, 10))  # one served model a round
    assert sum(float(r["round_time_s"]) for r in served) == pytest.approx(summary["sim_time_s"])
    in_trial = [r for r in served if r["trial"]]
    assert in_trial and all(len(r["clients"].split()) == 4 for r in in_trial)
    ends = {int(r["round"]): float(r["sim_time_s"]) for r in served}
    served_clients = {int(r["round"]): set(r["clients"].split()) for r in served}
    start, probe_rounds = None, []  # the served round in which the pending probe round began
    for r in rows:
        if r["served"] == "True":
            if r["trial"] and start is None:
                start = int(r["round"])
            continue
        if not probe_rounds or probe_rounds[-1][0] != r["round"]:
            probe_rounds.append((r["round"], start, []))
        probe_rounds[-1][2].append(r)
        start = None
    assert probe_rounds
    for rnd, began, group_rows in probe_rounds:
        assert {r["group"] for r in group_rows} >= {"keep_probe", "deeper"}
        assert len({r["clients"] for r in group_rows}) == 1  # paired: the same two clients
        probe = set(group_rows[0]["clients"].split())
        assert len(probe) == 2
        assert float(group_rows[0]["sim_time_s"]) == ends[int(rnd)]
        took = sum(float(r["round_time_s"]) for r in group_rows)
        assert ends[int(rnd)] >= ends.get(began - 1, 0.0) + took - 1e-9
        # the served rounds before it: not yet past, and without the busy probe clients
        assert int(rnd) == began or ends[int(rnd) - 1] < ends.get(began - 1, 0.0) + took
        assert all(not probe & served_clients[k] for k in range(began, int(rnd) + 1))
    for t in summary["trajectory"]:
        assert t["probes"] == 2 and t["probe_rounds"] <= 2
        assert set(t["extra_s"]) == set(t["evidence"]) and min(t["extra_s"].values()) >= 0
        assert t["served_loss_rate"] >= 0 and t["served_loss_rate_se"] >= 0
        assert set(t["evidence"]) == set(t["groups"]) - {"keep"}


def test_steady_round_time_and_the_served_loss_rate(tiny_model_dir, tmp_path):
    """A candidate pays for the time its rounds cost beyond keep's: the server's estimate of
    a round once caches are filled (its slowest client; a fill is paid once), priced at the
    rate the served model's validation loss has lately been falling (never negative)."""
    from autofednlp.client.worker import client_data
    from autofednlp.server import make_run
    from autofednlp.server.autofed import Group
    from autofednlp.server.inprocess import InProcessTransport

    cfg = _cfg(tiny_model_dir, tmp_path)
    run = make_run(cfg, client_data(cfg), InProcessTransport(cfg), tmp_path / "q", False)
    keep, deeper = Group("keep", TuneSpec(B, 1, 8), {}), Group("deeper", TuneSpec(B, 2, 8), {})
    # (samples, full steps, s per step, s of fill per step, s of transfer)
    est = {(0, 1): (8, 2, 0.5, 9.0, 1.0), (1, 1): (8, 4, 0.5, 9.0, 1.0)}  # keep: 2 s, 3 s
    est.update({(0, 2): (8, 2, 2.0, 9.0, 2.0), (1, 2): (8, 4, 2.0, 9.0, 2.0)})  # 6 s, 10 s
    run._step_seconds = lambda c, spec, state: est[(c, spec.depth)]
    assert run.steady_round_s([0, 1], keep) == 3.0 and run.steady_round_s([0, 1], deeper) == 10.0
    served = [(1.0, 2.0), (2.0, 1.5), (3.0, 1.0), (4.0, 0.5)]  # falls 0.5 a second
    run.recorder.rows = [{"sim_time_s": t, "val_loss": v, "served": True} for t, v in served]
    run.recorder.rows.insert(2, {"sim_time_s": 2.5, "val_loss": 9.0, "served": False})
    assert run.served_loss_trend(4)[0] == pytest.approx(0.5)  # a probe's reading does not count
    assert run.served_loss_trend(2)[0] == pytest.approx(0.5)
    run.recorder.rows = [{"sim_time_s": t, "val_loss": 3 - v, "served": "True"} for t, v in served]
    assert run.served_loss_trend(4)[0] == 0.0  # rising: nothing forgone
    assert run.served_loss_trend(1)[0] == 0.0  # one reading has no slope
    noisy = [(1.0, 1.0), (2.0, 0.6), (3.0, 1.0), (4.0, 0.6)]  # slope -0.08, squared residuals 0.128
    run.recorder.rows = [{"sim_time_s": t, "val_loss": v, "served": True} for t, v in noisy]
    rate, stderr = run.served_loss_trend(4)
    assert rate == pytest.approx(0.08) and stderr == pytest.approx(math.sqrt(0.128 / 2 / 5))
    assert run.served_loss_trend(4)[1] > rate / 1.64  # within the noise: a plateau


def test_a_plateau_is_remembered_until_the_served_loss_falls_below_it(tiny_model_dir, tmp_path):
    """A plateau is a flat slope of the served loss, or, once one was seen, a level no lower
    than it was then: the served model reads worse while lent to a plateau trial's probes and
    then recovers, a falling slope that is no progress. A level clearly below the plateau's,
    still falling, ends it."""
    from autofednlp.client.worker import client_data
    from autofednlp.server import make_run
    from autofednlp.server.inprocess import InProcessTransport

    cfg = _cfg(tiny_model_dir, tmp_path)  # confidence_z 1.64
    run = make_run(cfg, client_data(cfg), InProcessTransport(cfg), tmp_path / "q", False)

    def served(*losses):
        run.recorder.rows = [
            {"sim_time_s": float(t), "val_loss": v, "served": True} for t, v in enumerate(losses)
        ]

    served(0.6, 0.5, 0.6, 0.5)  # flat within its noise
    assert run.served_loss_level(4) == pytest.approx((0.55, math.sqrt(0.01 / 3 / 4)))
    assert run._plateau(4) == "slope" and run._plateau_ref == pytest.approx((0.55, 0.0288675))
    served(0.6, 0.5, 0.6, 0.5, 0.8, 0.7, 0.6, 0.55)  # recovering from a plateau trial
    assert run.served_loss_trend(4)[0] > 1.64 * run.served_loss_trend(4)[1]  # the slope falls
    assert run._plateau(4) == "level" and run._plateau_ref == pytest.approx((0.55, 0.0288675))
    served(0.6, 0.5, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)  # below the plateau and falling: progress
    assert run._plateau(4) is None and run._plateau_ref is None
    served(0.8, 0.7, 0.6, 0.5)  # no plateau seen before, falling
    assert run._plateau(4) is None


def test_the_plateau_gate_reads_only_the_current_configurations_served_readings(
    tiny_model_dir, tmp_path
):
    """`trial_gate = "plateau"`: settled once the configuration served now has 2 x patience
    readings of its own whose validation loss no longer clearly falls. Readings of the
    configuration before a growth and probes' readings do not count."""
    from autofednlp.client.worker import client_data
    from autofednlp.server import make_run
    from autofednlp.server.inprocess import InProcessTransport

    cfg = _cfg(tiny_model_dir, tmp_path)  # confidence_z 1.64
    run = make_run(cfg, client_data(cfg), InProcessTransport(cfg), tmp_path / "q", False)
    old, new = TuneSpec(B, 1, 8), TuneSpec(B, 3, 8)
    run.spec = new
    flat_old = [(old, v) for v in (0.6, 0.5, 0.6, 0.5, 0.6, 0.5)]

    def served(*readings):
        run.recorder.rows = [
            {"sim_time_s": float(t), "val_loss": v, "served": True, "config": spec.label()}
            for t, (spec, v) in enumerate(readings)
        ]

    served(*flat_old, *[(new, v) for v in (0.5, 0.6, 0.5, 0.6)])
    assert run._plateau(6) == "slope"  # all served readings together are flat
    assert not run._settled(6)  # but the new configuration has 4 readings of its own
    served(*flat_old, *[(new, v) for v in (0.55, 0.5, 0.45, 0.42, 0.4, 0.38)])
    assert not run._settled(6)  # it still climbs
    served(*flat_old, *[(new, v) for v in (0.5, 0.45, 0.5, 0.45, 0.5, 0.45)])
    assert run._settled(6)
    run.recorder.rows.insert(9, {"sim_time_s": 8.5, "val_loss": 9.0, "served": False,
                                 "config": new.label()})  # fmt: skip
    assert run._settled(6)  # a probe's reading is not the served model's
    run.spec = old  # the served configuration's own run of readings is the tail only
    assert not run._settled(6)


def test_with_the_plateau_gate_a_stall_starts_a_trial_only_once_settled(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Every reading is a stall here (patience 1, min_delta 1): without the gate a trial
    starts after the first round; with it, only once `_settled` says so, and the served model
    trains with every client until then."""
    from autofednlp.server.plateau import PlateauTrials

    asked = []
    real = PlateauTrials._settled

    def spy(self, window):
        asked.append((self.clock.time_s, real(self, window)))
        return len(asked) > 3  # refused three times

    monkeypatch.setattr(PlateauTrials, "_settled", spy)
    _, summary, rows = _lent_run(
        tiny_model_dir,
        tmp_path,
        "gated",
        "federation.rounds=6",
        'strategy.trial_pace="background"',
        'strategy.trial_gate="plateau"',
    )
    assert len(asked) > 3 and summary["trajectory"]

    def served_before_the_first_trial(rows):
        first = next(i for i, r in enumerate(rows) if r["trial"])
        return [len(r["clients"].split()) for r in rows[:first]]

    assert served_before_the_first_trial(rows) == [6, 6, 6, 6]  # three refusals, then a trial
    consulted = len(asked)
    _, _, ungated = _lent_run(
        tiny_model_dir, tmp_path, "ungated", "federation.rounds=3",
        'strategy.trial_pace="background"',
    )  # fmt: skip
    assert len(asked) == consulted  # the default gate does not ask
    assert served_before_the_first_trial(ungated) == [6]


@pytest.mark.parametrize("gain, probe_rounds", [(-1.0, 1), (-0.1, 2)])
def test_a_background_trial_every_candidate_clearly_loses_ends_at_the_interim_look(
    tiny_model_dir, tmp_path, monkeypatch, gain, probe_rounds
):
    """Futility: at the interim look a candidate worse by twice the bar (here 2 x 1.64 x 0.1)
    ends the trial, keep winning; one only a little worse gets the trial's rounds."""
    import autofednlp.server.robust as robust
    from autofednlp.server.policies import PairedEvidence

    monkeypatch.setattr(
        robust, "paired_evidence", lambda name, *a: PairedEvidence(name, gain, 0.1, 0.5, 0.6)
    )
    summary, _ = _background_run(
        tiny_model_dir, tmp_path, "f", "strategy.early_decision=true", "federation.rounds=40"
    )
    first = summary["trajectory"][0]
    assert first["winner"] == "keep" and first["probe_rounds"] == probe_rounds
    assert first["decided_early"] == (probe_rounds == 1)


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_a_trial_at_a_plateau_gives_the_candidates_every_client(
    tiny_model_dir, tmp_path, monkeypatch, rate
):
    """plateau_rounds: a background trial that starts while the served loss no longer falls
    (rate 0) has every client of a round train keep (the served model's round) and every
    candidate (here deeper and wider) for up to plateau_rounds rounds, each round as long as
    its tasks together; one that starts while it still falls is as any other (2 probes
    beside 4 served clients, trial_rounds)."""
    from autofednlp.server.robust import RobustAutoFedRun

    trend = (rate, 0.1)  # rate 0.5 is 5 standard errors: still falling
    monkeypatch.setattr(RobustAutoFedRun, "served_loss_trend", lambda self, last: trend)
    summary, rows = _background_run(
        tiny_model_dir, tmp_path, "p", "strategy.plateau_rounds=3", "federation.rounds=18"
    )
    plateau = rate == 0.0
    trials = summary["trajectory"]
    assert trials and all(t["plateau"] == plateau for t in trials)
    assert all(t["probes"] == (6 if plateau else 2) for t in trials)
    assert max(t["probe_rounds"] for t in trials) == (3 if plateau else 2)
    served = [r for r in rows if r["served"] == "True" and r["trial"] and r["group"] != "adopted"]
    probes = [r for r in rows if r["served"] != "True"]
    assert probes and all(len(r["clients"].split()) == (6 if plateau else 2) for r in probes)
    if not plateau:
        assert served and all(len(r["clients"].split()) == 4 for r in served)
        return
    assert not any(r["group"] == "keep_probe" for r in rows)
    by_round: dict[int, list] = {}
    for r in rows:
        if r["trial"] and r["group"] != "adopted":
            by_round.setdefault(int(r["round"]), []).append(r)
    previous = {int(r["round"]): float(r["sim_time_s"]) for r in rows}
    for rnd, group_rows in by_round.items():
        # keep (served) and each candidate, on the same 6 clients
        assert sorted(r["group"] for r in group_rows) == ["deeper", "keep", "wider"]
        assert len({r["clients"] for r in group_rows}) == 1
        assert [r["served"] for r in group_rows if r["group"] == "keep"] == ["True"]
        took = sum(float(r["round_time_s"]) for r in group_rows)
        assert float(group_rows[0]["sim_time_s"]) - previous[rnd - 1] == pytest.approx(took)
