"""The data a federation trains on: tokenized splits plus one index list per client, cached.

Flower's deployment engine starts a fresh client process every round, so the tokenized result
is kept in memory and on disk (keyed by everything that determines it) and a new process reads
it back instead of loading, splitting and tokenizing the corpus again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autofednlp.config import ConfigError, DataConfig
from autofednlp.data import tokenize
from autofednlp.data.partition import partition_indices
from autofednlp.data.sources import Dataset, load_splits, source_fingerprint
from autofednlp.data.splits import make_splits
from autofednlp.report import progress as show

# bump when the layout or the meaning of a cached file changes
CACHE_FORMAT = 4
TOKENIZE_CHUNK = 256

_memory_cache: dict[str, FederatedData] = {}


@dataclass
class TokenizedSplit:
    """Aligned tensors: row i of each is sample i. `labels` is [N] (a class per text) or, for
    tagging, [N, max_length] (a tag on each word's first token, -100 elsewhere)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Sequence[int]) -> TokenizedSplit:
        """The rows at `indices`, in that order (copies)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return TokenizedSplit(self.input_ids[idx], self.attention_mask[idx], self.labels[idx])


@dataclass
class FederatedData:
    """Train / validation / test splits and each client's share of train.

    Instances are shared by every caller in a process: treat the tensors as read-only.
    """

    train: TokenizedSplit
    validation: TokenizedSplit
    test: TokenizedSplit
    label_names: list[str]
    partitions: list[list[int]]
    task: str = "classification"
    # tagging: words per split that got no token (cut by truncation at data.max_length)
    lost_words: dict[str, int] = dataclasses.field(default_factory=dict)
    # what was read to make these splits: rows read, dropped (by reason), sampled, truncated,
    # and (tagging) sentences that lost words to truncation
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def num_clients(self) -> int:
        return len(self.partitions)

    def client(self, cid: int) -> TokenizedSplit:
        """Client `cid`'s training samples (0 <= cid < num_clients)."""
        if not 0 <= cid < len(self.partitions):
            raise ValueError(
                f"client id {cid} is out of range: this federation has {len(self.partitions)} "
                f"clients (0..{len(self.partitions) - 1})"
            )
        return self.train.subset(self.partitions[cid])


def default_cache_dir() -> Path:
    """`$AUTOFEDNLP_CACHE`, else ~/.cache/autofednlp."""
    return Path(os.environ.get("AUTOFEDNLP_CACHE") or Path.home() / ".cache" / "autofednlp")


def tokenizer_fingerprint(tokenizer_path: str) -> dict[str, Any]:
    path = Path(tokenizer_path).expanduser()
    if not path.is_dir():
        return {"hub": tokenizer_path}
    files = sorted(f for f in path.iterdir() if f.is_file())
    return {
        "dir": str(path.resolve()),
        "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files],
    }


def fingerprint(cfg: DataConfig, tokenizer_path: str, seed: int) -> str:
    """A hex digest of everything that determines `load_federated_data`'s result."""
    parts = {
        "format": CACHE_FORMAT,
        "source": source_fingerprint(cfg),
        "tokenizer": tokenizer_fingerprint(tokenizer_path),
        "seed": seed,
        **dataclasses.asdict(cfg),
    }
    # settings a partitioner does not read must not force a re-tokenization when they change
    if cfg.partitioner != "dirichlet":
        parts.pop("alpha")
    if cfg.partitioner != "shard":
        parts.pop("shards_per_client")
    # kept for tagging although it does not change the tensors: a cache entry built under
    # "truncate" must not let a "refuse" run skip its check
    if cfg.task_name != "tagging":
        parts.pop("overlong")
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def split_state(s: TokenizedSplit) -> dict[str, torch.Tensor]:
    return {"input_ids": s.input_ids, "attention_mask": s.attention_mask, "labels": s.labels}


def _write_cache(path: Path, key: str, data: FederatedData) -> None:
    state = {
        "key": key,
        "label_names": data.label_names,
        "partitions": data.partitions,
        "task": data.task,
        "lost_words": data.lost_words,
        "stats": data.stats,
        **{name: split_state(getattr(data, name)) for name in ("train", "validation", "test")},
    }
    save_cache_file(path, state)


def save_cache_file(path: Path, state: dict[str, Any]) -> None:
    """`torch.save` to `path` atomically; a failure only warns (a cache is never the truth)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # write then rename: concurrent client processes never see a half-written file
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        warnings.warn(f"could not write the data cache {str(path)!r}: {e}", stacklevel=3)


def load_cache_file(path: Path) -> dict[str, Any]:
    """Read a cache file memory-mapped: the tokens stay in the file (the OS page cache, shared
    by every process on the machine) and only the rows a process touches become resident, so a
    simulation actor that trains a few sampled clients does not hold the whole dataset."""
    return torch.load(path, weights_only=True, mmap=True)


def _read_cache(path: Path, key: str) -> FederatedData | None:
    if not path.is_file():
        return None
    try:
        state = load_cache_file(path)
        if state.get("key") != key:
            return None
        splits = {n: TokenizedSplit(**state[n]) for n in ("train", "validation", "test")}
        return FederatedData(
            **splits,
            label_names=state["label_names"],
            partitions=state["partitions"],
            task=state["task"],
            lost_words=state["lost_words"],
            stats=state.get("stats", {}),
        )
    except Exception:
        # a truncated, foreign or older file is simply rebuilt: the cache is never the truth
        return None


def encode(ds: Dataset, tokenizer: Any, max_length: int) -> tuple[TokenizedSplit, list[int]]:
    """Token tensors of a dataset, and (tagging) the words truncation cut from each sentence."""
    if hasattr(ds, "tokens"):  # tagging: a tag per word
        enc, cut = tokenize.tokenize_words(ds.tokens, ds.tags, tokenizer, max_length)
        return TokenizedSplit(**enc), cut
    enc = tokenize.tokenize_texts(ds.texts, tokenizer, max_length)
    return TokenizedSplit(**enc, labels=torch.tensor(ds.labels, dtype=torch.long)), []


def refuse_overlong(ds: Dataset, tokenizer: Any, max_length: int) -> None:
    """`data.overlong = "refuse"`: a `ConfigError` naming the first sentence of `ds` that needs
    more than `max_length` tokens, where it came from and how many tokens it needs."""
    if not hasattr(ds, "tokens"):
        return
    found = tokenize.first_overlong(ds.tokens, tokenizer, max_length)
    if found is None:
        return
    i, needed = found
    where = ds.origins[i] if ds.origins else f"dataset {ds.name!r} sentence {i + 1}"
    raise ConfigError(
        f"data.max_length = {max_length}: {where}: the sentence needs {needed} tokens "
        '(data.overlong = "refuse"); raise data.max_length, or set data.overlong = '
        '"truncate" to cut its words past the limit'
    )


def _build(cfg: DataConfig, tokenizer_path: str, seed: int) -> FederatedData:
    # imported here: a process that hits the cache never pays for importing transformers
    from transformers import AutoTokenizer

    named = load_splits(cfg, seed)
    splits = make_splits(named, cfg.validation_fraction, cfg.test_fraction, seed, cfg.resplit)
    # partition before tokenizing, so a bad num_clients / alpha fails fast
    partitions = partition_indices(
        splits.train.strata,
        cfg.num_clients,
        cfg.partitioner,
        cfg.alpha,
        cfg.shards_per_client,
        seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if cfg.task_name == "tagging":
        tokenizer = tokenize.words_tokenizer(tokenizer)
    if cfg.overlong == "refuse":
        # before splitting: the first too-long sentence in the source's order is the one named
        for ds in named.values():
            refuse_overlong(ds, tokenizer, cfg.max_length)
    parts = {name: getattr(splits, name) for name in ("train", "validation", "test")}
    total = sum(len(p) for p in parts.values())
    encoded = {}
    with show.bar(f"tokenizing {total} samples (max {cfg.max_length} tokens)", total) as advance:
        for name, part in parts.items():
            # in chunks, so the bar moves; one batched call per chunk keeps the fast path
            starts = range(0, len(part), TOKENIZE_CHUNK) or [0]
            chunks, cut = [], []
            for i in starts:
                piece = part.select(list(range(i, min(i + TOKENIZE_CHUNK, len(part)))))
                enc, n = encode(piece, tokenizer, cfg.max_length)
                chunks.append(enc)
                cut += n
                advance(len(piece))
            encoded[name] = (
                TokenizedSplit(
                    *(
                        torch.cat([getattr(c, f) for c in chunks])
                        for f in ("input_ids", "attention_mask", "labels")
                    )
                ),
                cut,
            )
    lost = {name: sum(n) for name, (_, n) in encoded.items() if sum(n)}
    dropped: dict[str, int] = {}
    for ds in named.values():
        for why, n in getattr(ds, "dropped", {}).items():
            dropped[why] = dropped.get(why, 0) + n
    stats = {
        "rows_read": sum(getattr(ds, "rows_read", 0) or len(ds) for ds in named.values()),
        "dropped": dropped,
        "sampled": total if cfg.max_samples > 0 else None,
        # samples that fill max_length: at or over it
        "truncated": sum(int(t.attention_mask[:, -1].sum()) for t, _ in encoded.values()),
        "cut_sentences": sum(1 for _, n in encoded.values() for k in n if k),
    }
    return FederatedData(
        **{name: split for name, (split, _) in encoded.items()},
        label_names=list(splits.train.label_names),
        partitions=partitions,
        task=cfg.task_name,
        lost_words=lost,
        stats=stats,
    )


def load_federated_data(
    cfg: DataConfig, tokenizer_path: str, seed: int, cache_dir: str | Path | None = None
) -> FederatedData:
    """Load, split, partition and tokenize the dataset `cfg` names; cached.

    `tokenizer_path` is anything `AutoTokenizer.from_pretrained` accepts. The result is
    deterministic for (cfg, tokenizer, seed) and is reused from this process's memory, else
    from `cache_dir` (default: `default_cache_dir()`), else built and written there.
    """
    key = fingerprint(cfg, tokenizer_path, seed)
    if key in _memory_cache:
        return _memory_cache[key]
    path = Path(cache_dir or default_cache_dir()).expanduser() / f"federated-{key[:24]}.pt"
    data = _read_cache(path, key)
    if data is not None:
        show.note(f"tokenized data read from the cache ({path})")
    else:
        data = _build(cfg, tokenizer_path, seed)
        _write_cache(path, key, data)
        # map the written copy rather than hold the built one (falls back if it was not written)
        data = _read_cache(path, key) or data
    _memory_cache[key] = data
    return data


def clear_memory_cache() -> None:
    """Forget the in-process copies (the on-disk cache is kept)."""
    _memory_cache.clear()
