"""Where data enters: raw corpora, splits, client partitions and tokenized tensors.

The rest of the package needs only `load_federated_data` and what it returns.
"""

from autofednlp.data.federated import FederatedData, TokenizedSplit, load_federated_data

__all__ = ["FederatedData", "TokenizedSplit", "load_federated_data"]
