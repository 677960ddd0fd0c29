"""benchmarks/time_to_accuracy.py's analysis: the numbers in benchmarks/RESULTS.md come from it."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_path = Path(__file__).resolve().parent.parent / "benchmarks" / "time_to_accuracy.py"
_spec = importlib.util.spec_from_file_location("time_to_accuracy", _path)
tta = importlib.util.module_from_spec(_spec)
sys.modules["time_to_accuracy"] = tta  # dataclasses look their module up there
_spec.loader.exec_module(tta)


def _run(method, family, readings, served=None):
    """A run's rows: one reading per second of simulated time."""
    rows = [
        {"round": t, "sim_time_s": float(t), "val_accuracy": acc, "served": True}
        for t, acc in enumerate(readings, start=1)
    ]
    for t, acc in served or []:  # a losing trial group's reading at time t: never served
        rows.append({"round": t, "sim_time_s": float(t), "val_accuracy": acc, "served": False})
    return {
        "setting": "a1-100",
        "seed": 0,
        "method": method,
        "family": family,
        "rows": rows,
        "partial": False,
    }


def _cell(analysis, method, fraction):
    return next(a for a in analysis if a["method"] == method and a["fraction"] == fraction)


def test_targets_times_and_ratios():
    results = [
        _run("full", "full", [0.2, 0.5, 0.7, 0.8, 0.8]),
        _run("d1", "fixed", [0.5, 0.9, 0.6, 0.9, 0.95, 1.0]),  # 0.9 first held at t=4..5
        _run("d2", "fixed", [0.6, 0.9, 0.92, 0.5, 0.5, 0.5]),
        # its 0.99 at t=1 is a losing group's: it neither sets the best nor counts
        _run("auto", "autofed", [0.7, 0.85, 0.9, 0.9, 0.9, 0.9], served=[(1, 0.99)]),
    ]
    analysis = tta.analyse(results, hold=2, column=None, fractions=(0.9,))
    assert _cell(analysis, "d1", 0.9)["target"] == pytest.approx(0.9)  # 90% of d1's 1.0
    assert _cell(analysis, "d1", 0.9)["tta_s"] == 4.0  # t=2 held only once
    assert _cell(analysis, "d2", 0.9)["tta_s"] == 2.0
    auto = _cell(analysis, "auto", 0.9)
    assert auto["tta_s"] == 3.0
    assert auto["best_fixed"] == "d2" and auto["vs_best_fixed"] == pytest.approx(1.5)
    assert _cell(analysis, "full", 0.9)["tta_s"] is None


def test_the_grid_without_the_cache_gets_its_own_ratio():
    """With the cache the strict comparison (each family's fastest run is its own reference);
    a run without the cache never becomes the cache grid's best, and the second summary table
    says where no configuration without the cache reached a target."""
    results = [
        _run("d1", "fixed", [0.5, 0.9, 0.9, 1.0, 1.0]),
        _run("d1 nc", "fixed-nocache", [0.9, 0.9, 0.5, 0.5, 0.5]),  # fastest of all, no cache
        _run("auto", "autofed", [0.5, 0.5, 0.9, 0.9, 0.9]),
    ]
    analysis = tta.analyse(results, hold=2, column=None, fractions=(0.9, 0.98))
    auto = _cell(analysis, "auto", 0.9)
    assert (auto["best_fixed"], auto["vs_best_fixed"]) == ("d1", pytest.approx(1.5))
    assert auto["best_fixed_nocache"] == "d1 nc"
    assert auto["vs_best_fixed_nocache"] == pytest.approx(3.0)
    assert _cell(analysis, "auto", 0.98)["vs_best_fixed_nocache"] is None
    table = tta.markdown(analysis, results)
    assert "| a1-100 | 90% | **3.00** | s0: 3.00 / 1.00 (d1 nc) |" in table
    assert "| a1-100 | 90% | **1.50** | s0: 3.00 / 2.00 (d1) |" in table
    assert "best fixed without the cache" in table


