"""FedAvg over client updates, with the checks that keep a bad update out."""

from __future__ import annotations

import math

import torch


class RejectedUpdate(ValueError):
    """A client's update that must not be averaged in; the message says why."""


def check_update(
    reference: dict[str, torch.Tensor], update: dict[str, torch.Tensor], num_examples: float
) -> None:
    """Raise `RejectedUpdate` unless `update` has exactly the reference's names and shapes,
    only finite values, and a positive example count."""
    if set(update) != set(reference):
        missing = sorted(set(reference) - set(update))[:2]
        extra = sorted(set(update) - set(reference))[:2]
        raise RejectedUpdate(f"tensor names differ (missing {missing}, unexpected {extra})")
    for name, ref in reference.items():
        t = update[name]
        if t.shape != ref.shape:
            raise RejectedUpdate(f"{name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        if not torch.isfinite(t).all():
            raise RejectedUpdate(f"{name} contains NaN or inf")
    if not (isinstance(num_examples, int | float) and math.isfinite(num_examples)) or (
        num_examples <= 0
    ):
        raise RejectedUpdate(f"num_examples = {num_examples!r} is not a positive count")


def fedavg(updates: list[tuple[dict[str, torch.Tensor], float]]) -> dict[str, torch.Tensor]:
    """Average of the updates weighted by their example counts (McMahan et al., 2017)."""
    if not updates:
        raise ValueError("fedavg needs at least one update")
    total = float(sum(w for _, w in updates))
    names = list(updates[0][0])
    out = {}
    for name in names:
        acc = torch.zeros_like(updates[0][0][name], dtype=torch.float64)
        for state, w in updates:
            acc += state[name].to(torch.float64) * (w / total)
        out[name] = acc.to(updates[0][0][name].dtype)
    return out
