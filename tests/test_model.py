"""Tune kinds on a tiny BERT built in code: what is trained, what travels, and exactness."""

import pytest
import torch

from autofednlp.config import ConfigError
from autofednlp.model.build import (
    build_model,
    load_trainable,
    state_bytes,
    trainable_state,
)
from autofednlp.model.kinds import TuneSpec, get_kind, kinds


@pytest.fixture
def batch():
    torch.manual_seed(1)
    ids = torch.randint(1000, 2000, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return ids, mask


def _layer_of(name):
    parts = name.split(".")
    return int(parts[parts.index("layer") + 1]) if "layer" in parts else None


@pytest.mark.parametrize(
    "spec, trained_layers",
    [
        (TuneSpec("full", 0), {None, 0, 1}),
        (TuneSpec("freeze", 1), {None, 1}),
        (TuneSpec("freeze", 0), {None}),
        (TuneSpec("bottleneck", 1, 8), {None, 1}),
        (TuneSpec("bottleneck", 2, 8), {None, 0, 1}),
        (TuneSpec("lora", 1, 4), {None, 1}),
    ],
)
def test_trainable_tensors_are_the_top_layers_and_head(tiny_model_dir, spec, trained_layers):
    model = build_model(tiny_model_dir, 3, spec, seed=0)
    state = trainable_state(model)
    assert {_layer_of(n) for n in state} == trained_layers
    assert any(n.startswith("classifier.") for n in state)
    if spec.kind == "bottleneck":
        assert all("adapters" in n for n in state if _layer_of(n) is not None)
        downs = [t for n, t in state.items() if "adapter_down" in n and n.endswith("weight")]
        assert {t.shape for t in downs} == {torch.Size([spec.width, 32])}
    if spec.kind == "lora":
        assert all("lora_" in n for n in state if _layer_of(n) is not None)


def test_exchanged_bytes_grow_with_depth_and_width(tiny_model_dir):
    def size(spec):
        return state_bytes(trainable_state(build_model(tiny_model_dir, 3, spec, seed=0)))

    head = size(TuneSpec("bottleneck", 0, 8))
    assert head == (32 * 3 + 3) * 4
    assert size(TuneSpec("bottleneck", 1, 8)) == head + (2 * 32 * 8 + 8 + 32) * 4
    assert size(TuneSpec("bottleneck", 2, 8)) > size(TuneSpec("bottleneck", 1, 8))
    assert size(TuneSpec("bottleneck", 1, 16)) > size(TuneSpec("bottleneck", 1, 8))
    assert size(TuneSpec("full", 0)) > 10 * size(TuneSpec("freeze", 1))


@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
def test_new_adapters_do_not_change_predictions(tiny_model_dir, batch, kind):
    ids, mask = batch
    plain = build_model(tiny_model_dir, 3, TuneSpec(kind, 0, 8), seed=0).eval()
    adapted = build_model(tiny_model_dir, 3, TuneSpec(kind, 2, 8), seed=0).eval()
    with torch.no_grad():
        assert torch.equal(plain(ids, mask), adapted(ids, mask))


def test_adapters_take_part_once_trained(tiny_model_dir, batch):
    ids, mask = batch
    model = build_model(tiny_model_dir, 3, TuneSpec("bottleneck", 2, 8), seed=0).eval()
    with torch.no_grad():
        before = model(ids, mask)
        for n, p in model.named_parameters():
            if "adapter_up" in n:
                p.normal_(std=0.5)
        assert not torch.allclose(before, model(ids, mask))


def test_boundary_forward_equals_plain_forward(tiny_model_dir, batch):
    ids, mask = batch
    model = build_model(tiny_model_dir, 3, TuneSpec("bottleneck", 1, 8), seed=0).eval()
    with torch.no_grad():
        hidden = model.frozen_forward(ids, mask, boundary=1)
        assert torch.allclose(
            model(ids, mask, boundary=1, boundary_hidden=hidden), model(ids, mask)
        )


def test_load_trainable_round_trip_and_shape_checks(tiny_model_dir):
    a = build_model(tiny_model_dir, 3, TuneSpec("bottleneck", 1, 8), seed=0)
    b = build_model(tiny_model_dir, 3, TuneSpec("bottleneck", 1, 8), seed=1)
    assert not all(torch.equal(v, trainable_state(b)[k]) for k, v in trainable_state(a).items())
    load_trainable(b, trainable_state(a))
    assert all(torch.equal(v, trainable_state(b)[k]) for k, v in trainable_state(a).items())
    wrong = trainable_state(a)
    wrong["classifier.weight"] = torch.zeros(4, 32)
    with pytest.raises(ValueError, match="classifier.weight"):
        load_trainable(b, wrong)
    with pytest.raises(ValueError, match="missing"):
        load_trainable(b, {})


def test_same_seed_same_initialisation(tiny_model_dir):
    s1 = trainable_state(build_model(tiny_model_dir, 3, TuneSpec("bottleneck", 1, 8), seed=7))
    s2 = trainable_state(build_model(tiny_model_dir, 3, TuneSpec("bottleneck", 1, 8), seed=7))
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_depth_beyond_the_model_is_a_config_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="tune.depth = 3: the model has only 2 layers"):
        build_model(tiny_model_dir, 3, TuneSpec("bottleneck", 3, 8), seed=0)


def test_unknown_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="model.name"):
        build_model(str(tmp_path / "no-such-model"), 3, TuneSpec("full", 0), seed=0)


def test_registry_rejects_duplicates_and_unknown_names():
    from autofednlp.model.kinds import FullKind, register

    assert {"full", "freeze", "bottleneck", "lora"} <= set(kinds())
    with pytest.raises(ValueError, match="already registered"):
        register(FullKind())
    with pytest.raises(ValueError, match="unknown tune kind"):
        get_kind("prefix")
