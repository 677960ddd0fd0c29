"""Seeded, stratified splitting of a labelled dataset into train / validation / test.

Datasets are stratified by their `strata` label: the class for classification, the dominant
entity type of a sentence for tagging (`data/tagged.py`). A source's own splits are kept
(`make_splits`); only what it lacks is carved out of its training split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from autofednlp.config import ConfigError

if TYPE_CHECKING:
    from autofednlp.data.sources import Dataset as TextDataset


@dataclass
class Splits:
    train: TextDataset
    validation: TextDataset
    test: TextDataset


def seeded_rng(seed: int, stream: int) -> np.random.Generator:
    """An independent generator per (seed, purpose), so one random step never shifts another."""
    return np.random.default_rng([stream, seed % 2**63])


def allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Share `total` (<= counts.sum()) among classes in proportion to `counts`.

    Largest-remainder rounding, so the shares sum to exactly `total` and none exceeds its count.
    """
    counts = np.asarray(counts, dtype=np.int64)
    quota = counts * (total / max(int(counts.sum()), 1))
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: total - int(take.sum())]] += 1
    return take


def _by_class(labels: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    y = np.asarray(labels, dtype=np.int64)
    classes = np.unique(y)
    return classes, [np.flatnonzero(y == c) for c in classes]


def stratified_sample(labels: list[int], n: int, seed: int) -> list[int]:
    """Indices of `n` samples drawn per class in proportion to class size (sorted, seeded)."""
    if n >= len(labels):
        return list(range(len(labels)))
    rng = seeded_rng(seed, 1)
    _, members = _by_class(labels)
    take = allocate(np.array([len(m) for m in members]), n)
    picked = [rng.choice(m, size=k, replace=False) for m, k in zip(members, take)]
    return sorted(int(i) for i in np.concatenate(picked))


def split_dataset(
    ds: TextDataset, validation_fraction: float, test_fraction: float, seed: int
) -> Splits:
    """Split into disjoint train / validation / test sets covering every sample.

    Each class is split in the same proportions (up to rounding); validation and test get at
    least one sample each. The same seed always gives the same split; samples keep their
    original order inside a split.
    """
    n = len(ds)
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * validation_fraction))
    if n - n_test - n_val < 1:
        raise ConfigError(
            f"data.dataset = {ds.name!r}: only {n} samples, too few for a train, validation "
            "and test split"
        )
    rng = seeded_rng(seed, 2)
    _, members = _by_class(ds.strata)
    counts = np.array([len(m) for m in members])
    test_k = allocate(counts, n_test)
    val_k = allocate(counts - test_k, n_val)
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for m, t, v in zip(members, test_k, val_k):
        shuffled = rng.permutation(m).tolist()
        parts["test"] += shuffled[:t]
        parts["validation"] += shuffled[t : t + v]
        parts["train"] += shuffled[t + v :]
    return Splits(**{name: ds.select(sorted(idx)) for name, idx in parts.items()})


def _carve(ds: TextDataset, fraction: float, seed: int, stream: int, what: str):
    """(rest, carved): a stratified `fraction` of `ds` (at least one sample) split off."""
    n = len(ds)
    k = max(1, round(n * fraction))
    if n - k < 1:
        raise ConfigError(
            f"data.dataset = {ds.name!r}: its training split has only {n} samples, too few to "
            f"carve a {what} split from"
        )
    rng = seeded_rng(seed, stream)
    _, members = _by_class(ds.strata)
    take = allocate(np.array([len(m) for m in members]), k)
    carved = {int(i) for m, t in zip(members, take) for i in rng.permutation(m)[:t]}
    rest = [i for i in range(n) if i not in carved]
    return ds.select(rest), ds.select(sorted(carved))


def make_splits(
    named: dict[str, TextDataset],
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    resplit: bool = False,
) -> Splits:
    """Train / validation / test from a source's data (`load_splits`'s result).

    A source with its own splits keeps them; a missing validation or test split is carved
    (stratified, seeded) out of its training split with the configured fraction. A source
    without splits (or any source, with `resplit`) is pooled and split by `split_dataset`.
    """
    parts = list(named.values())
    if resplit or "train" not in named or len(named) == 1:
        pooled = parts[0] if len(parts) == 1 else type(parts[0]).concat(parts)
        return split_dataset(pooled, validation_fraction, test_fraction, seed)
    train, validation, test = named["train"], named.get("validation"), named.get("test")
    if test is None:
        train, test = _carve(train, test_fraction, seed, 4, "test")
    if validation is None:
        train, validation = _carve(train, validation_fraction, seed, 5, "validation")
    return Splits(train, validation, test)