def test_targets_from_full_fine_tuning_and_speedup():
    results = [
        _run("full", "full", [0.2, 0.5, 0.7, 0.8, 0.8]),
        _run("d1", "fixed", [0.5, 0.9, 0.9]),
    ]
    analysis = tta.analyse(results, hold=2, column=None, targets_from="full", fractions=(0.5,))
    cell = _cell(analysis, "d1", 0.5)
    assert cell["target"] == pytest.approx(0.4)  # half of full's 0.8, not of d1's 0.9
    assert cell["tta_s"] == 1.0 and _cell(analysis, "full", 0.5)["tta_s"] == 2.0
    assert cell["speedup_vs_full"] == pytest.approx(2.0)
    table = tta.markdown(analysis, results)
    assert "| d1 | 1.00 2x /1.00 |" in table


def test_the_tweets_setting_derives_its_csv_and_loads_as_classification(tmp_path):
    """The held-out check's data: every bundled tweet, labelled by whether any word is tagged;
    the run loads it as a two-class classification from the written file."""
    import csv

    from autofednlp.config import load_config
    from autofednlp.data.sources import load_twitter_ner

    overrides = tta.setting_overrides("tweets-a1-30", tmp_path)
    path = tmp_path / "data" / "tweets_entity.csv"
    assert f'data.dataset="{path.resolve()}"' in overrides
    rows = list(csv.DictReader(open(path)))
    ner = load_twitter_ner()
    assert len(rows) == len(ner.tokens)
    tagged = [any(ner.label_names[t] != "O" for t in tags) for tags in ner.tags]
    assert [r["label"] == "entity" for r in rows] == tagged
    assert 0 < sum(tagged) < len(rows)
    assert rows[0]["text"] == " ".join(ner.tokens[0])
    before = path.stat().st_mtime_ns
    tta.setting_overrides("tweets-a1-30", tmp_path)  # the same file is left as it was
    assert path.stat().st_mtime_ns == before
    cfg = load_config(None, overrides)
    assert cfg.data.dataset == str(path.resolve()) and cfg.data.task == "auto"


def test_a_run_that_ended_before_anyone_reached_a_target_is_marked_censored():
    """Every method gets the same round cap, not the same simulated time: a run whose cheap
    rounds ended before any method reached the target never had the chance (censored); one
    that ran past that time and still missed it simply did not reach it."""
    results = [
        _run("adapters d=2 w=8", "fixed", [0.5, 0.7, 0.8, 0.9, 0.95, 0.96]),  # 0.95 at t=5
        _run("AutoFedNLP + cache", "autofed", [0.6, 0.8, 0.85]),  # ends at t=3
        _run("adapters d=0 w=8", "fixed", [0.6, 0.8, 0.85, 0.86, 0.86, 0.86, 0.86]),  # t=7
    ]
    analysis = tta.analyse(results, hold=1, column="val_accuracy", fractions=(0.98,))
    auto = _cell(analysis, "AutoFedNLP + cache", 0.98)
    head = _cell(analysis, "adapters d=0 w=8", 0.98)
    assert auto["tta_s"] is None and auto["censored"] and auto["end_s"] == 3.0
    assert head["tta_s"] is None and not head["censored"]  # it ran to t=7 and missed
    assert not _cell(analysis, "adapters d=2 w=8", 0.98)["censored"]
    text = tta.markdown(analysis, results)
    assert "seed 0 (censored)" in text
    assert "not reached, censored (run ended at 3.00 s)" in text
    assert "- (ended 3.00)" in text


def test_with_a_time_budget_readings_past_it_do_not_count_for_any_method():
    """--budget time: the costliest fixed configuration runs first and sets the budget; a
    round that started before the budget and ended after it counts for no method."""
    ref = _run("adapters d=2 w=8", "fixed", [0.5, 0.7, 0.8, 0.9])  # ends at t=4: the budget
    ref["budget_s"] = None
    auto = _run("AutoFedNLP + cache", "autofed", [0.6, 0.8, 0.85, 0.85, 0.95])  # t=5: past it
    head = _run("adapters d=0 w=8", "fixed", [0.6, 0.8, 0.9, 0.9])
    auto["budget_s"] = head["budget_s"] = 4.0
    cut = tta.within_budget([ref, auto, head])
    assert [len(r["rows"]) for r in cut] == [4, 4, 4]
    assert all(r["group_budget_s"] == 4.0 for r in cut)
    analysis = tta.analyse(cut, hold=1, column="val_accuracy", fractions=(1.0,))
    assert _cell(analysis, "AutoFedNLP + cache", 1.0)["target"] == 0.9  # not its 0.95 at t=5
    assert _cell(analysis, "adapters d=0 w=8", 1.0)["tta_s"] == 3.0
    # without budgets (--budget rounds) nothing is cut
    auto["budget_s"] = head["budget_s"] = None
    assert [len(r["rows"]) for r in tta.within_budget([ref, auto, head])] == [4, 5, 4]


