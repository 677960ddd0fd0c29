"""The FLOP counter against PyTorch's own count (`torch.utils.flop_counter.FlopCounterMode`) of
one real training step, for every encoder family and tune kind, with and without the activation
cache. Eager attention, so that the attention products are counted by PyTorch too (its count
skips CPU's fused attention kernel).

Tolerance: 6%. Full fine-tuning and layer freezing count exactly; LoRA overcounts a little (in
its lowest layer the keys need no gradient, which the counter does not model), as do
DeBERTa's adapters."""

import pytest
import torch
import torch.nn.functional as F
from tiny_families import (
    FAMILY_TYPES,
    LAYERS,
    VOCAB,
    kinds_for,
    one_thread,  # noqa: F401 (an autouse fixture: tiny models on 1 thread)
    tiny_encoder,
)
from torch.utils.flop_counter import FlopCounterMode

from autofednlp.cost.flops import train_step_flops
from autofednlp.model.build import build_from_encoder, shape_of

TOLERANCE = 0.06
BATCH, SEQ_LEN = 4, 32


def _counted_step(model, spec, cached):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (BATCH, SEQ_LEN), generator=gen)
    mask = torch.ones_like(ids)
    boundary = spec.boundary(LAYERS)
    hidden = model.frozen_forward(ids, mask, boundary) if cached else None
    with FlopCounterMode(display=False) as counter:
        logits = model(ids, mask, boundary=boundary, boundary_hidden=hidden)
        F.cross_entropy(logits, torch.zeros(BATCH, dtype=torch.long)).backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_counted_flops_match_pytorchs_count_of_a_real_step(model_type):
    shape = shape_of(tiny_encoder(model_type, attn="eager"), 3)
    for spec in kinds_for(model_type):
        for cached in (False, True) if spec.kind != "full" else (False,):
            model = build_from_encoder(tiny_encoder(model_type, attn="eager"), 3, spec, 0)
            torch_flops = _counted_step(model.train(), spec, cached)
            ours = train_step_flops(shape, spec, BATCH, SEQ_LEN, cached=cached)
            assert abs(ours / torch_flops - 1) <= TOLERANCE, (spec, cached, ours, torch_flops)
            if spec.kind in ("full", "freeze"):
                assert ours == pytest.approx(torch_flops, rel=1e-4), (spec, cached)
