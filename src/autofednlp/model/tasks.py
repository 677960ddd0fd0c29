"""What the network is trained to predict: a registry of tasks.

A task decides how a sample's labels are laid out (one per text, or one per word), which head
sits on the encoder, the loss, and the metrics. The round loop, the activation cache and the
cost model do not branch on it: the cache and the frozen features hold per-token hidden states
below the head whatever the task, and the FLOP counter asks the task where its head runs.

- classification: one label per text; the head pools the tokens (mean, or BERT's [CLS] pooler)
  and a linear layer classifies the pooled vector. Metrics: accuracy, macro-F1.
- tagging: one tag per word; the token head classifies every token's hidden state. The first
  sub-token of a word carries its tag, the others (and special tokens, padding) are labelled
  -100 and ignored by the loss and the metrics. Metrics: entity-level F1, precision, recall
  (seqeval's conventions) and token accuracy.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from autofednlp.report import metrics

IGNORE = -100  # label of a position the loss and the metrics skip (PyTorch's default)


class Task:
    """Base class. Head modules are set as attributes of the network (`head_dense`,
    `classifier`), so the names of the exchanged tensors do not depend on the task."""

    name: ClassVar[str]
    per_token: ClassVar[bool]  # the head runs on every token (cost model), labels are per word
    metric_names: ClassVar[tuple[str, ...]]

    def build_head(self, net: nn.Module, hidden: int, num_labels: int, encoder: nn.Module) -> None:
        net.classifier = nn.Linear(hidden, num_labels)

    def head(self, net: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss over the labelled positions of a batch (0, with a gradient, if none is:
        a batch whose words were all cut by truncation must not turn the weights into NaN)."""
        flat = labels.reshape(-1)
        if not bool((flat != IGNORE).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat)

    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        """Summed loss and the number of labelled positions it sums over."""
        flat = labels.reshape(-1)
        total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat, reduction="sum")
        return float(total), int((flat != IGNORE).sum())

    def sample_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each sample's loss (a tagged sentence's: the mean over its labelled tokens, 0 if
        none): what a paired comparison of two models on the same samples compares."""
        per = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            reduction="none",
            ignore_index=IGNORE,
        ).reshape(labels.shape)
        if per.dim() == 1:
            return per
        return per.sum(-1) / (labels != IGNORE).sum(-1).clamp(min=1)

    def sample_errors(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each sample's error on the target metric's terms: 1 for a wrong class, 0 for a
        right one; a tagged sentence's share of labelled tokens tagged wrong (0 if none), the
        per-sentence part of entity F1 that a paired comparison can average. Lower is better,
        as with `sample_losses`."""
        wrong = (logits.argmax(-1) != labels) & (labels != IGNORE)
        if wrong.dim() == 1:
            return wrong.float()
        return wrong.sum(-1).float() / (labels != IGNORE).sum(-1).clamp(min=1)

    def outcomes(self, logits: torch.Tensor, labels: torch.Tensor) -> list[tuple]:
        """Per sample, (predicted, gold) in the form `metrics` takes."""
        raise NotImplementedError

    def metrics(self, outcomes: list[tuple], label_names: list[str]) -> dict[str, float]:
        raise NotImplementedError


class ClassificationTask(Task):
    name = "classification"
    per_token = False
    metric_names = ("accuracy", "macro_f1")

    def __init__(self, pooling: str = "mean") -> None:
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling = {pooling!r}: must be mean or cls")
        self.pooling = pooling

    def build_head(self, net: nn.Module, hidden: int, num_labels: int, encoder: nn.Module) -> None:
        """With `cls` pooling, BERT's pooler (dense + tanh, from the pretrained weights) then a
        linear classifier, as in BERT's sequence classifier; with `mean` pooling (what sentence
        encoders such as MiniLM were trained for) the linear classifier alone, which keeps the
        exchanged head small (H x C instead of H x H + H x C)."""
        if self.pooling == "cls":
            net.head_dense = nn.Linear(hidden, hidden)
            pooler = getattr(encoder, "pooler", None)
            pooler = getattr(pooler, "dense", pooler)  # ALBERT's pooler is the linear itself
            if isinstance(pooler, nn.Linear):  # pretrained on the [CLS] token: start from it
                net.head_dense.load_state_dict(pooler.state_dict())
        net.classifier = nn.Linear(hidden, num_labels)

    def head(self, net: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if net.head_dense is not None:
            pooled = torch.tanh(net.head_dense(hidden[:, 0]))
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return net.classifier(net.dropout(pooled))

    def outcomes(self, logits: torch.Tensor, labels: torch.Tensor) -> list[tuple]:
        return list(zip(logits.argmax(-1).tolist(), labels.tolist()))

    def metrics(self, outcomes: list[tuple], label_names: list[str]) -> dict[str, float]:
        preds = [p for p, _ in outcomes]
        golds = [g for _, g in outcomes]
        return {
            "accuracy": metrics.accuracy(preds, golds),
            "macro_f1": metrics.macro_f1(preds, golds),
        }


class TaggingTask(Task):
    name = "tagging"
    per_token = True
    metric_names = ("f1", "precision", "recall", "accuracy")

    def __init__(self, pooling: str = "mean") -> None:
        pass  # a token head does not pool; the argument keeps one way of making a task

    def head(self, net: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return net.classifier(net.dropout(hidden))  # [B, T, C]

    def outcomes(self, logits: torch.Tensor, labels: torch.Tensor) -> list[tuple]:
        keep = labels != IGNORE
        preds = logits.argmax(-1)
        return [(p[k].tolist(), g[k].tolist()) for p, g, k in zip(preds, labels, keep)]

    def metrics(self, outcomes: list[tuple], label_names: list[str]) -> dict[str, float]:
        names = list(label_names)
        pred = [[names[i] for i in p] for p, _ in outcomes]
        gold = [[names[i] for i in g] for _, g in outcomes]
        return metrics.entity_scores(pred, gold)


_TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    if cls.name in _TASKS:
        raise ValueError(f"task {cls.name!r} is already registered")
    _TASKS[cls.name] = cls
    return cls


def make_task(name: str, pooling: str = "mean") -> Task:
    try:
        return _TASKS[name](pooling)
    except KeyError:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(sorted(_TASKS))})") from None


def task_names() -> list[str]:
    return sorted(_TASKS)


for _t in (ClassificationTask, TaggingTask):
    register(_t)
