"""A pretrained encoder with a classification head, run layer by layer.

Running the layers ourselves (instead of the encoder's own forward) lets one code path serve
plain training, training from cached boundary activations, and evaluation, so cached and
uncached passes compute exactly the same thing.
"""

from __future__ import annotations

import torch
from torch import nn


class EncoderClassifier(nn.Module):
    """`encoder` is a BERT-like model (embeddings + encoder.layer list).

    Head: with `cls` pooling, BERT's pooler (dense + tanh, from the pretrained weights) then a
    linear classifier, as in BERT's sequence classifier; with `mean` pooling (what sentence
    encoders such as MiniLM were trained for) the linear classifier alone, which keeps the
    exchanged head small (H x C instead of H x H + H x C).
    """

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str = "mean") -> None:
        super().__init__()
        if not (hasattr(encoder, "embeddings") and hasattr(encoder, "encoder")):
            raise ValueError(
                f"{type(encoder).__name__} is not a BERT-like encoder (needs .embeddings and "
                ".encoder.layer)"
            )
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.pooling = pooling
        self.head_dense: nn.Linear | None = None
        if pooling == "cls":
            self.head_dense = nn.Linear(hidden, hidden)
            pooler = getattr(encoder, "pooler", None)
            if pooler is not None:  # pretrained on the [CLS] token: start from it
                self.head_dense.load_state_dict(pooler.dense.state_dict())
        self.dropout = nn.Dropout(encoder.config.hidden_dropout_prob)
        self.classifier = nn.Linear(hidden, num_labels)

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.encoder.layer

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder.embeddings(input_ids=input_ids)

    def extended_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive [B, 1, 1, T] mask: 0 where attended, a large negative where padded."""
        ext = attention_mask[:, None, None, :].to(dtype)
        return (1.0 - ext) * torch.finfo(dtype).min

    def run_layers(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, end: int
    ) -> torch.Tensor:
        ext = self.extended_mask(attention_mask, hidden.dtype)
        for layer in self.layers[start:end]:
            out = layer(hidden, ext)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def classify(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.head_dense is not None:
            pooled = torch.tanh(self.head_dense(hidden[:, 0]))
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.classifier(self.dropout(pooled))

    def head_modules(self) -> list[nn.Module]:
        return [m for m in (self.head_dense, self.classifier) if m is not None]

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor,
        boundary: int = 0,
        boundary_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits. Layers below `boundary` run without gradients and in eval mode (dropout
        off), so their output is a pure function of the input and can be cached; pass that
        output as `boundary_hidden` to skip them."""
        if boundary_hidden is None:
            boundary_hidden = self.frozen_forward(input_ids, attention_mask, boundary)
        hidden = self.run_layers(boundary_hidden, attention_mask, boundary, self.num_layers)
        return self.classify(hidden, attention_mask)

    def frozen_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, boundary: int
    ) -> torch.Tensor:
        """Hidden states entering layer `boundary`, computed deterministically."""
        if boundary == 0 and torch.is_grad_enabled() and self.embeddings_trainable():
            return self.embed(input_ids)
        was_training = self.training
        self.encoder.embeddings.eval()
        for layer in self.layers[:boundary]:
            layer.eval()
        with torch.no_grad():
            hidden = self.run_layers(self.embed(input_ids), attention_mask, 0, boundary)
        if was_training:
            self.encoder.embeddings.train()
            for layer in self.layers[:boundary]:
                layer.train()
        return hidden

    def embeddings_trainable(self) -> bool:
        return any(p.requires_grad for p in self.encoder.embeddings.parameters())
