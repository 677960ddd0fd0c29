"""benchmarks/warm_start.py: the head grown mid-run, and the new capacity's own learning rate."""

import importlib.util
import json
import sys
from pathlib import Path

import torch
from small_run import small_config

from autofednlp.model.kinds import TuneSpec

_path = Path(__file__).resolve().parent.parent / "benchmarks" / "warm_start.py"
_spec = importlib.util.spec_from_file_location("warm_start", _path)
ws = importlib.util.module_from_spec(_spec)
sys.modules["warm_start"] = ws
_spec.loader.exec_module(ws)


def test_the_head_grows_once_its_clock_passes_the_time_and_keeps_its_function(
    tiny_model_dir, tmp_path
):
    cfg = small_config(
        tiny_model_dir, tmp_path, "tune.depth=0", "tune.width=8", "federation.rounds=3"
    )
    from autofednlp.client.worker import client_data
    from autofednlp.server.inprocess import InProcessTransport

    grow_to = TuneSpec("bottleneck", 1, 8)
    run = ws.GrowAt(
        cfg,
        client_data(cfg),
        InProcessTransport(cfg),
        tmp_path / "grown",
        progress=False,
        grow_to=grow_to,
        grow_at_s=1e-9,  # after the first round
    )
    seen = {}
    plain_train_groups = run.train_groups

    def train_groups(server_round, groups, *args, **kwargs):
        ((spec, state, _),) = groups
        seen[server_round] = (spec, run.evaluate("validation", spec, state)[1])
        return plain_train_groups(server_round, groups, *args, **kwargs)

    run.train_groups = train_groups
    summary = run.run()
    rows = [json.loads(x) for x in (tmp_path / "grown" / "rounds.jsonl").read_text().splitlines()]
    assert [r["config"] for r in rows] == ["bottleneck(d=0,w=8)"] + ["bottleneck(d=1,w=8)"] * 2
    assert summary["grown_at_s"] == rows[0]["sim_time_s"]
    # right after the growth the model predicts as the head did after its round
    assert seen[2][0] == grow_to
    assert abs(seen[2][1] - rows[0]["val_loss"]) < 1e-5
    assert ws.NEW_CAPACITY["names"] and all("adapter" in n for n in ws.NEW_CAPACITY["names"])


def test_new_capacity_gets_its_own_learning_rate(monkeypatch):
    from autofednlp.client.train import make_optimizer
    from autofednlp.config import ClientConfig

    old, new = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.zeros(2))
    names = {id(old): "head.weight", id(new): "layer.5.adapter_up.weight"}
    monkeypatch.setitem(ws.NEW_CAPACITY, "names", frozenset({"layer.5.adapter_up.weight"}))
    monkeypatch.setitem(ws.NEW_CAPACITY, "scale", 0.1)
    opt = ws.optimizer_with_new_capacity(make_optimizer, [old, new], names, ClientConfig(), 5e-3)
    lrs = {id(g["params"][0]): g["lr"] for g in opt.param_groups}
    assert lrs == {id(old): 5e-3, id(new): 5e-3 * 0.1}
    monkeypatch.setitem(ws.NEW_CAPACITY, "scale", 1.0)  # no group of its own at scale 1
    opt = ws.optimizer_with_new_capacity(make_optimizer, [old, new], names, ClientConfig(), 5e-3)
    assert len(opt.param_groups) == 1


def test_held_best_needs_the_reading_held():
    assert ws.held_best([(1, 0.2), (2, 0.9), (3, 0.3), (4, 0.5), (5, 0.6)], 2) == 0.5
    assert ws.held_best([(1, 0.2)], 2) == 0.0
