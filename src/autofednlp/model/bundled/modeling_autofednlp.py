"""A classifier on a pretrained encoder, as AutoFedNLP trained it, for Transformers alone.

Written into an export folder when the trained head has no counterpart among the encoder's own
Transformers classes (mean pooling, a head the family's class does not have, bottleneck
adapters that cannot be merged into the weights). Load it with
`AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)` (or
`AutoModelForTokenClassification` for a tagger); it needs only `torch` and `transformers`, and
`adapters` when the folder's config names a bottleneck adapter. The encoder runs its own
forward; the head pools (mean over the attended tokens, or the first token through a dense
layer and tanh) and classifies, or classifies every token.
"""

import importlib

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput


class AutoFedNLPConfig(PretrainedConfig):
    model_type = "autofednlp"

    def __init__(self, encoder=None, task="classification", pooling="mean", adapter=None, **kw):
        super().__init__(**kw)
        self.encoder = encoder or {}  # the encoder's own config, as a dict
        self.task = task
        self.pooling = pooling
        self.adapter = adapter  # {"name": ..., "config": SeqBnConfig kwargs} or None


class AutoFedNLPModel(PreTrainedModel):
    config_class = AutoFedNLPConfig
    base_model_prefix = "encoder"

    def __init__(self, config):
        super().__init__(config)
        enc = dict(config.encoder)
        self.encoder = AutoModel.from_config(AutoConfig.for_model(enc.pop("model_type"), **enc))
        if config.adapter:
            adapters = importlib.import_module("adapters")  # only bottleneck exports need it
            adapters.init(self.encoder)
            name = config.adapter["name"]
            self.encoder.add_adapter(name, config=adapters.SeqBnConfig(**config.adapter["config"]))
            self.encoder.set_active_adapters(name)
        hidden = self.encoder.config.hidden_size
        pooled_by_dense = config.task == "classification" and config.pooling == "cls"
        self.head_dense = nn.Linear(hidden, hidden) if pooled_by_dense else None
        self.classifier = nn.Linear(hidden, config.num_labels)
        self.post_init()

    def logits(self, input_ids, attention_mask=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        if self.config.task != "classification":
            return self.classifier(hidden)
        if self.head_dense is not None:
            return self.classifier(torch.tanh(self.head_dense(hidden[:, 0])))
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.classifier((hidden * m).sum(1) / m.sum(1).clamp(min=1.0))

    def _loss(self, logits, labels):
        if labels is None:
            return None
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.view(-1))


class AutoFedNLPForSequenceClassification(AutoFedNLPModel):
    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        logits = self.logits(input_ids, attention_mask)
        return SequenceClassifierOutput(loss=self._loss(logits, labels), logits=logits)


class AutoFedNLPForTokenClassification(AutoFedNLPModel):
    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        logits = self.logits(input_ids, attention_mask)
        return TokenClassifierOutput(loss=self._loss(logits, labels), logits=logits)
