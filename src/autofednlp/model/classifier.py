"""The network: a pretrained encoder run layer by layer, with the head of a task on top.

`family.embed` -> `family.run_layers(0, boundary)` without gradients (the cacheable part) ->
`family.run_layers(boundary, L)` -> `task.head`. Running the layers ourselves (instead of the
encoder's own forward) lets one code path serve plain training, training from cached boundary
activations, and evaluation, so cached and uncached passes compute exactly the same thing. The
encoder's layout comes from its family (`model/families/`), the head from the task
(`model/tasks.py`); the activation cache, the server's frozen features and the FLOP counter only
see the hidden states at a boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autofednlp.model.families import family_for
from autofednlp.model.tasks import Task, make_task


class EncoderClassifier(nn.Module):
    """`encoder` is a pretrained model of a supported family; `task` is a task name or a
    `Task` (pooling applies to classification)."""

    def __init__(
        self,
        encoder: nn.Module,
        num_labels: int,
        pooling: str = "mean",
        task: str | Task = "classification",
    ) -> None:
        super().__init__()
        self.family = family_for(encoder)
        self.lora_targets: tuple[str, ...] = self.family.lora_targets  # what LoRA adapts
        self.encoder = encoder
        self.task = make_task(task, pooling) if isinstance(task, str) else task
        self.pooling = pooling
        self.dropout = nn.Dropout(_dropout_rate(encoder.config))
        self.head_dense: nn.Linear | None = None
        self.classifier: nn.Linear
        self.task.build_head(self, encoder.config.hidden_size, num_labels, encoder)

    @property
    def layers(self) -> nn.ModuleList:
        return self.family.layers(self.encoder)

    @property
    def embeddings(self) -> nn.Module:
        return self.family.embeddings(self.encoder)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.family.embed(self.encoder, input_ids, attention_mask)

    def run_layers(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, end: int
    ) -> torch.Tensor:
        return self.family.run_layers(self.encoder, hidden, attention_mask, start, end)

    def classify(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The task's head on the last layer's hidden states: [B, C] or, per token, [B, T, C]."""
        return self.task.head(self, hidden, attention_mask)

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
            return self.embed(input_ids, attention_mask)
        return self.frozen_states(input_ids, attention_mask, [boundary])[boundary]

    def frozen_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, boundaries: Sequence[int]
    ) -> dict[int, torch.Tensor]:
        """Hidden states entering each of `boundaries`, in one pass up to the highest: the
        lower ones are on its way, so they cost nothing more to compute (dropout off, no
        gradients, as `frozen_forward`)."""
        stops = sorted(set(boundaries))
        if not stops or stops[0] < 0 or stops[-1] > self.num_layers:
            raise ValueError(f"boundaries {stops}: expected values in 0..{self.num_layers}")
        was_training = self.training
        self.embeddings.eval()
        for layer in self.layers[: stops[-1]]:
            layer.eval()
        out: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            hidden, at = self.embed(input_ids, attention_mask), 0
            for b in stops:
                hidden, at = self.run_layers(hidden, attention_mask, at, b), b
                out[b] = hidden
        if was_training:
            self.embeddings.train()
            for layer in self.layers[: stops[-1]]:
                layer.train()
        return out

    def embeddings_trainable(self) -> bool:
        return any(p.requires_grad for p in self.embeddings.parameters())


def _dropout_rate(config) -> float:
    """The encoder's own dropout rate for the head (families name it differently)."""
    for name in ("hidden_dropout_prob", "dropout", "classifier_dropout", "embedding_dropout"):
        value = getattr(config, name, None)
        if isinstance(value, float):
            return value
    return 0.1
