"""Split the training set among clients with flwr-datasets' partitioners.

The partitioners work on a `datasets.Dataset`; we give them one holding only the labels and
each row's position, and read the positions back, so the result is plain lists of indices.
"""

from __future__ import annotations

import warnings

import numpy as np

from autofednlp.config import PARTITIONERS, ConfigError
from autofednlp.data.splits import seeded_rng

# flwr-datasets' default; lowered step by step when it cannot be met (few samples per client)
_DIRICHLET_MIN_SIZE = 10


def _table(labels: list[int], order: np.ndarray):
    # imported here so a client that finds its data cached never imports datasets
    import datasets

    return datasets.Dataset.from_dict(
        {"label": [labels[i] for i in order], "index": order.tolist()}
    )


def _read(partitioner, num_clients: int) -> list[list[int]]:
    return [sorted(partitioner.load_partition(c)["index"]) for c in range(num_clients)]


def _iid(labels: list[int], num_clients: int, seed: int) -> list[list[int]]:
    from flwr_datasets.partitioner import IidPartitioner

    # IidPartitioner takes no seed: it cuts the rows into contiguous blocks, so shuffle first
    p = IidPartitioner(num_partitions=num_clients)
    p.dataset = _table(labels, seeded_rng(seed, 3).permutation(len(labels)))
    return _read(p, num_clients)


def _dirichlet(labels: list[int], num_clients: int, alpha: float, seed: int) -> list[list[int]]:
    from flwr_datasets.partitioner import DirichletPartitioner

    n = len(labels)
    min_size = max(1, min(_DIRICHLET_MIN_SIZE, n // (2 * num_clients)))
    while True:
        p = DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=float(alpha),
            min_partition_size=min_size,
            # stops giving a class to clients already above the mean size, as the reference
            # code does: without it a few clients hold most of the data at small alpha
            self_balancing=True,
            seed=seed % 2**32,
        )
        p.dataset = _table(labels, np.arange(n))
        try:
            # it warns on each of its (at most 11) resampling attempts; we handle the failure
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _read(p, num_clients)
        except ValueError:
            if min_size == 1:
                raise ConfigError(
                    f"data.alpha = {alpha}: the Dirichlet partitioner could not give each of "
                    f"{num_clients} clients a sample ({n} in all); use a larger data.alpha or "
                    "fewer data.num_clients"
                ) from None
            min_size //= 2


def _shard(labels: list[int], num_clients: int, per_client: int, seed: int) -> list[list[int]]:
    from flwr_datasets.partitioner import ShardPartitioner

    # Giving num_shards_per_partition drops the leftover rows (up to clients*shards - 1);
    # a fixed shard size with keep_incomplete_shard uses every row instead, and some clients
    # get one shard more. size >= 1 and n >= clients guarantee at least one shard per client.
    size = max(1, len(labels) // (num_clients * per_client))
    p = ShardPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        shard_size=size,
        keep_incomplete_shard=True,
        seed=seed % 2**32,
    )
    p.dataset = _table(labels, np.arange(len(labels)))
    with warnings.catch_warnings():
        # its label sort trips a pyarrow deprecation warning the user can do nothing about
        warnings.simplefilter("ignore", FutureWarning)
        parts = _read(p, num_clients)
    # the extra shards go to the first partition ids: spread them over random clients
    return [parts[i] for i in seeded_rng(seed, 4).permutation(num_clients)]


def partition_indices(
    labels: list[int],
    num_clients: int,
    partitioner: str,
    alpha: float,
    shards_per_client: int,
    seed: int,
) -> list[list[int]]:
    """Indices into `labels`, one sorted list per client: disjoint, non-empty, covering all.

    `partitioner` is "iid" (equal random shares), "dirichlet" (per-class client shares drawn
    from Dirichlet(alpha): small alpha = strong label skew) or "shard" (label-sorted blocks,
    `shards_per_client` of them per client). The same seed always gives the same partition.
    """
    n = len(labels)
    if num_clients > n:
        raise ConfigError(
            f"data.num_clients = {num_clients}: more clients than training samples ({n}); "
            "use fewer clients or more data"
        )
    if partitioner == "iid":
        parts = _iid(labels, num_clients, seed)
    elif partitioner == "dirichlet":
        parts = _dirichlet(labels, num_clients, alpha, seed)
    elif partitioner == "shard":
        parts = _shard(labels, num_clients, shards_per_client, seed)
    else:
        raise ConfigError(
            f"data.partitioner = {partitioner!r}: must be one of {', '.join(PARTITIONERS)}"
        )
    # cheap guard against a partitioner losing or repeating rows (e.g. float underflow at tiny
    # alpha): training on a silently wrong partition would be far worse than stopping here
    flat = sorted(i for part in parts for i in part)
    if flat != list(range(n)) or min(len(part) for part in parts) == 0:
        raise ConfigError(
            f"data.partitioner = {partitioner!r}: could not split {n} samples into "
            f"{num_clients} non-empty client partitions; use fewer data.num_clients"
            + (" or a larger data.alpha" if partitioner == "dirichlet" else "")
        )
    return parts
