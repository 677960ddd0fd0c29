"""DeBERTa-v2 and v3 (model type `deberta-v2`): `embeddings` (which zero the padded positions,
so they need the mask), `encoder.layer[i]`, and what the encoder computes once and hands to every
layer: the [B, 1, T, T] 0/1 mask, the relative positions and the (normalised) relative-position
embeddings of its disentangled attention. With `conv_kernel_size`, a convolution mixes the first
layer's output with its input."""

from __future__ import annotations

import torch
from torch import nn

from autofednlp.model.families import EncoderFamily, first, register


class DebertaV2Family(EncoderFamily):
    name = "deberta-v2"
    model_types = ("deberta-v2",)
    lora_targets = ("query_proj", "value_proj")
    layers_pattern = "layer"
    hf_cls_head = {"deberta-v2": ("pooler.dense", "classifier")}
    hf_config = {"pooler_hidden_act": "tanh"}  # its ContextPooler's activation is configurable

    def embeddings(self, encoder: nn.Module) -> nn.Module:
        """The embeddings and what every layer shares (relative-position embeddings, their
        norm, the first layer's convolution)."""
        enc = encoder.encoder
        shared = [getattr(enc, n, None) for n in ("rel_embeddings", "LayerNorm", "conv")]
        return nn.ModuleList([encoder.embeddings, *(m for m in shared if m is not None)])

    def layers(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.encoder.layer

    def embed(
        self,
        encoder: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return encoder.embeddings(
            input_ids=input_ids,
            token_type_ids=torch.zeros_like(input_ids),
            mask=attention_mask,
        )

    def run_layers(
        self,
        encoder: nn.Module,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        start: int,
        end: int,
    ) -> torch.Tensor:
        enc = encoder.encoder
        mask = enc.get_attention_mask(attention_mask)
        relative_pos = enc.get_rel_pos(hidden)
        rel_embeddings = enc.get_rel_embedding()
        for i in range(start, end):
            out = first(
                enc.layer[i](hidden, mask, relative_pos=relative_pos, rel_embeddings=rel_embeddings)
            )
            if i == 0 and enc.conv is not None:
                out = enc.conv(hidden, out, attention_mask)
            hidden = out
        return hidden

    def relative_positions(self, encoder: nn.Module) -> int:
        enc = encoder.encoder
        if not getattr(enc, "relative_attention", False):
            return 0
        return enc.rel_embeddings.num_embeddings


register(DebertaV2Family())
