"""Tagging raw text with a trained token head: words, a tag per word, entities with spans."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from autofednlp.model.classifier import EncoderClassifier
from autofednlp.report.metrics import entities

# words as tagging corpora split them: runs of word characters (with inner - or '), @handles
# and #tags, and each other non-space character on its own
_WORD = re.compile(r"[@#]?\w+(?:[-'’]\w+)*|[^\w\s]")


@dataclass(frozen=True)
class Entity:
    text: str
    type: str
    start: int  # character offsets into the text
    end: int


def split_words(text: str) -> list[re.Match]:
    return list(_WORD.finditer(text))


@torch.no_grad()
def tag_texts(
    model: EncoderClassifier,
    tokenizer: Any,
    tag_names: list[str],
    texts: list[str],
    max_length: int = 128,
) -> list[list[Entity]]:
    """The entities of each text: words split as above, each word tagged by its first
    sub-token, entities read from the tags by seqeval's conventions. Words past `max_length`
    tokens get no tag."""
    model.eval()
    out = []
    for text in texts:
        words = split_words(text)
        if not words:
            out.append([])
            continue
        enc = tokenizer(
            [w.group() for w in words],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        pred = model(enc["input_ids"], enc["attention_mask"])[0].argmax(-1).tolist()
        tags = ["O"] * len(words)
        seen: set[int] = set()
        for pos, w in enumerate(enc.word_ids(0)):
            if w is not None and w not in seen:
                seen.add(w)
                tags[w] = tag_names[pred[pos]]
        out.append(
            [
                Entity(text[words[s].start() : words[e].end()], t, words[s].start(), words[e].end())
                for t, s, e in entities(tags)
            ]
        )
    return out
