"""Turn texts into fixed-width token tensors, and trim a batch back to what it uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def tokenize_texts(
    texts: Sequence[str], tokenizer: Any, max_length: int
) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask`, LongTensors of shape [len(texts), max_length].

    One batched call (a fast tokenizer spreads it over threads), truncated and padded to
    `max_length` so that every split stacks into a single tensor.
    """
    if len(texts) == 0:
        empty = torch.zeros((0, max_length), dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty.clone()}
    enc = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_attention_mask=True,
        return_tensors="pt",
    )
    return {
        "input_ids": enc["input_ids"].long(),
        "attention_mask": enc["attention_mask"].long(),
    }


def trim_batch(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing columns that are padding in every row (views, no copy).

    Attention cost grows with sequence length, so a batch of short texts padded to
    `max_length` would otherwise pay for columns it does not use. Left padding is safe: its
    last column is never all padding, so nothing is cut.
    """
    used = attention_mask.bool().any(dim=0).nonzero()
    width = int(used.max()) + 1 if used.numel() else 1
    return input_ids[:, :width], attention_mask[:, :width]
