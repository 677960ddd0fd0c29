"""Encoder families: how a pretrained encoder of one layout embeds and runs its layers.

The network (`model/classifier.py`) never touches an encoder's attributes itself: it asks the
family chosen from `config.model_type`. A family knows where the embeddings and the layer list
are, what a layer wants besides the hidden states (a mask format, relative positions, rotary
position ids), what runs before the first layer (an embedding projection) or after the last (a
final norm), and the module names LoRA targets. Each family is one file registering itself here;
adding one is that file plus its entry in the per-family tests (`tests/test_families.py`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from autofednlp.config import ConfigError


class EncoderFamily:
    """Base class; a subclass serves the `model_types` it lists."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    lora_targets: ClassVar[tuple[str, ...]]  # default module names LoRA adapts
    layers_pattern: ClassVar[str]  # the name of the layer list, for PEFT's layers_to_transform
    bottleneck: ClassVar[bool] = True  # the `adapters` library supports the family
    norm_first: ClassVar[bool] = False  # pre-LN layers (the cost model's backward depends on it)
    # model type -> (dense, output) modules of its Transformers sequence classifier, where that
    # classifier is ours with `cls` pooling (first token, dense, tanh, linear): exports use it
    hf_cls_head: ClassVar[dict[str, tuple[str, str]]] = {}
    hf_config: ClassVar[dict[str, object]] = {}  # config settings that make it so

    def prepare(self, encoder: nn.Module, kind: str) -> None:
        """Adjust a freshly loaded encoder before a tune kind is applied (default: nothing)."""

    def embeddings(self, encoder: nn.Module) -> nn.Module:
        """Everything that runs before the first layer (and what every layer shares), as one
        module: what must be frozen for the activation cache to be valid."""
        raise NotImplementedError

    def layers(self, encoder: nn.Module) -> nn.ModuleList:
        raise NotImplementedError

    def embed(
        self,
        encoder: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def run_layers(
        self,
        encoder: nn.Module,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        start: int,
        end: int,
    ) -> torch.Tensor:
        raise NotImplementedError

    def adapter_fits_base(self, encoder: nn.Module) -> bool:
        """Whether an adapter trained on `encoder` applies to the pretrained model as published
        (not when `prepare` changed the layout)."""
        return True

    def relative_positions(self, encoder: nn.Module) -> int:
        """Relative-position embeddings each attention also scores against (DeBERTa); 0 if none."""
        return 0


_FAMILIES: dict[str, EncoderFamily] = {}


def register(family: EncoderFamily) -> EncoderFamily:
    for t in family.model_types:
        if t in _FAMILIES:
            raise ValueError(f"model type {t!r} is already served by {_FAMILIES[t].name!r}")
    for t in family.model_types:
        _FAMILIES[t] = family
    return family


def supported_model_types() -> list[str]:
    return sorted(_FAMILIES)


def family_of_type(model_type: str | None, what: str = "") -> EncoderFamily:
    """The family serving `model_type`; a `ConfigError` naming the supported types if none."""
    try:
        return _FAMILIES[model_type]
    except KeyError:
        raise ConfigError(
            f"model.name: model type {model_type!r}{what} is not supported "
            f"(supported: {', '.join(supported_model_types())})"
        ) from None


def family_for(encoder: nn.Module) -> EncoderFamily:
    """The family of `encoder` (from its `config.model_type`); a `ConfigError` naming the
    supported types when there is none."""
    model_type = getattr(getattr(encoder, "config", None), "model_type", None)
    return family_of_type(model_type, f" ({type(encoder).__name__})")


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive [B, 1, 1, T] mask: 0 where attended, a large negative where padded (what BERT's
    eager and SDPA attentions both accept)."""
    ext = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - ext) * torch.finfo(dtype).min


def first(out) -> torch.Tensor:
    """A layer's hidden states, whether it returns a tensor or a tuple."""
    return out[0] if isinstance(out, tuple) else out


from autofednlp.model.families import (  # noqa: E402,F401  (each registers itself)
    albert,
    bert,
    deberta,
    distilbert,
    modernbert,
)
