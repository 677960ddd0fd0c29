"""Property-based tests: generated configs and files never crash the parser or the loaders;
they either load or raise a one-line ConfigError."""

import os
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autofednlp.config import ConfigError, DataConfig, apply_overrides, from_dict, load_config

KEYS = [
    "federation.rounds",
    "federation.clients_per_round",
    "data.alpha",
    "data.num_clients",
    "data.partitioner",
    "tune.depth",
    "tune.width",
    "tune.kind",
    "client.learning_rate",
    "cost.upload_mb_per_s",
    "strategy.name",
    "strategy.max_width",
    "nosuch.key",
    "data.nosuch",
]
values = st.one_of(
    st.integers(-5, 500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(string.printable, max_size=12),
    st.sampled_from(["iid", "dirichlet", "shard", "full", "bottleneck", "autofed", "lora"]),
)


def _one_line_error(fn):
    try:
        fn()
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=5))
def test_generated_overrides_load_or_fail_in_one_line(items):
    table = {}
    for key, value in items.items():
        section, name = key.split(".")
        table.setdefault(section, {})[name] = value
    _one_line_error(lambda: from_dict(table))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(string.printable, max_size=30), max_size=4))
def test_arbitrary_override_strings_never_crash(overrides):
    _one_line_error(lambda: load_config(None, overrides))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_toml_files_never_crash(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("toml") / "x.toml"
    path.write_bytes(blob)
    _one_line_error(lambda: load_config(path))


rows = st.lists(
    st.tuples(
        st.text(max_size=20),
        st.one_of(st.sampled_from(["a", "b", "c"]), st.text(max_size=3), st.none()),
    ),
    max_size=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=rows,
    kind=st.sampled_from(["csv", "jsonl", "parquet"]),
    column=st.sampled_from(["body", "text"]),
)
def test_generated_files_load_or_fail_in_one_line(tmp_path_factory, rows, kind, column):
    import pandas as pd

    from autofednlp.data.sources import load_text_dataset

    df = pd.DataFrame(rows, columns=[column, "topic"])
    path = tmp_path_factory.mktemp("data") / f"d.{kind}"
    if kind == "csv":
        df.to_csv(path, index=False)
    elif kind == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    cfg = DataConfig(dataset=str(path), text_column="body", label_column="topic")

    def load():
        ds = load_text_dataset(cfg, seed=0)
        assert len(ds.texts) == len(ds.labels) > 0
        assert len(ds.label_names) >= 2
        assert all(0 <= y < len(ds.label_names) for y in ds.labels)

    _one_line_error(load)


def test_overrides_copy_the_table():
    table = {"federation": {"rounds": 3}}
    out = apply_overrides(table, ["federation.rounds=4"])
    assert table["federation"]["rounds"] == 3 and out["federation"]["rounds"] == 4


# The CLI end to end on generated bad input: paths of the wrong kind, limits of the model,
# empty and NaN cells. Every case that is refused must be refused in one line (exit 2, no
# traceback) before anything is written; a case that is fine gets as far as the engine.

PATH_KINDS = ["missing", "file", "dir", "empty dir", "under a file"]


def _make_path(root, kind, name):
    p = root / name
    if kind == "file":
        p.write_text("x = 1\n")
    elif kind == "dir":
        p.mkdir()
        (p / "inside.txt").write_text("x")
    elif kind == "empty dir":
        p.mkdir()
    elif kind == "under a file":
        blocker = root / f"{name}-blocker"
        blocker.write_text("x")
        p = blocker / name
    return p


cells = st.one_of(
    st.none(),
    st.just(""),
    st.just("   "),
    st.just("nan"),
    st.just(float("nan")),
    st.sampled_from(["a", "b", "c"]),
    st.text(max_size=8),
)


@st.composite
def cli_cases(draw):
    return {
        # mostly well-placed paths, so that most cases reach the data and the model
        "config": draw(st.sampled_from(["none"] * 6 + PATH_KINDS)),
        "run_dir": draw(st.sampled_from(["fresh"] * 6 + PATH_KINDS)),
        "output_dir": draw(st.sampled_from(["fresh"] * 6 + ["file", "under a file"])),
        "dataset": draw(st.sampled_from(["csv", "jsonl", "dir", "missing", "bad suffix"])),
        # usable rows mixed with empty / NaN / odd cells, in a drawn order
        "rows": draw(
            st.lists(
                st.tuples(st.text(min_size=1, max_size=12), st.sampled_from("ab")), max_size=16
            )
            .flatmap(lambda good: st.lists(st.tuples(cells, cells), max_size=8).map(good.__add__))
            .flatmap(st.permutations)
        ),
        "max_length": draw(st.sampled_from([8, 32, 128, 129, 512, 4096])),
        "depth": draw(st.integers(0, 4)),
        "kind": draw(st.sampled_from(["bottleneck", "lora", "freeze", "full"])),
    }


FUZZ_STATS = {"cases": 0, "refused": 0, "ran": 0}


@settings(
    # AUTOFEDNLP_FUZZ_EXAMPLES=1000 for a longer hunt than CI's
    max_examples=int(os.environ.get("AUTOFEDNLP_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cli_cases())
def test_cli_refuses_bad_input_in_one_line_and_writes_nothing(
    tiny_model_dir, tmp_path_factory, monkeypatch, capfd, case
):
    import pandas as pd

    from autofednlp import cli, run

    # a case that passes every check gets as far as the engine, which is not started here
    monkeypatch.setattr(run, "_run_on_engine", lambda cfg, rd, progress, resume: {})
    monkeypatch.setattr(cli, "format_summary", lambda s: "ok")
    root = tmp_path_factory.mktemp("case")
    df = pd.DataFrame(case["rows"], columns=["text", "label"])
    if case["dataset"] == "csv":
        dataset = root / "d.csv"
        df.to_csv(dataset, index=False)
    elif case["dataset"] == "jsonl":
        dataset = root / "d.jsonl"
        df.to_json(dataset, orient="records", lines=True)
    elif case["dataset"] == "dir":
        dataset = _make_path(root, "dir", "data")
    elif case["dataset"] == "bad suffix":
        dataset = _make_path(root, "file", "d.txt")
    else:
        dataset = root / "no.csv"
    out = _make_path(root, case["output_dir"], "out") if case["output_dir"] != "fresh" else None
    sets = [
        f'model.name="{tiny_model_dir}"',
        f'data.dataset="{dataset}"',
        "data.num_clients=2",
        "data.max_samples=0",
        "data.partitioner=iid",
        "federation.clients_per_round=1",
        "federation.rounds=1",
        "federation.engine=inprocess",
        f"data.max_length={case['max_length']}",
        f"tune.depth={case['depth']}",
        f"tune.kind={case['kind']}",
        f'output_dir="{out or root / "runs"}"',
    ]
    argv = ["run", *[x for s in sets for x in ("--set", s)], "--quiet"]
    if case["config"] != "none":
        argv.insert(1, str(_make_path(root, case["config"], "exp.toml")))
    if case["run_dir"] != "fresh":
        argv += ["--run-dir", str(_make_path(root, case["run_dir"], "rd"))]
    before = sorted(str(p) for p in root.rglob("*"))
    capfd.readouterr()

    code = cli.main(argv)

    captured = capfd.readouterr()
    FUZZ_STATS["cases"] += 1
    assert "Traceback" not in captured.err + captured.out
    if code == 0:
        FUZZ_STATS["ran"] += 1
        return
    FUZZ_STATS["refused"] += 1
    FUZZ_STATS.setdefault("errors", []).append(captured.err.strip()[:90])
    assert code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autofednlp: error: "), captured.err
    assert sorted(str(p) for p in root.rglob("*")) == before  # nothing written or created