def test_the_deepest_then_widest_fixed_configuration_sets_the_budget():
    todo = tta.methods(["autofed", "fixed"], [(0, 8), (2, 8), (1, 32), (2, 4)])
    ordered = tta.reference_first(todo)
    assert ordered[0].name == "adapters d=2 w=8"
    assert sorted(m.name for m in ordered) == sorted(m.name for m in todo)
    assert tta.reference_first(tta.methods(["autofed"], [])) == tta.methods(["autofed"], [])


def test_autofed_overrides_name_a_variant_and_leave_the_fixed_runs_alone():
    todo = tta.methods(["fixed", "autofed"], [(0, 8)])
    out = tta.with_autofed_overrides(todo, ["strategy.trial_every=0"])
    assert out[0] == todo[0]  # the fixed run: same name, same config, so it is reused
    assert out[1].name == "AutoFedNLP + cache [strategy.trial_every=0]"
    assert out[1].overrides[-1] == "strategy.trial_every=0"
    assert tta.slug(out[1].name) != tta.slug(todo[1].name)  # its own run directory
    assert tta.with_autofed_overrides(todo, []) == todo


def test_report_only_finds_the_autofed_variants_run_into_the_same_out(tmp_path):
    """Variants run with --autofed-set sit beside the default's run; --report-only tabulates
    them all (not the fixed runs or other families twice), against one set of targets."""
    import json

    todo = tta.methods(["fixed", "autofed"], [(0, 8)])
    variant = tta.with_autofed_overrides(todo, ["strategy.trial_pace=shadow"])[1]
    others = ["AutoFedNLP, no cache", "adapters d=0 w=8", "AutoFedNLP + cache", variant.name]
    for name in [*others, "AutoFedNLP + cache [empty]"]:
        d = tmp_path / tta.slug(name)
        d.mkdir()
        if "empty" not in name:  # a variant that wrote no row yet is left out
            row = {"round": 1, "sim_time_s": 1.0, "val_accuracy": 0.5, "served": True}
            (d / "rounds.jsonl").write_text(json.dumps(row) + "\n")
    found = tta.other_variants(tmp_path, todo, "a1-100", 0)
    assert [r["method"] for r in found] == [variant.name]  # its name read back from the slug
    assert found[0]["family"] == "autofed" and found[0]["rows"][0]["val_accuracy"] == 0.5
    assert tta.other_variants(tmp_path, [*todo, variant], "a1-100", 0) == []
    assert tta.other_variants(tmp_path / "none", todo, "a1-100", 0) == []


def test_a_variant_directory_name_reads_back_as_its_overrides():
    """A variant's name in tables and plots is the --autofed-set overrides it ran with, as the
    user typed them, not its directory's slug; keys with underscores and values with dots too."""
    sets = [
        "strategy.trial_pace=shadow",
        "strategy.shadow_base=served",
        "federation.served_ema=0.5",
        "strategy.trial_gate=plateau",
    ]
    name = tta.with_autofed_overrides(tta.methods(["autofed"], []), sets)[0].name
    base = tta.slug("AutoFedNLP + cache")
    assert tta.unslug_overrides(tta.slug(name)[len(base) + 1 :]) == ", ".join(sets)
    assert tta.unslug_overrides("no_such_key_1") == "no_such_key_1"  # left as it is


