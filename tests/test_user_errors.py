"""User mistakes end in one line naming what to fix (no traceback, no half-written run
directory); what the data loader dropped is counted and said."""

import pytest
from small_run import small_overrides

from autofednlp.cli import main


def _sets(tiny_model_dir, *extra):
    return [x for a in [*small_overrides(tiny_model_dir), *extra] for x in ("--set", a)]


def _one_error_line(capfd, *fragments):
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autofednlp: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    for f in fragments:
        assert f in lines[0], lines[0]


def test_max_length_beyond_the_models_positions(tiny_model_dir, tmp_path, capfd):
    argv = ["run", *_sets(tiny_model_dir, "data.max_length=200"), "--quiet"]
    assert main([*argv, "--run-dir", str(tmp_path / "r")]) == 2
    _one_error_line(capfd, "data.max_length = 200: the model reads at most 128 tokens")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("where", ["output_dir", "--run-dir", "parent of --run-dir"])
def test_a_file_where_a_directory_is_expected(tiny_model_dir, tmp_path, capfd, where):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    if where == "output_dir":
        argv = ["run", *_sets(tiny_model_dir, f'output_dir="{blocker}"')]
    elif where == "--run-dir":
        argv = ["run", *_sets(tiny_model_dir), "--run-dir", str(blocker)]
    else:
        argv = ["run", *_sets(tiny_model_dir), "--run-dir", str(blocker / "run")]
    assert main([*argv, "--quiet"]) == 2
    _one_error_line(capfd, "is a file, not a directory")


def test_report_out_naming_a_file(tmp_path, capfd):
    out = tmp_path / "plots"
    out.write_text("x")
    assert main(["report", str(tmp_path), "--out", str(out)]) == 2
    _one_error_line(capfd, "--out = ", "is a file, not a directory")


def test_a_directory_as_config_file_or_dataset(tiny_model_dir, tmp_path, capfd):
    assert main(["run", str(tmp_path), "--quiet"]) == 2
    _one_error_line(capfd, "is a directory, not a TOML file")
    argv = ["run", *_sets(tiny_model_dir, f'data.dataset="{tmp_path}"'), "--quiet"]
    assert main(argv) == 2
    _one_error_line(capfd, "data.dataset = ", "a directory; name a file in it")


def test_infinite_alpha_is_not_a_number_to_grow(capfd):
    assert main(["run", "--set", "data.alpha=inf", "--quiet"]) == 2
    _one_error_line(capfd, "data.alpha = inf: expected a finite number")


@pytest.mark.parametrize(
    "name, content",
    [("bad.json", '{"text": "a", "label": '), ("bad.csv", 'text,label\n"unclosed,1\n')],
)
def test_a_broken_data_file_is_one_line_without_datasets_noise(
    tiny_model_dir, tmp_path, capfd, name, content
):
    path = tmp_path / name
    path.write_text(content)
    argv = ["run", *_sets(tiny_model_dir, f'data.dataset="{path}"'), "--quiet"]
    assert main([*argv, "--run-dir", str(tmp_path / "r")]) == 2
    _one_error_line(capfd, "could not be read as")
    assert not (tmp_path / "r").exists()


def _labelled_csv(path, rows):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)


def test_dropped_rows_are_counted_and_reported(tiny_model_dir, tmp_path, capfd):
    from autofednlp.config import DataConfig
    from autofednlp.data.sources import load_text_dataset

    rows = [(f"text number {i}", "ab"[i % 2]) for i in range(40)]
    rows += [("no label here", ""), ("nor here", ""), ("", "a"), ("   ", "b")]
    path = tmp_path / "d.csv"
    _labelled_csv(path, rows)
    ds = load_text_dataset(DataConfig(dataset=str(path)), seed=0)
    assert len(ds) == 40 and "" not in ds.texts and ds.rows_read == 44
    assert ds.dropped == {"without a label": 2, "with an empty text": 2}

    sets = _sets(tiny_model_dir, f'data.dataset="{path}"', "data.max_samples=0")
    assert main(["run", *sets, "--run-dir", str(tmp_path / "r"), "--progress", "lines"]) == 0
    err = capfd.readouterr().err
    assert "data: 44 rows read" in err
    assert "warning: data: 4 rows dropped (2 without a label, 2 with an empty text)" in err
    assert "majority 0.500" in err  # the yardstick beside each accuracy reading


def test_progress_says_what_happens_before_round_1(tiny_model_dir, tmp_path, capfd):
    # a max_length no other test uses: the tokenized data is not in the session's cache yet
    sets = _sets(tiny_model_dir, "federation.target_accuracy=0.3", "data.max_length=31")
    assert main(["run", *sets, "--run-dir", str(tmp_path / "r")]) == 0
    err = capfd.readouterr().err.splitlines()
    first_round = next(i for i, line in enumerate(err) if line.startswith("round   1/2"))
    before = "\n".join(err[:first_round])
    assert err[0].startswith("autofednlp: experiment 'default' (fixed, 2 rounds): starting")
    for stage in ("loading model", "tokenizing 120 samples (max 31 tokens) [####", "data: "):
        assert stage in before, before
    assert "starting the in-process engine" in before
    assert "round 1: 3 clients training" in before
    # the target is at the majority-class accuracy of this split: said before it is used
    assert "yardstick: always predicting the most frequent class scores 0.250" in before
    assert "warning: federation.target_accuracy = 0.3 is near the majority-class" in before


def test_a_cache_hit_says_so_instead_of_a_tokenizing_bar(tiny_model_dir, tmp_path, capfd):
    from autofednlp.config import DataConfig
    from autofednlp.data.federated import clear_memory_cache, load_federated_data
    from autofednlp.report import progress

    cfg = DataConfig(max_samples=60, max_length=30, num_clients=2)
    old = progress.set_mode("lines")
    try:
        load_federated_data(cfg, tiny_model_dir, 0, cache_dir=tmp_path)
        assert "tokenizing 60 samples (max 30 tokens)" in capfd.readouterr().err
        clear_memory_cache()
        load_federated_data(cfg, tiny_model_dir, 0, cache_dir=tmp_path)
        assert "tokenized data read from the cache" in capfd.readouterr().err
    finally:
        progress.set_mode(old)


@pytest.mark.parametrize(
    "setting,fragment",
    [
        ('aggregation.name="fedsgd"', "aggregation.name = 'fedsgd': must be one of fedavg"),
        ("aggregation.beta_2=1.0", "aggregation.beta_2 = 1.0: must be < 1"),
        ("aggregation.eta=0", "aggregation.eta = 0"),
        ('privacy.mode="server"', "privacy.mode = 'server': must be one of off, central, local"),
        ("privacy.clip_norm=0", "privacy.clip_norm = 0"),
        ("privacy.noise_multiplier=-1", "privacy.noise_multiplier = -1"),
        ("privacy.delta=1.5", "privacy.delta = 1.5: must be in (0, 1)"),
    ],
)
def test_aggregation_and_privacy_mistakes(tiny_model_dir, capfd, setting, fragment):
    assert main(["run", *_sets(tiny_model_dir, setting), "--quiet"]) == 2
    _one_error_line(capfd, fragment)
