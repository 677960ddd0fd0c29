"""Function-preserving growth of trained tensors from one (depth, width) to a larger one.

Every tensor of the old configuration is copied into the matching leading slice of the new
one. New capacity keeps the new model's initialisation, whose output side (adapter up
projections, LoRA B) is zero, so right after an upgrade the model predicts exactly as before.
"""

from __future__ import annotations

import torch

from autofednlp.model.kinds import TuneSpec


def check_growth(old: TuneSpec, new: TuneSpec) -> None:
    if old.kind != new.kind:
        raise ValueError(f"cannot grow {old.label()} into {new.label()}: different kinds")
    if new.depth < old.depth or new.width < old.width:
        raise ValueError(f"configurations only grow: {old.label()} -> {new.label()}")


def grow_state(
    old_state: dict[str, torch.Tensor],
    new_init: dict[str, torch.Tensor],
    old: TuneSpec,
    new: TuneSpec,
) -> dict[str, torch.Tensor]:
    """`new_init` (a fresh model's trainable state for `new`) with `old_state` copied in."""
    check_growth(old, new)
    out = {name: t.clone() for name, t in new_init.items()}
    for name, t in old_state.items():
        if name not in out:
            raise ValueError(f"{name} of {old.label()} has no place in {new.label()}")
        target = out[name]
        if t.dim() != target.dim() or any(a > b for a, b in zip(t.shape, target.shape)):
            raise ValueError(f"{name}: {tuple(t.shape)} does not fit in {tuple(target.shape)}")
        target[tuple(slice(0, n) for n in t.shape)] = t
    return out