def test_a_fixed_run_is_reused_whatever_the_autofed_strategy_defaults():
    """A fixed configuration's run does not depend on AutoFedNLP's strategy settings: a new
    strategy default must not make the benchmark rerun (and first delete) every fixed run.
    An AutoFedNLP run with other strategy settings is another run."""
    from autofednlp.config import load_config

    base = ["model.name=minilm", "tune.depth=1"]
    fixed = load_config(None, [*base, "strategy.trial_every=4"])
    assert fixed.strategy.name == "fixed"
    same_fixed = load_config(None, [*base, "strategy.trial_every=0"])
    assert tta.what_runs(fixed) == tta.what_runs(same_fixed)
    moved = load_config(None, [*base, 'output_dir="/abs/runs"'])
    assert tta.what_runs(fixed) == tta.what_runs(moved)  # the run directory is --out/name
    assert tta.what_runs(fixed) != tta.what_runs(load_config(None, [*base, "seed=3"]))
    auto = [*base, "strategy.name=autofed"]
    assert tta.what_runs(load_config(None, [*auto, "strategy.trial_every=4"])) != tta.what_runs(
        load_config(None, [*auto, "strategy.trial_every=0"])
    )


def test_a_run_on_the_same_rows_under_another_path_is_reused(tmp_path):
    """A local data file counts by its content: the tweets' derived CSV is written into each
    out dir, so another out dir's identical rows must not retrain (and first delete) its runs;
    other rows are another run."""
    from autofednlp.config import load_config

    def cfg(path):
        return load_config(None, ["tune.depth=1", f'data.dataset="{path}"'])

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _user_csv(tmp_path / "a" / "tweets.csv")
    same = _user_csv(tmp_path / "b" / "tweets.csv")
    assert tta.what_runs(cfg(first)) == tta.what_runs(cfg(same))
    other = _user_csv(tmp_path / "b" / "other.csv", rows=41)
    assert tta.what_runs(cfg(first)) != tta.what_runs(cfg(other))
    bundled = load_config(None, ["tune.depth=1"])
    assert tta.what_runs(bundled).data.dataset == bundled.data.dataset  # a name, not a file


@pytest.mark.parametrize(
    "ended_by, rounds, new_cap, reused",
    [
        ("time_budget", 31, 400, True),  # the budget ended it: a higher cap runs the same
        ("rounds", 100, 400, False),  # the old cap ended it: more rounds would follow
        ("time_budget", 31, 31, False),  # the new cap would end it at its last round
        ("time_budget", 31, 30, False),  # the new cap would end it sooner
    ],
)
def test_a_run_its_time_budget_ended_is_reused_under_a_higher_round_cap(
    tmp_path, ended_by, rounds, new_cap, reused
):
    """Raising --max-rounds reruns the runs the old cap ended, and only those; any other
    setting that differs is another run."""
    from autofednlp.config import load_config

    def cfg(cap, *more):
        return load_config(
            None, ["tune.depth=1", f"federation.rounds={cap}", "federation.time_budget_s=5", *more]
        )

    summary = tmp_path / "summary.json"
    assert not tta.same_run(cfg(100), cfg(100), summary)  # not finished: never reused
    summary.write_text(json.dumps({"rounds": rounds, "ended_by": ended_by}))
    assert tta.same_run(cfg(100), cfg(100), summary)
    assert tta.same_run(cfg(100), cfg(new_cap), summary) is reused
    assert not tta.same_run(cfg(100), cfg(new_cap, "seed=3"), summary)


