"""BERT's layout: `embeddings`, `encoder.layer[i]`, an additive [B, 1, 1, T] attention mask.

Sentence-transformers' MiniLM (the packaged model) is a BERT.
"""

from __future__ import annotations

import torch
from torch import nn

from autofednlp.model.families import EncoderFamily, register


def extended_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive [B, 1, 1, T] mask: 0 where attended, a large negative where padded."""
    ext = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - ext) * torch.finfo(dtype).min


class BertFamily(EncoderFamily):
    name = "bert"
    model_types = ("bert",)
    lora_targets = ("query", "value")
    layers_pattern = "layer"

    def embeddings(self, encoder: nn.Module) -> nn.Module:
        return encoder.embeddings

    def layers(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.encoder.layer

    def embed(self, encoder: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        return encoder.embeddings(input_ids=input_ids)

    def run_layers(
        self,
        encoder: nn.Module,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        start: int,
        end: int,
    ) -> torch.Tensor:
        ext = extended_mask(attention_mask, hidden.dtype)
        for layer in self.layers(encoder)[start:end]:
            out = layer(hidden, ext)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


register(BertFamily())
