"""A device's own data file (node config `data-file`): read, labelled by the server's label
set, tokenized once, and trained on by the same worker as a partition."""

from types import SimpleNamespace

import pandas as pd
import pytest

from autofednlp.client import app as client_app
from autofednlp.client.worker import train_round
from autofednlp.config import ConfigError, load_config
from autofednlp.data import local
from autofednlp.model.build import build_model, trainable_state
from autofednlp.model.kinds import TuneSpec

LABELS = ["business", "sport", "tech"]


def _cfg(tiny_model_dir, tmp_path, *extra):
    return load_config(
        None,
        [
            f'model.name="{tiny_model_dir}"',
            "data.max_length=16",
            f'client.cache_dir="{tmp_path / "acts"}"',
            *extra,
        ],
    )


def _file(tmp_path, labels, name="mine.csv"):
    path = tmp_path / name
    texts = [f"text number {i} about {lab}" for i, lab in enumerate(labels)]
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return str(path)


def test_labels_follow_the_server_label_set_and_one_class_is_fine(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path)
    path = _file(tmp_path, ["tech", "tech", "tech"])  # label skew, not a mistake
    split = local.load_device_data(cfg.data, path, LABELS, tiny_model_dir, tmp_path / "c")
    assert split.labels.tolist() == [2, 2, 2] and split.input_ids.shape == (3, 16)


def test_tokenized_copy_is_reused_by_a_fresh_process(tiny_model_dir, tmp_path, monkeypatch):
    cfg = _cfg(tiny_model_dir, tmp_path)
    path = _file(tmp_path, ["sport", "business"])
    first = local.load_device_data(cfg.data, path, LABELS, tiny_model_dir, tmp_path / "c")
    local._memory_cache.clear()  # as a new ClientApp process
    monkeypatch.setattr(local, "load_file", lambda *a: pytest.fail("file read again"))
    again = local.load_device_data(cfg.data, path, LABELS, tiny_model_dir, tmp_path / "c")
    assert again.labels.tolist() == first.labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    "labels, make, named",
    [
        (
            ["sport", "weather"],
            True,
            r"data-file: file '.*mine.csv' has labels not in the label set: 'weather'",
        ),
        (["sport"], False, r"data-file = '.*absent.csv': no such file"),
    ],
)
def test_device_data_mistakes_name_the_file(tiny_model_dir, tmp_path, labels, make, named):
    cfg = _cfg(tiny_model_dir, tmp_path)
    path = _file(tmp_path, labels) if make else str(tmp_path / "absent.csv")
    with pytest.raises(ConfigError, match=named) as err:
        local.load_device_data(cfg.data, path, LABELS, tiny_model_dir, tmp_path / "c")
    assert "\n" not in str(err.value)


def test_worker_trains_on_the_file_and_caches_its_activations(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path)
    path = _file(tmp_path, ["sport", "tech", "business", "tech", "sport"])
    spec = TuneSpec("bottleneck", 1, 8)
    state = trainable_state(build_model(tiny_model_dir, len(LABELS), spec, 0))
    kw = dict(run_id="r", data_file=path, label_names=LABELS)
    _, first = train_round(cfg, 7, spec, state, 1, **kw)
    new_state, second = train_round(cfg, 7, spec, state, 2, **kw)
    assert first["num_examples"] == second["num_examples"] == 5
    assert first["data"] == "file" and first["cache_misses"] == 5
    assert second["cache_hits"] == 5 and second["cache_misses"] == 0
    assert new_state.keys() == state.keys()
    # the same client id on the experiment's partition is another cache: no false hits
    part_cfg = _cfg(tiny_model_dir, tmp_path, "data.max_samples=60", "data.num_clients=10",
                    "federation.clients_per_round=3")  # fmt: skip
    part_state = trainable_state(build_model(tiny_model_dir, 5, spec, 0))
    _, on_partition = train_round(part_cfg, 7, spec, part_state, 3, run_id="r")
    assert on_partition["data"] == "partition" and on_partition["cache_hits"] == 0


@pytest.mark.parametrize(
    "name, make, named",
    [
        ("absent.csv", False, r"data-file = '.*absent.csv': no such file on this device"),
        ("mine.tsv", True, r"data-file = '.*mine.tsv': unsupported file type; use .csv"),
    ],
)
def test_a_node_with_a_bad_file_stays_out_with_a_named_reason(tmp_path, name, make, named):
    if make:
        (tmp_path / name).write_text("text\tlabel\nhi\tsport\n")
    cfg = load_config()
    context = SimpleNamespace(node_config={"partition-id": 4, "data-file": str(tmp_path / name)})
    assert client_app._identity(context, cfg)[2] == str(tmp_path / name)
    msg = SimpleNamespace(content={"config": {"experiment": "[data]\nmax_length = 32\n"}})
    with pytest.raises(ValueError, match=named):
        client_app.query(msg, context)


def test_the_light_file_type_check_matches_the_loader():
    from autofednlp.config.sections import CONLL_SUFFIXES
    from autofednlp.data.sources import FILE_BUILDERS

    assert set(client_app.DATA_FILE_TYPES) == set(FILE_BUILDERS) | set(CONLL_SUFFIXES)