def _user_csv(path, rows=40):
    lines = ["body,y"] + [
        f"review {i} was {'good' if i % 2 else 'bad'},{i % 2}" for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_user_data_runs_the_chosen_partitions_on_the_file_under_its_own_names(tmp_path):
    """--data: the same alpha and clients on a user's file, in settings of their own (so their
    runs never overwrite the bundled data's), loaded with the user's column overrides."""
    from autofednlp.config import load_config

    data = _user_csv(tmp_path / "my reviews.csv")
    extra = ['data.text_column="body"', 'data.label_column="y"']
    names = tta.on_user_data(["a1-100", "a0.1-30"], str(data), extra)
    assert names == ["a1-100@my_reviews", "a0.1-30@my_reviews"]
    cfg = load_config(None, [*tta.setting_overrides(names[1], tmp_path), *extra])
    assert cfg.data.dataset == str(data.resolve())
    assert (cfg.data.alpha, cfg.data.num_clients) == (0.1, 30)
    assert "a1-100" in tta.SETTINGS and not tta.own_data("a1-100")  # the bundled one stays
    assert tta.on_user_data(["a1-100"], None, []) == ["a1-100"]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--data", "{dir}/missing.csv"], "--data: {dir}/missing.csv: no such file"),
        (["--data", "{dir}/reviews.csv"], "--data: data.text_column"),  # columns body, y
        (["--data", "{dir}/reviews.csv", "--settings", "tweets-a1-30"], "has its own data"),
        (["--settings", "a2-100"], "--settings: unknown 'a2-100'"),
        (["--methods", "fixd"], "--methods: unknown 'fixd'"),
        (["--report-only", "--seeds", "0"], "--report-only: no runs of these settings"),
    ],
)
def test_a_bad_option_or_data_file_is_one_line_and_exit_2(
    tmp_path, monkeypatch, capsys, args, says
):
    _user_csv(tmp_path / "reviews.csv")
    argv = [a.format(dir=tmp_path) for a in args]
    monkeypatch.setattr(sys, "argv", ["time_to_accuracy.py", *argv, "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        tta.main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and says.format(dir=tmp_path) in err, err
    assert not (tmp_path / "o" / "runs").exists()  # nothing ran


def test_a_partition_the_data_cannot_make_stops_the_benchmark_in_one_line(
    tmp_path, monkeypatch, capsys
):
    """40 rows (32 to train on) cannot make 100 clients: the first run says so, naming the setting,
    seed and method, and the benchmark stops with exit 2 instead of skipping every run."""
    data = _user_csv(tmp_path / "reviews.csv")
    argv = ["--data", str(data), "--settings", "a1-100", "--seeds", "0", "--methods", "fixed"]
    argv += ["--grid", "0x8", "--set", 'data.text_column="body"', "--set", 'data.label_column="y"']
    monkeypatch.setattr(sys, "argv", ["time_to_accuracy.py", *argv, "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        tta.main()
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(
        "time_to_accuracy: a1-100@reviews seed 0, adapters d=0 w=8: data.num_clients"
    )


def test_the_best_single_configuration_over_the_seeds_is_its_own_table():
    """Each seed's fastest fixed run is a minimum over noisy times: one configuration chosen
    for the setting gets a mean ratio above 1 to it when another was faster in some seed,
    and AutoFedNLP is also shown against that one configuration."""

    def seed(s, d1, d2, auto):
        runs = [_run("d1", "fixed", d1), _run("d2", "fixed", d2), _run("auto", "autofed", auto)]
        for r in runs:
            r["seed"] = s
        return runs

    results = [
        # seed 0: d1 first at 0.9 (t=2), d2 at t=4; seed 1: d2 first (t=2), d1 at t=3
        *seed(0, [0.5, 0.9, 0.9, 1.0], [0.5, 0.5, 0.5, 0.9, 0.9, 1.0], [0.9, 0.9, 0.9, 1.0]),
        *seed(1, [0.5, 0.5, 0.9, 0.9, 1.0], [0.5, 0.9, 0.9, 1.0], [0.5, 0.5, 0.5, 0.9, 0.9, 1.0]),
    ]
    analysis = tta.analyse(results, hold=2, column=None, fractions=(0.9,))
    table = tta.markdown(analysis, results)
    # d1: 2/2 and 3/2 -> mean 1.25; d2: 4/2 and 2/2 -> 1.5; auto against d1: 1/2 and 4/3
    assert "| a1-100 | 90% | d1: 1.25 | **0.92** | 0.50; 1.33 |" in table
    one_seed = tta.analyse(results[:3], hold=2, column=None, fractions=(0.9,))
    assert "best single fixed configuration" not in tta.markdown(one_seed, results[:3])


def test_each_run_s_swing_is_reported():
    """The mean absolute change between consecutive served readings over the last two
    thirds: a steady run reads 0, one that alternates by 0.1 reads 0.1."""
    results = [
        _run("steady", "fixed", [0.5, 0.9, 0.9, 0.9, 0.9, 0.9]),
        _run("swings", "fixed", [0.5, 0.9, 0.8, 0.9, 0.8, 0.9], served=[(4, 0.2)]),
    ]
    assert tta.swing(results[0]["rows"], "val_accuracy") == 0.0
    assert tta.swing(results[1]["rows"], "val_accuracy") == pytest.approx(0.1)
    analysis = tta.analyse(results, hold=2, column=None, fractions=(0.9,))
    assert "| a1-100, s0 | 0.000 | 0.100 |" in tta.markdown(analysis, results)
