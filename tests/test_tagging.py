"""Token tagging on the tiny BERT: alignment, learning, cache exactness, readers, the CLI."""

import dataclasses
import json

import pytest
import torch
from transformers import AutoTokenizer

from autofednlp.cli import main
from autofednlp.client.cache import ActivationCache
from autofednlp.client.train import evaluate, local_train
from autofednlp.config import ClientConfig, ConfigError, DataConfig
from autofednlp.data.federated import TokenizedSplit
from autofednlp.data.sources import load_splits
from autofednlp.data.splits import make_splits
from autofednlp.data.tagged import dominant_type, read_conll
from autofednlp.data.tokenize import IGNORE, tokenize_words
from autofednlp.model.build import build_model, model_shape, trainable_state
from autofednlp.model.kinds import TuneSpec

TAGS = ["O", "B-PER", "I-PER", "B-LOC"]

CONLL = """-DOCSTART- -X- -X- O

Barack NNP B-PER
Obama NNP I-PER
visited VBD O
Paris NNP B-LOC

Anna NNP B-PER
stayed VBD O
home NN O
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only contends on a busy machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_first_sub_token_carries_the_tag_and_truncation_is_counted(tokenizer):
    words = [["Barack", "Obama", "visited", "Parisville"]]
    enc, cut = tokenize_words(words, [[1, 2, 0, 3]], tokenizer, max_length=16)
    labels, ids = enc["labels"][0], enc["input_ids"][0]
    assert cut == [0]
    first = [i for i, y in enumerate(labels.tolist()) if y != IGNORE]
    assert [labels[i].item() for i in first] == [1, 2, 0, 3]
    assert labels[0] == IGNORE  # [CLS]
    # every word begins where its label sits: decoding from there yields the word's start
    assert tokenizer.decode(ids[first[0] : first[1]]).replace(" ", "").lower() == "barack"
    _, cut = tokenize_words(words, [[1, 2, 0, 3]], tokenizer, max_length=4)
    assert cut == [2]  # [CLS] barack obama [SEP]: "visited" and "Parisville" are cut
    # a word the tokenizer maps to nothing (a zero-width space) is not truncation's doing
    _, cut = tokenize_words([["Anna", "\u200b", "sings"]], [[1, 0, 0]], tokenizer, max_length=4)
    assert cut == [0]


def synthetic_split(n: int = 48, length: int = 10) -> TokenizedSplit:
    """Tag = a function of the token id (ids 1000-1099 are B-PER, 1100-1199 B-LOC)."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, 1400, (n, length), generator=gen)
    ids[:, 0], ids[:, -1] = 101, 102
    labels = torch.zeros_like(ids)
    labels[(ids >= 1000) & (ids < 1100)] = 1
    labels[(ids >= 1100) & (ids < 1200)] = 3
    labels[:, 0] = labels[:, -1] = IGNORE
    mask = torch.ones_like(ids)
    mask[: n // 2, length - 3 :] = 0  # half the rows are shorter (padding must be ignored)
    labels[: n // 2, length - 3 :] = IGNORE
    ids[: n // 2, length - 3 :] = 0
    return TokenizedSplit(ids, mask, labels)


def test_tagging_learns_on_the_tiny_bert(tiny_model_dir):
    spec = TuneSpec("bottleneck", 2, 8)
    model = build_model(tiny_model_dir, len(TAGS), spec, seed=0, task="tagging")
    data = synthetic_split()
    shape = model_shape(tiny_model_dir, len(TAGS), task="tagging")
    part = spec
    before = evaluate(model, data, shape, part, label_names=TAGS)
    cfg = ClientConfig(local_epochs=30, batch_size=8)
    local_train(model, data, cfg, 1e-2, spec.boundary(2), shape, part, seed=0)
    after = evaluate(model, data, shape, part, label_names=TAGS)
    assert after.loss < before.loss / 2
    assert after.metrics["f1"] > max(0.5, before.metrics["f1"] + 0.3), (before, after)
    assert set(after.metrics) == {"f1", "precision", "recall", "accuracy"}


@pytest.mark.parametrize("spec", [TuneSpec("bottleneck", 1, 8), TuneSpec("lora", 1, 4)])
def test_cache_is_exact_for_tagging(tiny_model_dir, spec, tmp_path):
    """Per-token hidden states come from the cache: losses and weights after training with
    it equal those without (so losses and gradients were equal at every step)."""
    data = synthetic_split(16)
    shape = model_shape(tiny_model_dir, len(TAGS), task="tagging")
    results = {}
    for cached in (False, True):
        model = build_model(tiny_model_dir, len(TAGS), spec, seed=0, task="tagging")
        cache = ActivationCache("ns", tmp_path / str(cached), memory_budget_bytes=0)
        res = local_train(
            model,
            data,
            ClientConfig(local_epochs=2, batch_size=4),
            1e-2,
            spec.boundary(2),
            shape,
            spec,
            seed=5,
            cache=cache if cached else None,
            sample_ids=torch.arange(len(data)),
        )
        results[cached] = (res.train_loss, trainable_state(model))
        if cached:
            assert cache.hits == len(data) and cache.misses == len(data)
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5)
    for name, t in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], t, rtol=1e-4, atol=1e-6)


