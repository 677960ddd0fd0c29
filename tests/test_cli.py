"""The command line as a user drives it: run, report, predict, export, profile, errors."""

import json

import pytest
import torch
from small_run import small_overrides

from autofednlp.cli import main


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    args = [*small_overrides(tiny_model_dir), "tune.depth=1", "tune.width=8"]
    run_dir = out / "run"
    sets = [x for a in args for x in ("--set", a)]
    assert main(["run", *sets, "--run-dir", str(run_dir), "--progress", "quiet"]) == 0
    return run_dir


def test_json_progress_is_one_object_per_round(tiny_model_dir, tmp_path, capsys):
    sets = small_overrides(tiny_model_dir)
    argv = ["run", *[x for s in sets for x in ("--set", s)], "--run-dir", str(tmp_path / "r")]
    assert main([*argv, "--progress", "json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["round"] for x in lines[:-1]] == [1, 2]
    assert "val_accuracy" in lines[0] and "summary" in lines[-1]


def test_report_writes_plots_and_their_data(finished_run, tmp_path, capsys):
    assert main(["report", str(finished_run), str(finished_run), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "time to target" in out and "run" in out
    for name in ("accuracy_vs_time.png", "accuracy_vs_time.csv", "traffic_energy.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "accuracy_vs_time.png").read_bytes()[:4] == b"\x89PNG"


def test_trajectory_starts_from_the_runs_own_configuration():
    from autofednlp.report.plots import trajectory_steps

    traj = [
        {"sim_time_s": 2.0, "depth": 1, "width": 8},  # trial 1: deeper won
        {"sim_time_s": 5.0, "depth": 1, "width": 16},  # trial 2: wider won
    ]
    assert trajectory_steps(traj, {"depth": 0, "width": 8}) == (
        [0.0, 2.0, 5.0],
        [0, 1, 1],
        [8, 8, 16],
    )


def test_the_summarys_upgrades_line_is_the_path_grown_from_the_start():
    from autofednlp.cli import _upgrades

    def trial(winner, config, t, start):
        return {"winner": winner, "config": config, "sim_time_s": t, "groups": {"keep": start}}

    d0, d2, d2w16 = "bottleneck(d=0,w=8)", "bottleneck(d=2,w=8)", "bottleneck(d=2,w=16)"
    grew = [trial("deeper", d2, 3.9, d0), trial("keep", d2, 6.0, d2), trial("wider", d2w16, 7, d2)]
    assert _upgrades(grew) == f"{d0} -> {d2} at 3.9 s -> {d2w16} at 7.0 s (1 of 3 trials kept)"
    assert _upgrades([trial("keep", d0, 2.0, d0)]) == f"none (1 of 1 trials kept {d0})"


def test_report_on_a_non_run_is_a_user_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_predict_uses_the_trained_model(finished_run, capsys):
    assert main(["predict", str(finished_run), "Shares fell on the stock market"]) == 0
    label, prob, text = capsys.readouterr().out.strip().split("\t")
    summary = json.loads((finished_run / "summary.json").read_text())
    assert label in summary["label_names"] and 0 < float(prob) <= 1
    assert text.startswith("Shares fell")


def test_exported_adapter_loads_with_the_adapters_library_alone(finished_run, tiny_model_dir):
    import adapters
    from transformers import AutoModel

    from autofednlp.model.export import load_run_model

    ours, _labels, _base = load_run_model(finished_run)
    plain = AutoModel.from_pretrained(tiny_model_dir)
    adapters.init(plain)
    name = plain.load_adapter(str(finished_run / "export" / "adapter"), use_safetensors=True)
    plain.set_active_adapters(name)
    plain.eval()
    ids = torch.randint(1000, 3000, (2, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        theirs = plain(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = ours.run_layers(ours.embed(ids), mask, 0, ours.num_layers)
    assert torch.allclose(theirs, hidden, atol=1e-5)
    meta = json.loads((finished_run / "export" / "autofednlp.json").read_text())
    assert meta["spec"] == {"kind": "bottleneck", "depth": 1, "width": 8}


def test_exported_model_predicts_what_predict_prints(finished_run, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    text = "Shares fell on the stock market"
    assert main(["predict", str(finished_run), text]) == 0
    label, prob, _ = capsys.readouterr().out.strip().split("\t")
    folder = str(finished_run / "export" / "model")
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)  # exported with the model
    with torch.no_grad():
        probs = model.eval()(**tokenizer([text], return_tensors="pt")).logits.softmax(-1)[0]
    assert model.config.id2label[int(probs.argmax())] == label
    assert abs(float(probs.max()) - float(prob)) < 1e-3
    card = (finished_run / "export" / "README.md").read_text()
    assert "## Results" in card and "Simulated time" in card and "MB up" in card
    assert str(finished_run.parent) not in card


def test_exported_lora_loads_with_peft_alone(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModel

    from autofednlp.model.export import load_run_model

    args = [*small_overrides(tiny_model_dir), "tune.kind=lora", "tune.depth=1", "tune.width=4"]
    args.append("federation.rounds=1")  # a later --set wins
    sets = [x for a in args for x in ("--set", a)]
    run_dir = tmp_path / "lora"
    assert main(["run", *sets, "--run-dir", str(run_dir), "--progress", "quiet"]) == 0
    ours, _labels, _base = load_run_model(run_dir)
    plain = PeftModel.from_pretrained(
        AutoModel.from_pretrained(tiny_model_dir), str(run_dir / "export" / "adapter")
    ).eval()
    ids = torch.randint(1000, 3000, (2, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        theirs = plain(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = ours.run_layers(ours.embed(ids), mask, 0, ours.num_layers)
        base = AutoModel.from_pretrained(tiny_model_dir)(input_ids=ids, attention_mask=mask)
    assert torch.allclose(theirs, hidden, atol=1e-5)
    assert not torch.allclose(theirs, base.last_hidden_state, atol=1e-4)  # it was trained


def test_predict_on_a_missing_run_is_a_user_error(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope"), "text"]) == 2
    err = capsys.readouterr().err
    assert "holds no finished run" in err and len(err.strip().splitlines()) == 1


def test_profile_measures_and_saves(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "dev.json"
    argv = ["profile", "--model", tiny_model_dir, "--seq-len", "16", "--steps", "2"]
    assert main([*argv, "--name", "lab", "--save", str(path)]) == 0
    assert "GFLOP/s" in capsys.readouterr().out
    saved = json.loads(path.read_text())
    assert saved["name"] == "lab" and saved["flops_per_s"] > 0


def test_datasets_and_devices_list_what_is_available(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "bbc_news" in out and "labels: business, entertainment, politics, sports, tech" in out
    assert main(["devices"]) == 0
    assert "jetson-tx2" in capsys.readouterr().out


def test_existing_run_dir_is_refused(finished_run, capsys):
    assert main(["run", "--run-dir", str(finished_run)]) == 2
    assert "already exists" in capsys.readouterr().err
