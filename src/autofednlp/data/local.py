"""A device's own training data: a file on the device, named in its node config.

In a real deployment each device holds its private text; the server never sees it. The
device reads the file with the experiment's columns, numbers its labels by the server's label
set (so every device and the server agree on what label 3 means), and tokenizes it once: a
fresh client process each round reads the tokenized copy back from disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from autofednlp.config import ConfigError, DataConfig
from autofednlp.data.federated import (
    CACHE_FORMAT,
    TokenizedSplit,
    default_cache_dir,
    encode,
    load_cache_file,
    refuse_overlong,
    save_cache_file,
    split_state,
    tokenizer_fingerprint,
)
from autofednlp.data.sources import apply_label_set, load_file, source_fingerprint
from autofednlp.data.tokenize import words_tokenizer

FIELD = "node config data-file"

_memory_cache: dict[str, TokenizedSplit] = {}


def device_data_key(cfg: DataConfig, path: str, label_names: Sequence[str], tokenizer: str) -> str:
    """A hex digest of everything that determines `load_device_data`'s result."""
    file_cfg = dataclasses.replace(cfg, dataset=path)
    parts = {
        "format": CACHE_FORMAT,
        "source": source_fingerprint(file_cfg),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "task": cfg.task_name,
        "columns": [cfg.text_column, cfg.label_column, cfg.tokens_column, cfg.tags_column],
        "max_length": cfg.max_length,
        "overlong": cfg.overlong if cfg.task_name == "tagging" else None,
        "labels": list(label_names),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _require_file(path: str) -> None:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{FIELD} = {path!r}: no such file on this device")


def load_device_data(
    cfg: DataConfig,
    path: str,
    label_names: Sequence[str],
    tokenizer_path: str,
    cache_dir: str | Path | None = None,
    key: str | None = None,
) -> TokenizedSplit:
    """The labelled rows (tagging: sentences) of the device's file `path`, tokenized, labels
    (tags) numbered by `label_names`. A device may hold one class only (that is label skew,
    not a mistake); a label outside the set is a `ConfigError` naming the file and the label.
    `key` is `device_data_key(...)` of these arguments when the caller has it already."""
    if len(label_names) < 2:
        raise ValueError("the server sent no label set with the task")
    _require_file(path)
    key = key or device_data_key(cfg, path, label_names, tokenizer_path)
    if key in _memory_cache:
        return _memory_cache[key]
    cache = Path(cache_dir or default_cache_dir()).expanduser() / f"device-{key[:24]}.pt"
    split = _read(cache, key)
    if split is None:
        from transformers import AutoTokenizer

        # the experiment's task, not the file's name, decides how the file is read
        file_cfg = dataclasses.replace(
            cfg, dataset=path, labels=list(label_names), task=cfg.task_name
        )
        ds = load_file(file_cfg, FIELD)
        if not hasattr(ds, "tokens"):
            ds = apply_label_set(ds, list(label_names), f"file {path!r}", FIELD)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        if hasattr(ds, "tokens"):
            tokenizer = words_tokenizer(tokenizer)
        if cfg.overlong == "refuse":
            refuse_overlong(ds, tokenizer, cfg.max_length)
        split, _ = encode(ds, tokenizer, cfg.max_length)
        save_cache_file(cache, {"key": key, **split_state(split)})
    _memory_cache[key] = split
    return split


def _read(path: Path, key: str) -> TokenizedSplit | None:
    if not path.is_file():
        return None
    try:
        state = load_cache_file(path)
        if state.pop("key", None) != key:
            return None
        return TokenizedSplit(**state)
    except Exception:  # a truncated or foreign file is rebuilt
        return None
