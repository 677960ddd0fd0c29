"""Encoder families: how a pretrained encoder of one layout embeds and runs its layers.

The network (`model/classifier.py`) never touches an encoder's attributes itself: it asks the
family chosen from `config.model_type`. A family knows where the embeddings and the layer list
are, what a layer wants as its attention mask, and the names LoRA targets. A later issue adds
families (DistilBERT, ALBERT, DeBERTa); each is one file registering itself here.
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
    lora_targets: ClassVar[tuple[str, ...]]  # module names LoRA adapts
    layers_pattern: ClassVar[str]  # the name of the layer list, for PEFT's layers_to_transform

    def embeddings(self, encoder: nn.Module) -> nn.Module:
        raise NotImplementedError

    def layers(self, encoder: nn.Module) -> nn.ModuleList:
        raise NotImplementedError

    def embed(self, encoder: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
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

    def shape(self, encoder_config) -> tuple[int, int, int]:
        """(layers, hidden size, feed-forward size): what the FLOP counter needs."""
        return (
            encoder_config.num_hidden_layers,
            encoder_config.hidden_size,
            encoder_config.intermediate_size,
        )


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


def family_for(encoder: nn.Module) -> EncoderFamily:
    """The family of `encoder` (from its `config.model_type`); a `ConfigError` naming the
    supported types when there is none."""
    model_type = getattr(getattr(encoder, "config", None), "model_type", None)
    try:
        return _FAMILIES[model_type]
    except KeyError:
        raise ConfigError(
            f"model.name: model type {model_type!r} ({type(encoder).__name__}) is not supported "
            f"(supported: {', '.join(supported_model_types())})"
        ) from None


from autofednlp.model.families import bert  # noqa: E402,F401  (registers itself)
