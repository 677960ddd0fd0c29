"""BERT's layout: `embeddings`, `encoder.layer[i]`, an additive [B, 1, 1, T] attention mask.

RoBERTa and XLM-R share it (their embeddings derive position ids from the padding in
`input_ids`, inside `embeddings`); ELECTRA too, with a projection from its embedding size to
its hidden size (`embeddings_project`) when the two differ. Sentence-transformers' MiniLM (the
packaged model) is a BERT.
"""

from __future__ import annotations

import torch
from torch import nn

from autofednlp.model.families import EncoderFamily, additive_mask, first, register


class BertFamily(EncoderFamily):
    name = "bert"
    model_types = ("bert", "roberta", "xlm-roberta", "electra")
    lora_targets = ("query", "value")
    layers_pattern = "layer"
    hf_cls_head = {  # ELECTRA's classifier uses gelu, not tanh: exported with the bundled class
        "bert": ("bert.pooler.dense", "classifier"),
        "roberta": ("classifier.dense", "classifier.out_proj"),
        "xlm-roberta": ("classifier.dense", "classifier.out_proj"),
    }

    def embeddings(self, encoder: nn.Module) -> nn.Module:
        project = getattr(encoder, "embeddings_project", None)
        if project is None:
            return encoder.embeddings
        return nn.ModuleList([encoder.embeddings, project])

    def layers(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.encoder.layer

    def embed(
        self,
        encoder: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = encoder.embeddings(input_ids=input_ids)
        project = getattr(encoder, "embeddings_project", None)
        return hidden if project is None else project(hidden)

    def run_layers(
        self,
        encoder: nn.Module,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        start: int,
        end: int,
    ) -> torch.Tensor:
        ext = additive_mask(attention_mask, hidden.dtype)
        for layer in self.layers(encoder)[start:end]:
            hidden = first(layer(hidden, ext))
        return hidden


register(BertFamily())
