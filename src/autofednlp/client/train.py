"""Local training and evaluation: plain PyTorch, no Flower."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from autofednlp.client.cache import ActivationCache
from autofednlp.config import ClientConfig
from autofednlp.cost.flops import (
    ModelShape,
    eval_flops,
    fill_cache_flops,
    train_step_flops,
)
from autofednlp.data.federated import TokenizedSplit
from autofednlp.data.tokenize import trim_batch
from autofednlp.model.classifier import EncoderClassifier
from autofednlp.model.spec import TuneSpec
from autofednlp.runtime import CPU, Runtime, backward_and_step


@dataclass(frozen=True)
class LocalResult:
    num_examples: int
    steps: int
    train_loss: float
    flops: float


def make_optimizer(
    params: list[nn.Parameter], cfg: ClientConfig, lr: float
) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def local_train(
    model: EncoderClassifier,
    data: TokenizedSplit,
    cfg: ClientConfig,
    lr: float,
    boundary: int,
    shape: ModelShape,
    spec: TuneSpec,
    seed: int,
    cache: ActivationCache | None = None,
    sample_ids: torch.Tensor | None = None,
    runtime: Runtime = CPU,
    proximal_mu: float = 0.0,
    max_steps: int = 0,
) -> LocalResult:
    """Train `model` in place for `cfg.local_epochs` over `data`; count the FLOPs executed.

    `seed` fixes the sample order and dropout, so a client's update does not depend on which
    process happens to run it. With a `cache` (and each sample's stable id in `sample_ids`),
    the frozen layers run only for samples the cache does not hold yet; the FLOP count charges
    those fills and, for every step, only the layers that actually ran. `model` must be on
    `runtime.device`; each batch is moved there. `proximal_mu` > 0 adds FedProx's proximal
    term mu/2 ||w - w_received||^2 over the trained parameters (Li et al., 2020); the reported
    loss is the task's alone. `max_steps` > 0 stops after that many steps (a trial's candidate
    given the time the current configuration's round takes); `num_examples` counts the samples
    actually trained on.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg, lr)
    anchor = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    scaler = runtime.grad_scaler()
    model.train()
    n = len(data)
    losses, steps, flops, seen = [], 0, 0.0, 0
    for _ in range(cfg.local_epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            if 0 < max_steps <= steps:
                break
            idx = order[start : start + cfg.batch_size]
            seen += len(idx)
            ids, mask = trim_batch(data.input_ids[idx], data.attention_mask[idx])
            labels = batch_labels(data.labels[idx], ids.shape[1])
            ids, mask, labels = runtime.to_device(ids, mask, labels)
            with runtime.autocast():
                if cache is not None:
                    hidden, misses = cache.hidden_for(model, boundary, sample_ids[idx], ids, mask)
                    logits = model(ids, mask, boundary=boundary, boundary_hidden=hidden)
                    flops += fill_cache_flops(shape, spec, misses, ids.shape[1])
                else:
                    logits = model(ids, mask, boundary=boundary)
            loss = model.task.loss(logits.float(), labels)
            objective = loss
            if anchor:
                prox = sum((p - a).pow(2).sum() for p, a in zip(params, anchor, strict=True))
                objective = loss + proximal_mu / 2 * prox
            opt.zero_grad(set_to_none=True)
            backward_and_step(objective, opt, params, cfg.max_grad_norm, scaler)
            losses.append(loss.detach())  # read once at the end: no GPU sync per step
            steps += 1
            flops += train_step_flops(shape, spec, len(idx), ids.shape[1], cached=cache is not None)
    total_loss = sum(torch.stack(losses).tolist()) if losses else 0.0
    return LocalResult(seen, steps, total_loss / max(steps, 1), flops)


def batch_labels(labels: torch.Tensor, width: int) -> torch.Tensor:
    """A batch's labels cut to its trimmed width: per-token labels (tagging) lose the columns
    `trim_batch` dropped, which are padding and so labelled -100."""
    return labels[:, :width] if labels.dim() == 2 else labels


@dataclass(frozen=True)
class EvalResult:
    """`loss` is per labelled sample (classification) or word (tagging); `metrics` holds the
    task's metrics (accuracy and macro_f1, or f1, precision, recall and token accuracy)."""

    loss: float
    accuracy: float
    num_examples: int
    flops: float
    metrics: dict[str, float] = field(default_factory=dict)
    sample_losses: torch.Tensor | None = None  # per sample, in data order (per_sample=True)
    sample_errors: torch.Tensor | None = None  # per sample, in data order (per_sample=True)


@torch.no_grad()
def evaluate(
    model: EncoderClassifier,
    data: TokenizedSplit,
    shape: ModelShape,
    spec: TuneSpec,
    batch_size: int = 64,
    boundary: int = 0,
    features: list[torch.Tensor] | None = None,
    label_names: list[str] | None = None,
    per_sample: bool = False,
    runtime: Runtime = CPU,
) -> EvalResult:
    """Loss and the task's metrics of `model` on `data` (dropout off).

    `features`, if given, holds for each batch the hidden states entering layer `boundary`
    (from `frozen_features`), so only the layers above it run. `label_names` (the tag names)
    are needed for entity-level scores. `per_sample` also returns each sample's loss (for
    paired comparisons of two models on the same samples) and its error on the target
    metric's terms (`Task.sample_errors`).
    """
    model.eval()
    task = model.task
    total_loss, counted, flops, outcomes, losses, errors = 0.0, 0, 0.0, [], [], []
    for i, start in enumerate(range(0, len(data), batch_size)):
        sl = slice(start, start + batch_size)
        ids, mask = trim_batch(data.input_ids[sl], data.attention_mask[sl])
        hidden = features[i] if features is not None else None
        labels = batch_labels(data.labels[sl], ids.shape[1])
        ids, mask, labels = runtime.to_device(ids, mask, labels)
        with runtime.autocast():
            logits = model(ids, mask, boundary=boundary, boundary_hidden=hidden).float()
        loss, n = task.loss_sum(logits, labels)
        total_loss, counted = total_loss + loss, counted + n
        outcomes += task.outcomes(logits, labels)
        if per_sample:
            losses.append(task.sample_losses(logits, labels).cpu())
            errors.append(task.sample_errors(logits, labels).cpu())
        flops += eval_flops(shape, spec, len(labels), ids.shape[1])
    names = list(label_names or [str(i) for i in range(model.classifier.out_features)])
    metrics = task.metrics(outcomes, names) if outcomes else {}
    return EvalResult(
        total_loss / max(counted, 1),
        metrics.get("accuracy", 0.0),
        len(data),
        flops,
        metrics,
        torch.cat(losses) if losses else None,
        torch.cat(errors) if errors else None,
    )


@torch.no_grad()
def frozen_features(
    model: EncoderClassifier,
    data: TokenizedSplit,
    boundary: int,
    batch_size: int = 64,
    runtime: Runtime = CPU,
) -> list[torch.Tensor]:
    """Per batch of `evaluate`, the hidden states entering layer `boundary`: a split's frozen
    part is the same every round, so the server computes it once (kept on `runtime.device`)."""
    out = []
    for start in range(0, len(data), batch_size):
        sl = slice(start, start + batch_size)
        ids, mask = trim_batch(data.input_ids[sl], data.attention_mask[sl])
        ids, mask = runtime.to_device(ids, mask)
        with runtime.autocast():
            out.append(model.frozen_forward(ids, mask, boundary))
    return out
