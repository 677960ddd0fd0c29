"""DistilBERT's layout: `embeddings`, `transformer.layer[i]` (a `TransformerBlock` taking `x` and
`attn_mask`). Its eager attention wants the [B, T] 0/1 mask itself, its SDPA attention an
additive mask it hands to `scaled_dot_product_attention`."""

from __future__ import annotations

import torch
from torch import nn

from autofednlp.model.families import EncoderFamily, additive_mask, first, register


class DistilBertFamily(EncoderFamily):
    name = "distilbert"
    model_types = ("distilbert",)
    lora_targets = ("q_lin", "v_lin")
    layers_pattern = "layer"

    def embeddings(self, encoder: nn.Module) -> nn.Module:
        return encoder.embeddings

    def layers(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.transformer.layer

    def embed(
        self,
        encoder: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return encoder.embeddings(input_ids)

    def run_layers(
        self,
        encoder: nn.Module,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        start: int,
        end: int,
    ) -> torch.Tensor:
        if encoder.config._attn_implementation == "eager":
            mask = attention_mask
        else:
            mask = additive_mask(attention_mask, hidden.dtype)
        for layer in self.layers(encoder)[start:end]:
            hidden = first(layer(hidden, attn_mask=mask))
        return hidden


register(DistilBertFamily())
