"""Turn texts into fixed-width token tensors, and trim a batch back to what it uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from autofednlp.config import ConfigError


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


IGNORE = -100  # the label of positions the loss and the metrics skip (model/tasks.py)


def words_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer to read pre-split words with. Byte-level BPE tokenizers (RoBERTa,
    ModernBERT) accept words only when told to put a space before each, as the word had in
    running text; the others as they are."""
    if getattr(tokenizer, "add_prefix_space", None) is False:
        return type(tokenizer).from_pretrained(tokenizer.name_or_path, add_prefix_space=True)
    return tokenizer


def tokenize_words(
    words: Sequence[Sequence[str]], tags: Sequence[Sequence[int]], tokenizer: Any, max_length: int
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Tagging: `input_ids`, `attention_mask` and per-token `labels` ([N, max_length] each),
    and for each sentence the number of words truncation at `max_length` cut.

    Words are tokenized as given (`is_split_into_words`), so a fast tokenizer's `word_ids()`
    says which word each token came from. The first sub-token of a word carries the word's tag;
    its other sub-tokens, special tokens and padding are labelled -100 and ignored.
    """
    n = len(words)
    if n == 0:
        empty = torch.zeros((0, max_length), dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty.clone(), "labels": empty.clone()}, []
    _require_fast(tokenizer)
    enc = tokenizer(
        [list(w) for w in words],
        is_split_into_words=True,
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_attention_mask=True,
        return_tensors="pt",
    )
    labels = torch.full((n, max_length), IGNORE, dtype=torch.long)
    cut = []
    full = enc["attention_mask"][:, -1].tolist()
    for i, sentence_tags in enumerate(tags):
        last = -1
        for pos, w in enumerate(enc.word_ids(i)):
            if w is not None and w > last:
                last = w
                labels[i, pos] = sentence_tags[w]
        # words after the last one with a token were cut; a word with no token in the middle
        # (one the tokenizer maps to nothing) is not truncation's doing
        cut.append(len(sentence_tags) - 1 - last if full[i] else 0)
    return {
        "input_ids": enc["input_ids"].long(),
        "attention_mask": enc["attention_mask"].long(),
        "labels": labels,
    }, cut


def first_overlong(
    words: Sequence[Sequence[str]], tokenizer: Any, max_length: int, chunk: int = 1024
) -> tuple[int, int] | None:
    """(index, tokens it needs) of the first sentence that needs more than `max_length` tokens,
    special tokens included; None if every sentence fits."""
    _require_fast(tokenizer)
    for start in range(0, len(words), chunk):
        piece = [list(w) for w in words[start : start + chunk]]
        # verbose=False: a sentence past the model's own limit is what we report, in one line
        ids = tokenizer(piece, is_split_into_words=True, truncation=False, verbose=False)
        for i, row in enumerate(ids["input_ids"]):
            if len(row) > max_length:
                return start + i, len(row)
    return None


def _require_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"model.name: its tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer; "
            "tagging needs one (word_ids() aligns tags with sub-tokens)"
        )


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
