"""ALBERT's layout: `embeddings` of a smaller size, projected to the hidden size by
`encoder.embedding_hidden_mapping_in`, then `num_hidden_layers` passes through
`encoder.albert_layer_groups` (usually one group whose weights every layer shares).

Shared weights cannot be trained in the top layers and frozen in the bottom ones: training them
would change the frozen layers too, and every cached activation with them. So unless every
weight is trained (`full`, which keeps ALBERT's sharing), the shared group is untied into one
copy per layer (`num_hidden_groups = num_hidden_layers`, a layout ALBERT's own config
expresses, so exports stay standard ALBERT models). Right after untying the model computes
exactly what it did.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from autofednlp.model.families import EncoderFamily, additive_mask, first, register


class AlbertFamily(EncoderFamily):
    name = "albert"
    model_types = ("albert",)
    lora_targets = ("query", "value")
    layers_pattern = "albert_layer_groups"
    hf_cls_head = {"albert": ("albert.pooler", "classifier")}

    def prepare(self, encoder: nn.Module, kind: str) -> None:
        config = encoder.config
        n = config.num_hidden_layers
        if kind == "full" or config.num_hidden_groups == n:
            return
        groups = encoder.encoder.albert_layer_groups
        per_group = n / config.num_hidden_groups
        encoder.encoder.albert_layer_groups = nn.ModuleList(
            copy.deepcopy(groups[int(i / per_group)]) for i in range(n)
        )
        config.num_hidden_groups = n
        encoder.autofednlp_untied = True  # a module attribute: not saved with the config

    def adapter_fits_base(self, encoder: nn.Module) -> bool:
        return not getattr(encoder, "autofednlp_untied", False)

    def embeddings(self, encoder: nn.Module) -> nn.Module:
        return nn.ModuleList([encoder.embeddings, encoder.encoder.embedding_hidden_mapping_in])

    def layers(self, encoder: nn.Module) -> nn.ModuleList:
        """One entry per layer; entries are the same module while the weights are shared."""
        config = encoder.config
        groups = encoder.encoder.albert_layer_groups
        per_group = config.num_hidden_layers / config.num_hidden_groups
        if len(groups) == config.num_hidden_layers:
            return groups
        return nn.ModuleList(groups[int(i / per_group)] for i in range(config.num_hidden_layers))

    def embed(
        self,
        encoder: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return encoder.encoder.embedding_hidden_mapping_in(encoder.embeddings(input_ids=input_ids))

    def run_layers(
        self,
        encoder: nn.Module,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        start: int,
        end: int,
    ) -> torch.Tensor:
        ext = additive_mask(attention_mask, hidden.dtype)
        heads = [None] * encoder.config.inner_group_num
        for group in self.layers(encoder)[start:end]:
            hidden = first(group(hidden, ext, heads))
        return hidden


register(AlbertFamily())
