"""What is trained: a registry of tune kinds, each of which prepares a model for a spec.

A kind marks the trainable tensors of an `EncoderClassifier` (adding modules where it needs
them). New capacity that a kind adds starts with its output side at zero, so adding it does not
change the model's predictions.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from autofednlp.model.classifier import EncoderClassifier
from autofednlp.model.spec import TuneSpec

__all__ = ["ADAPTER_NAME", "TuneKind", "TuneSpec", "get_kind", "kinds", "register"]

ADAPTER_NAME = "autofednlp"


class TuneKind:
    """Base class: marks the head trainable; subclasses add what they train."""

    name: ClassVar[str]
    default_learning_rate: ClassVar[float]

    def apply(self, model: EncoderClassifier, spec: TuneSpec) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        for module in model.head_modules():
            for p in module.parameters():
                p.requires_grad_(True)


_KINDS: dict[str, TuneKind] = {}


def register(kind: TuneKind) -> TuneKind:
    if kind.name in _KINDS:
        raise ValueError(f"tune kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> TuneKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(
            f"unknown tune kind {name!r} (known: {', '.join(sorted(_KINDS))})"
        ) from None


def kinds() -> list[str]:
    return sorted(_KINDS)


class FullKind(TuneKind):
    """Vanilla FedNLP: every weight is trained and exchanged."""

    name = "full"
    default_learning_rate = 1e-4

    def apply(self, model: EncoderClassifier, spec: TuneSpec) -> None:
        for p in model.parameters():
            p.requires_grad_(True)


class FreezeKind(TuneKind):
    """Layer freezing: the top `depth` layers and the head are fine-tuned, the rest frozen."""

    name = "freeze"
    default_learning_rate = 5e-4

    def apply(self, model: EncoderClassifier, spec: TuneSpec) -> None:
        super().apply(model, spec)
        for layer in model.layers[spec.boundary(model.num_layers) :]:
            for p in layer.parameters():
                p.requires_grad_(True)


def _zero_output(module: nn.Module, names: tuple[str, ...]) -> None:
    for n, p in module.named_parameters():
        if any(k in n for k in names):
            nn.init.zeros_(p)


class AdapterKind(TuneKind):
    """Adds modules to the top `depth` layers and trains only those (plus the head).

    Subclasses `inject` the modules; the output side of what they add starts at zero
    (`zero_fragments`), so adding them leaves the model's predictions unchanged.
    """

    default_learning_rate = 5e-3
    trainable_fragment: ClassVar[str]  # names of the added parameters contain this
    zero_fragments: ClassVar[tuple[str, ...]]

    def inject(self, model: EncoderClassifier, spec: TuneSpec, boundary: int) -> None:
        raise NotImplementedError

    def apply(self, model: EncoderClassifier, spec: TuneSpec) -> None:
        boundary = spec.boundary(model.num_layers)
        if boundary < model.num_layers:
            self.inject(model, spec, boundary)
            _zero_output(model.encoder, self.zero_fragments)
        super().apply(model, spec)
        for name, p in model.encoder.named_parameters():
            if self.trainable_fragment in name:
                p.requires_grad_(True)


class BottleneckKind(AdapterKind):
    """Sequential bottleneck adapters (Houlsby-style, after the feed-forward block; the
    `adapters` library's SeqBnConfig) in the top `depth` layers."""

    name = "bottleneck"
    trainable_fragment = f"adapters.{ADAPTER_NAME}."
    zero_fragments = ("adapter_up",)

    def inject(self, model: EncoderClassifier, spec: TuneSpec, boundary: int) -> None:
        import adapters
        from adapters import SeqBnConfig

        hidden = model.encoder.config.hidden_size
        adapters.init(model.encoder)
        config = SeqBnConfig(reduction_factor=hidden / spec.width, leave_out=list(range(boundary)))
        model.encoder.add_adapter(ADAPTER_NAME, config=config, set_active=True)
        widths = {
            p.shape[0]
            for name, p in model.encoder.named_parameters()
            if "adapter_down" in name and name.endswith("weight")
        }
        if widths != {spec.width}:
            raise ValueError(f"adapters built with widths {widths}, expected {spec.width}")


class LoraKind(AdapterKind):
    """LoRA (peft) of rank `width` on the modules `tune.lora_targets` names, by default the
    encoder family's (BERT: the attention query and value projections), of the top `depth`
    layers."""

    name = "lora"
    trainable_fragment = "lora_"
    zero_fragments = ("lora_B",)  # peft's default too: stated, not assumed

    def inject(self, model: EncoderClassifier, spec: TuneSpec, boundary: int) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(
            r=spec.width,
            lora_alpha=spec.width,
            target_modules=list(model.lora_targets),
            layers_to_transform=list(range(boundary, model.num_layers)),
            layers_pattern=model.family.layers_pattern,
            lora_dropout=0.0,
        )
        inject_adapter_in_model(config, model.encoder)


for _k in (FullKind(), FreezeKind(), BottleneckKind(), LoraKind()):
    register(_k)
