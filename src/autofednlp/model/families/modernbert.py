"""ModernBERT's layout: `embeddings`, `layers[i]` with rotary positions, alternating global and
sliding-window attention (two additive masks the model builds), and a `final_norm` after the
last layer, which `run_layers` applies when its range ends there.

The `adapters` library has no ModernBERT support, so bottleneck adapters are refused for it;
LoRA adapts the fused query/key/value projection `Wqkv`. `torch.compile` of parts of the model
(`reference_compile`) is turned off: the layers are run one by one here.
"""

from __future__ import annotations

import torch
from torch import nn

from autofednlp.model.families import EncoderFamily, first, register


class ModernBertFamily(EncoderFamily):
    name = "modernbert"
    model_types = ("modernbert",)
    lora_targets = ("Wqkv",)
    layers_pattern = "layers"
    bottleneck = False
    norm_first = True

    def prepare(self, encoder: nn.Module, kind: str) -> None:
        encoder.config.reference_compile = False

    def embeddings(self, encoder: nn.Module) -> nn.Module:
        return encoder.embeddings

    def layers(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.layers

    def embed(
        self,
        encoder: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        encoder.config.reference_compile = False
        return encoder.embeddings(input_ids=input_ids)

    def run_layers(
        self,
        encoder: nn.Module,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        start: int,
        end: int,
    ) -> torch.Tensor:
        if start >= end:
            return hidden
        global_mask, window_mask = encoder._update_attention_mask(
            attention_mask, output_attentions=False
        )
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        for layer in encoder.layers[start:end]:
            hidden = first(
                layer(
                    hidden,
                    attention_mask=global_mask,
                    sliding_window_mask=window_mask,
                    position_ids=positions,
                )
            )
        if end == len(encoder.layers):
            hidden = encoder.final_norm(hidden)
        return hidden


register(ModernBertFamily())
