"""Evaluation metrics: accuracy and macro-F1 for classes, entity-level F1 for tag sequences.

Entity scores follow `seqeval`'s default (conlleval-compatible) mode, the field's standard: an
entity is a maximal run of tags of one type that starts at a B- tag, or at an I- tag that does
not continue an entity of its type (so IOB1 data reads as intended); a predicted entity counts
only when its type, start and end all match a gold one; precision, recall and F1 are micro
averages over entities. Token accuracy counts the labelled (first sub-)tokens that are right.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence


def accuracy(preds: Sequence[int], golds: Sequence[int]) -> float:
    return sum(p == g for p, g in zip(preds, golds)) / max(len(golds), 1)


def macro_f1(preds: Sequence[int], golds: Sequence[int]) -> float:
    """Unweighted mean of the per-class F1 over the classes that occur in `golds` or `preds`
    (scikit-learn's `f1_score(average="macro")`); a class never predicted nor present has no
    F1 and does not count."""
    classes = sorted(set(golds) | set(preds))
    if not classes:
        return 0.0
    scores = []
    for c in classes:
        tp = sum(p == c and g == c for p, g in zip(preds, golds))
        fp = sum(p == c and g != c for p, g in zip(preds, golds))
        fn = sum(p != c and g == c for p, g in zip(preds, golds))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def entity_scores(
    pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Entity-level micro precision, recall and F1, and token accuracy, of tag sequences
    (strings such as "B-person", "I-person", "O"); 0.0 where a ratio is undefined."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    pred = [list(s) for s in pred_tags]
    gold = [list(s) for s in gold_tags]
    if sum(len(s) for s in gold) == 0:
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0, "accuracy": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns where a ratio is 0/0; we report 0
        return {
            "f1": float(f1_score(gold, pred, zero_division=0)),
            "precision": float(precision_score(gold, pred, zero_division=0)),
            "recall": float(recall_score(gold, pred, zero_division=0)),
            "accuracy": float(accuracy_score(gold, pred)),
        }


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) of each entity in one tag sequence, by the convention above."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(t, s, e) for t, s, e in get_entities(list(tags))]
