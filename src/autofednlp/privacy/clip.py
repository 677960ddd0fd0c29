"""A client's update, its change to the weights it received, bounded and (local DP) noised.

Flower does the same for central DP (`compute_clip_model_update`, inside its server-side
wrapper); this is the client's side, on tensors, for local DP, where no Flower mod fits the
in-process engine (`LocalDpMod` wraps ClientApp messages and is parameterised by a per-release
epsilon, not by a noise multiplier). A test checks it against Flower's clipping.
"""

from __future__ import annotations

import math

import torch

State = dict[str, torch.Tensor]


def update_norm(reference: State, state: State) -> float:
    """L2 norm of `state - reference` over all tensors together (flat clipping)."""
    total = sum(
        float((state[k].double() - ref.double()).pow(2).sum()) for k, ref in reference.items()
    )
    return math.sqrt(total)


def clip_update(reference: State, state: State, clip_norm: float) -> State:
    """`reference` plus the update scaled down, if needed, to L2 norm `clip_norm`."""
    norm = update_norm(reference, state)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {
        k: (ref.double() + (state[k].double() - ref.double()) * scale).to(state[k].dtype)
        for k, ref in reference.items()
    }


def privatize_update(
    reference: State, state: State, clip_norm: float, noise_multiplier: float, seed: int
) -> State:
    """Local DP: the clipped update plus Gaussian noise of std noise_multiplier x clip_norm on
    every coordinate, drawn from a generator seeded by `seed` (the run's seed, round and
    client: a resumed run draws the same noise)."""
    gen = torch.Generator().manual_seed(seed)
    clipped = clip_update(reference, state, clip_norm)
    std = noise_multiplier * clip_norm
    return {
        k: t + (torch.randn(t.shape, generator=gen, dtype=torch.float64) * std).to(t.dtype)
        for k, t in clipped.items()
    }
