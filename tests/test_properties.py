"""Property-based tests: generated configs and files never crash the parser or the loaders;
they either load or raise a one-line ConfigError."""

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