def test_token_head_is_counted_on_every_token():
    from autofednlp.cost.flops import ModelShape, eval_flops

    spec = TuneSpec("bottleneck", 0, 8)
    pooled = ModelShape(2, 4, 8, num_labels=3, pooler=False)
    per_token = dataclasses.replace(pooled, token_head=True)
    part = spec
    # head: 2 * H * C = 24 FLOPs once per sequence, or once per each of 10 tokens
    assert eval_flops(per_token, part, 1, 10) - eval_flops(pooled, part, 1, 10) == 24 * 9


def test_conll_reader(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL, encoding="utf-8")
    ds = read_conll(path)
    assert ds.tokens == [["Barack", "Obama", "visited", "Paris"], ["Anna", "stayed", "home"]]
    assert ds.label_names == ["O", "B-LOC", "B-PER", "I-PER"]
    assert [[ds.label_names[t] for t in s] for s in ds.tags][1] == ["B-PER", "O", "O"]
    declared = read_conll(path, labels=TAGS + ["I-LOC"])
    assert declared.label_names == TAGS + ["I-LOC"] and declared.tags[0] == [1, 2, 0, 3]


@pytest.mark.parametrize(
    "text, message",
    [
        ("Barack B-PER\nObama\n", "line 2: 'Obama' has no tag"),
        ("Barack NNP B-PER\nObama I-PER\n", "line 2 has 2 columns where the file's first"),
        ("Barack NNP B-ORG\n", "line 1: tag 'B-ORG' is not in the tag set"),
        ("", "is empty"),
        ("\n\n-DOCSTART- O\n\n", "has no tagged words"),
    ],
)
def test_bad_conll_is_one_line_naming_file_and_line(tmp_path, capsys, text, message):
    path = tmp_path / "bad.conll"
    path.write_text(text, encoding="utf-8")
    code = main(
        [
            "run",
            "--quiet",  # stage notes aside, the error is one line
            "--set",
            f'data.dataset="{path}"',
            "--set",
            f"data.labels={json.dumps(TAGS)}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert message in err and str(path) in err


def test_jsonl_tokens_and_tags(tmp_path):
    path = tmp_path / "ner.jsonl"
    rows = [
        {"words": ["Anna", "lives", "in", "Oslo"], "labels": ["B-PER", "O", "O", "B-LOC"]},
        {"words": ["Hi"], "labels": ["O"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    cfg = DataConfig(dataset=str(path), task="tagging", tokens_column="words", tags_column="labels")
    (ds,) = load_splits(cfg, seed=0).values()
    assert ds.tokens[0] == ["Anna", "lives", "in", "Oslo"]
    assert [ds.label_names[t] for t in ds.tags[0]] == ["B-PER", "O", "O", "B-LOC"]
    rows[1]["labels"] = ["O", "O"]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"row 2 has 1 words but 2 tags"):
        load_splits(cfg, seed=0)


def _hub_tagging(monkeypatch):
    import datasets

    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"])),
        }
    )

    def split(n, offset):
        rows = [[f"w{offset + i}", "x", "y"] for i in range(n)]
        tags = [[1, 2, 0] if i % 2 else [0, 0, 0] for i in range(n)]
        return datasets.Dataset.from_dict({"tokens": rows, "ner_tags": tags}, features=features)

    dd = datasets.DatasetDict(train=split(30, 0), validation=split(6, 100), test=split(8, 200))
    monkeypatch.setattr(datasets, "load_dataset", lambda name, subset=None, **kw: dd)


def test_hub_layout_keeps_official_splits(monkeypatch):
    _hub_tagging(monkeypatch)
    cfg = DataConfig(dataset="someone/ner", task="tagging", validation_fraction=0.2)
    named = load_splits(cfg, seed=0)
    assert {k: len(v) for k, v in named.items()} == {"train": 30, "validation": 6, "test": 8}
    assert named["train"].label_names == ["O", "B-PER", "I-PER"]
    s = make_splits(named, 0.2, 0.1, seed=0)
    assert [len(s.train), len(s.validation), len(s.test)] == [30, 6, 8]
    assert s.test.tokens[0][0] == "w200"  # the source's own test split, untouched
    resplit = make_splits(named, 0.2, 0.1, seed=0, resplit=True)
    assert [len(resplit.train), len(resplit.validation), len(resplit.test)] == [31, 9, 4]


def test_hub_classification_keeps_official_splits_too(monkeypatch):
    import datasets

    def split(n, offset):
        return datasets.Dataset.from_dict(
            {"text": [f"t{offset + i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
        )

    dd = datasets.DatasetDict(train=split(40, 0), test=split(10, 100))
    monkeypatch.setattr(datasets, "load_dataset", lambda name, subset=None, **kw: dd)
    named = load_splits(DataConfig(dataset="someone/clf"), seed=0)
    s = make_splits(named, 0.1, 0.1, seed=0)
    # the test split is the source's; validation is carved out of its training split
    assert sorted(s.test.texts) == sorted(f"t{100 + i}" for i in range(10))
    assert [len(s.train), len(s.validation)] == [36, 4]


def test_partition_label_is_the_dominant_entity_type():
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    assert dominant_type([0, 0], names) == "O"
    assert dominant_type([1, 2, 0, 3], names) == "PER"  # 2 words of PER, 1 of LOC
    assert dominant_type([1, 3], names) == "LOC"  # a tie goes to the first alphabetically


def test_tagging_run_predict_and_export(tiny_model_dir, tmp_path, capsys):
    from small_run import small_overrides

    path = tmp_path / "ner.conll"
    sentences = [
        ["Anna B-PER", "visited O", "Oslo B-LOC"],
        ["Bob B-PER", "likes O", "tea O"],
        ["Rome B-LOC", "is O", "old O"],
    ]
    path.write_text("\n\n".join("\n".join(s) for s in sentences * 12) + "\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    sets = small_overrides(tiny_model_dir, f'data.dataset="{path}"', "tune.kind=lora")
    args = ["run", "--quiet", "--run-dir", str(run_dir)]
    assert main([*args, *[x for s in sets for x in ("--set", s)]]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == "tagging" and summary["target_metric"] == "f1"
    assert {"test_f1", "test_precision", "test_recall", "best_val_f1"} <= set(summary)
    header = (run_dir / "rounds.csv").read_text().splitlines()[0].split(",")
    assert {"val_f1", "val_precision", "val_recall", "val_accuracy"} <= set(header)
    head = json.loads((run_dir / "export" / "autofednlp.json").read_text())
    assert head["task"] == "tagging" and head["labels"] == summary["label_names"]
    capsys.readouterr()
    assert main(["predict", str(run_dir), "Anna visited Rome"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Anna visited Rome\t")
    # report plots a tagging run by entity F1
    assert main(["report", str(run_dir), "--out", str(tmp_path / "report")]) == 0
    csv_head = (tmp_path / "report" / "accuracy_vs_time.csv").read_text().splitlines()[0]
    assert csv_head == "run,dir,sim_time_s,best_val_f1"


def _conll_file(tmp_path, sentences, name="ner.conll"):
    path = tmp_path / name
    path.write_text("\n\n".join("\n".join(s) for s in sentences) + "\n", encoding="utf-8")
    return path


SENTENCES = [
    ["Anna B-PER", "visited O", "Oslo B-LOC"],
    ["Bob B-PER", "likes O", "tea O"],
    ["Rome B-LOC", "is O", "old O"],
]


def test_a_device_tags_its_own_file_with_the_server_tag_set(tiny_model_dir, tmp_path):
    from autofednlp.client.worker import train_round
    from autofednlp.config import load_config

    # the run's task is tagging (its dataset is twitter_ner); the device holds a CoNLL file
    # with a subset of the tags, numbered by the server's tag set
    cfg = load_config(
        None,
        [
            f'model.name="{tiny_model_dir}"',
            'data.dataset="twitter_ner"',
            "data.max_length=16",
            f'client.cache_dir="{tmp_path / "acts"}"',
        ],
    )
    path = _conll_file(tmp_path, SENTENCES[1:], "mine.txt")
    spec = TuneSpec("bottleneck", 1, 8)
    state = trainable_state(build_model(tiny_model_dir, len(TAGS), spec, 0, task="tagging"))
    kw = dict(run_id="r", data_file=str(path), label_names=TAGS)
    new_state, metrics = train_round(cfg, 3, spec, state, 1, **kw)
    assert metrics["data"] == "file" and metrics["num_examples"] == 2
    assert new_state.keys() == state.keys()
    path.write_text("Anna B-ORG\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"tag 'B-ORG' is not in the tag set"):
        train_round(cfg, 4, spec, state, 1, **kw)


ROBUST_NOW = [
    "strategy.name=autofed",
    "tune.depth=0",
    "tune.width=8",
    "strategy.max_width=16",
    "strategy.patience=1",
    "strategy.min_delta=1.0",
    "strategy.trial_rounds=1",
]


@pytest.mark.parametrize(
    "extra",
    [
        ["tune.kind=full"],
        ["tune.kind=freeze", "tune.depth=1"],
        ["tune.kind=bottleneck"],
        [
            "strategy.name=autofed",
            'strategy.trials="published"',
            "tune.depth=0",
            "tune.width=8",
            "strategy.max_width=16",
        ],
        # robust trials: every reading a stall, so a one-round trial follows round 1
        [*ROBUST_NOW, 'strategy.trial_pace="keep"'],
        [*ROBUST_NOW, "federation.rounds=12", 'strategy.trial_pace="background"'],
        # the default, shadow trials: the probe's d=2 task costs ~12 served head rounds here
        [*ROBUST_NOW, "federation.rounds=18"],
    ],
    ids=[
        "full",
        "freeze",
        "bottleneck",
        "autofed-published",
        "autofed-robust",
        "autofed-bg",
        "autofed-shadow",
    ],
)
def test_tagging_runs_with_each_kind_and_autofed(tiny_model_dir, tmp_path, extra):
    from small_run import small_config

    from autofednlp.run import run_experiment

    path = _conll_file(tmp_path, SENTENCES * 12)
    cfg = small_config(
        tiny_model_dir, tmp_path, f'data.dataset="{path}"', "federation.rounds=3", *extra
    )
    summary = run_experiment(cfg, progress=False)
    rows = [json.loads(line) for line in open(summary["run_dir"] + "/rounds.jsonl")]
    assert rows and all(r["val_f1"] is not None and r["val_recall"] is not None for r in rows)
    assert summary["target_metric"] == "f1" and 0 <= summary["test_f1"] <= 1
    if 'strategy.trials="published"' in extra:
        # the trials judge the groups by the target metric: the winner's entry is its val F1
        first = [r for r in rows if r["trial"] == 1]
        best = max(r["val_f1"] for r in first)
        assert summary["trajectory"][0]["val_accuracy"] == pytest.approx(best)
    elif extra == [*ROBUST_NOW, "federation.rounds=18"]:
        # shadow: the probes carry the deeper candidate and a control, never served
        probes = [r for r in rows if r.get("trial") == 1 and not r["served"]]
        assert {r["group"] for r in probes} == {"control", "deeper"}
        first = summary["trajectory"][0]
        assert first["shadow"] is True and first["probe_rounds"] >= 1
    elif 'strategy.trial_pace="keep"' not in extra and "strategy.name=autofed" in extra:
        # background: probe readings are never served; keep's entry is the served F1
        entry = summary["trajectory"][0]
        probes = [r for r in rows if r.get("trial") == 1 and not r["served"]]
        assert probes and {r["group"] for r in probes} >= {"keep_probe", "deeper"}
        if entry["winner"] == "keep":
            served = [r for r in rows if r["served"] and r["round"] <= probes[-1]["round"]]
            assert entry["val_accuracy"] == pytest.approx(served[-1]["val_f1"])
    elif "strategy.name=autofed" in extra:
        # robust: the trial's entry is its winner's F1, and only keep's readings are served
        (trial,) = [
            r
            for r in rows
            if r.get("trial") == 1 and r["group"] == summary["trajectory"][0]["winner"]
        ]
        assert summary["trajectory"][0]["val_accuracy"] == pytest.approx(trial["val_f1"])
        assert [r["group"] for r in rows if r.get("trial") == 1 and r["served"]] == ["keep"]


def test_target_metric_follows_the_task_and_is_checked():
    from autofednlp.config import load_config

    assert load_config(None, []).target_metric == "accuracy"
    assert load_config(None, ['data.dataset="twitter_ner"']).target_metric == "f1"
    assert load_config(None, ["federation.target_metric=macro_f1"]).target_metric == "macro_f1"
    with pytest.raises(ConfigError, match="target_metric = 'f1': not a metric of classification"):
        load_config(None, ["federation.target_metric=f1"])
    with pytest.raises(ConfigError, match="'bbc_news' is a text-classification dataset"):
        load_splits(DataConfig(task="tagging"), seed=0)


@pytest.mark.parametrize(
    "tags, labels, expected",
    [
        ([[1, 0]], ["O", "B-PER"], [[1, 0]]),
        ([[1, 0]], [], "holds tag ids without names; set data.labels"),
        ([[5, 0]], ["O", "B-PER"], "row 1: tag id 5 is outside the tag set"),
        ([["B-ORG", "O"]], ["O", "B-PER"], "row 1: tag 'B-ORG' is not in the tag set"),
    ],
)
def test_jsonl_tag_ids_and_declared_tag_sets(tmp_path, tags, labels, expected):
    path = tmp_path / "ids.jsonl"
    path.write_text(
        "\n".join(json.dumps({"tokens": ["Anna", "x"], "ner_tags": t}) for t in tags) + "\n"
    )
    cfg = DataConfig(dataset=str(path), task="tagging", labels=labels)
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected):
            load_splits(cfg, seed=0)
    else:
        (ds,) = load_splits(cfg, seed=0).values()
        assert ds.tags == expected and ds.label_names == labels


def test_classification_rows_and_summary_gain_macro_f1(tiny_model_dir, tmp_path):
    from small_run import small_config

    from autofednlp.run import run_experiment

    summary = run_experiment(small_config(tiny_model_dir, tmp_path), progress=False)
    rows = [json.loads(line) for line in open(summary["run_dir"] + "/rounds.jsonl")]
    assert rows and all(0 <= r["val_macro_f1"] <= 1 for r in rows)
    assert summary["task"] == "classification" and summary["target_metric"] == "accuracy"
    assert {"test_accuracy", "test_macro_f1", "best_val_accuracy"} <= set(summary)


def test_parquet_with_list_columns(tmp_path):
    import pandas as pd

    path = tmp_path / "ner.parquet"
    frame = {
        "tokens": [["Anna", "sings"], ["in", "Oslo"]],
        "ner_tags": [["B-PER", "O"], ["O", "B-LOC"]],
    }
    pd.DataFrame(frame).to_parquet(path)
    (ds,) = load_splits(DataConfig(dataset=str(path), task="tagging"), seed=0).values()
    assert ds.tokens == frame["tokens"] and ds.label_names == ["O", "B-LOC", "B-PER"]
    assert ds.strata_names[ds.strata[1]] == "LOC"
