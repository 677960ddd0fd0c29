"""Metrics on hand-worked cases: entity F1 with seqeval's conventions, macro-F1, accuracy."""

import pytest

from autofednlp.report.metrics import accuracy, entities, entity_scores, macro_f1


def test_iob2_entity_scores_by_hand():
    # gold: PER(0-1), LOC(3); predicted: PER(0-1) right, ORG(3) wrong type
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"]]
    s = entity_scores(pred, gold)
    assert s["precision"] == pytest.approx(1 / 2)
    assert s["recall"] == pytest.approx(1 / 2)
    assert s["f1"] == pytest.approx(1 / 2)
    assert s["accuracy"] == pytest.approx(3 / 4)


def test_a_wrong_boundary_is_a_miss_and_micro_averaging_pools_sentences():
    gold = [["B-PER", "I-PER", "O"], ["B-LOC", "O"], ["O", "O"]]
    pred = [["B-PER", "O", "O"], ["B-LOC", "O"], ["B-LOC", "O"]]
    # sentence 1: PER(0-1) vs PER(0): a miss and a false positive; sentence 2: LOC right;
    # sentence 3: a false LOC. tp = 1, predicted = 3, gold = 2
    s = entity_scores(pred, gold)
    assert s["precision"] == pytest.approx(1 / 3)
    assert s["recall"] == pytest.approx(1 / 2)
    assert s["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_iob1_edge_cases():
    # IOB1: an entity may start with I-; B- only separates two adjacent entities of one type
    assert entities(["I-PER", "I-PER", "O", "I-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert entities(["I-PER", "B-PER"]) == [("PER", 0, 0), ("PER", 1, 1)]
    # an I- of another type starts a new entity (seqeval's default, conlleval-compatible)
    assert entities(["B-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]
    iob1_gold = [["I-PER", "I-PER", "O", "I-LOC"]]
    assert entity_scores([["B-PER", "I-PER", "O", "B-LOC"]], iob1_gold)["f1"] == 1.0
    # two adjacent PER entities read as one: no match at all
    assert entity_scores([["I-PER", "I-PER"]], [["I-PER", "B-PER"]])["f1"] == 0.0


def test_no_entities_anywhere_scores_zero_not_nan():
    s = entity_scores([["O", "O"]], [["O", "O"]])
    assert s["f1"] == 0.0 and s["accuracy"] == 1.0


def test_macro_f1_and_accuracy_by_hand():
    preds, golds = [0, 0, 1, 2], [0, 1, 1, 2]
    # class 0: tp 1 fp 1 fn 0 -> 2/3; class 1: tp 1 fp 0 fn 1 -> 2/3; class 2: 1
    assert macro_f1(preds, golds) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert accuracy(preds, golds) == 0.75
    # a class predicted but never present counts with F1 0 (scikit-learn's convention)
    assert macro_f1([0, 1], [0, 0]) == pytest.approx((2 / 3 + 0) / 2)
