"""Local training and evaluation: plain PyTorch, no Flower."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autofednlp.client.cache import ActivationCache
from autofednlp.config import ClientConfig
from autofednlp.cost.flops import (
    ModelShape,
    TrainedPart,
    eval_flops,
    fill_cache_flops,
    train_step_flops,
)
from autofednlp.data.federated import TokenizedSplit
from autofednlp.data.tokenize import trim_batch
from autofednlp.model.classifier import EncoderClassifier
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
    part: TrainedPart,
    seed: int,
    cache: ActivationCache | None = None,
    sample_ids: torch.Tensor | None = None,
    runtime: Runtime = CPU,
) -> LocalResult:
    """Train `model` in place for `cfg.local_epochs` over `data`; count the FLOPs executed.

    `seed` fixes the sample order and dropout, so a client's update does not depend on which
    process happens to run it. With a `cache` (and each sample's stable id in `sample_ids`),
    the frozen layers run only for samples the cache does not hold yet; the FLOP count charges
    those fills and, for every step, only the layers that actually ran. `model` must be on
    `runtime.device`; each batch is moved there.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg, lr)
    loss_fn = nn.CrossEntropyLoss()
    scaler = runtime.grad_scaler()
    model.train()
    n = len(data)
    losses, steps, flops = [], 0, 0.0
    for _ in range(cfg.local_epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            ids, mask = trim_batch(data.input_ids[idx], data.attention_mask[idx])
            ids, mask, labels = runtime.to_device(ids, mask, data.labels[idx])
            with runtime.autocast():
                if cache is not None:
                    hidden, misses = cache.hidden_for(model, boundary, sample_ids[idx], ids, mask)
                    logits = model(ids, mask, boundary=boundary, boundary_hidden=hidden)
                    flops += fill_cache_flops(shape, part, misses, ids.shape[1])
                else:
                    logits = model(ids, mask, boundary=boundary)
            loss = loss_fn(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            backward_and_step(loss, opt, params, cfg.max_grad_norm, scaler)
            losses.append(loss.detach())  # read once at the end: no GPU sync per step
            steps += 1
            flops += train_step_flops(shape, part, len(idx), ids.shape[1], cached=cache is not None)
    total_loss = sum(torch.stack(losses).tolist()) if losses else 0.0
    return LocalResult(n * cfg.local_epochs, steps, total_loss / max(steps, 1), flops)


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int
    flops: float


@torch.no_grad()
def evaluate(
    model: EncoderClassifier,
    data: TokenizedSplit,
    shape: ModelShape,
    part: TrainedPart,
    batch_size: int = 64,
    boundary: int = 0,
    features: list[torch.Tensor] | None = None,
    runtime: Runtime = CPU,
) -> EvalResult:
    """Loss and accuracy of `model` (on `runtime.device`) on `data` (dropout off).

    `features`, if given, holds for each batch the hidden states entering layer `boundary`
    (from `frozen_features`), so only the layers above it run.
    """
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct, flops = 0.0, 0, 0.0
    for i, start in enumerate(range(0, len(data), batch_size)):
        sl = slice(start, start + batch_size)
        ids, mask = trim_batch(data.input_ids[sl], data.attention_mask[sl])
        ids, mask, labels = runtime.to_device(ids, mask, data.labels[sl])
        hidden = features[i] if features is not None else None
        with runtime.autocast():
            logits = model(ids, mask, boundary=boundary, boundary_hidden=hidden).float()
        total_loss += loss_fn(logits, labels).item()
        correct += (logits.argmax(-1) == labels).sum().item()
        flops += eval_flops(shape, part, len(labels), ids.shape[1])
    n = max(len(data), 1)
    return EvalResult(total_loss / n, correct / n, len(data), flops)


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
