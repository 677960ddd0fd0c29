"""FLOPs a client actually executes, counted from the model's shape and what is trained.

Counting convention (one multiply-add = 2 FLOPs, as in Kaplan et al. 2020 and nanoGPT's
`estimate_mfu`): a dense layer with P weights costs 2*P FLOPs per token forward. Backward costs
2*P per token for the input gradient plus 2*P for the weight gradient, i.e. 2x forward for a
trained layer, 1x forward for a frozen layer the gradient only passes through.
Embedding look-ups, layer norms, softmax and biases are ignored (under 1% for BERT).
"""

from __future__ import annotations

from dataclasses import dataclass

from autofednlp.model.spec import TuneSpec


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a BERT-like encoder that decide its cost."""

    num_layers: int
    hidden: int
    intermediate: int
    num_labels: int = 2
    pooler: bool = True  # a dense H x H layer before the classifier (BERT's pooler)
    token_head: bool = False  # the head classifies every token (tagging), not one pooled vector
    lora_modules: int = 2  # projections per layer that LoRA adapts (the family's targets)

    @property
    def layer_weights(self) -> int:
        """Dense weights of one encoder layer: Q, K, V, O projections and the two FFN matrices."""
        return 4 * self.hidden * self.hidden + 2 * self.hidden * self.intermediate


BERT_BASE = ModelShape(num_layers=12, hidden=768, intermediate=3072)


def layer_forward_flops(shape: ModelShape, seq_len: int) -> float:
    """Forward FLOPs of one encoder layer for one sequence of `seq_len` tokens.

    2*P per token for the dense weights, plus 2*T*H each for the attention scores QK^T and
    for the weighted sum of V, per token.
    """
    dense = 2 * shape.layer_weights * seq_len
    attention = 2 * 2 * seq_len * seq_len * shape.hidden
    return float(dense + attention)


def head_weights(shape: ModelShape) -> int:
    """Classification head: the classifier (H x C), after a pooler (H x H) if there is one."""
    return shape.hidden * shape.hidden * shape.pooler + shape.hidden * shape.num_labels


def head_forward_flops(shape: ModelShape, seq_len: int) -> float:
    """Forward FLOPs of the head for one sequence: once on the pooled vector, or on every one
    of the `seq_len` tokens for a token head (tagging)."""
    return 2.0 * head_weights(shape) * (seq_len if shape.token_head else 1)


def train_step_flops(
    shape: ModelShape, spec: TuneSpec, batch: int, seq_len: int, cached: bool = False
) -> float:
    """FLOPs of one optimizer step on `batch` sequences of `seq_len` tokens.

    With `cached`, the frozen bottom layers are not run at all: their output comes from the
    activation cache, so only the trained top layers run forward.
    """
    d = spec.trained_layers(shape.num_layers)
    layer_f = layer_forward_flops(shape, seq_len)
    extra_f = 2.0 * spec.added_weights_per_layer(shape.hidden, shape.lora_modules) * seq_len
    frozen_layers = shape.num_layers - d
    forward = (0 if cached else frozen_layers * layer_f) + d * (layer_f + extra_f)
    # Trained layers: input gradients through every layer (1x), weight gradients (1x) for
    # the transformer weights when they are trained, and always for the adapter weights.
    backward = d * (layer_f + 2 * extra_f)
    if spec.trains_layer_weights:
        backward += d * layer_f
    head = head_forward_flops(shape, seq_len)  # forward 1x, backward 2x (input + weights)
    return batch * (forward + backward + 3 * head)


def fill_cache_flops(shape: ModelShape, spec: TuneSpec, batch: int, seq_len: int) -> float:
    """FLOPs of computing the frozen part once for `batch` sequences (to fill the cache)."""
    frozen = shape.num_layers - spec.trained_layers(shape.num_layers)
    return batch * frozen * layer_forward_flops(shape, seq_len)


def eval_flops(shape: ModelShape, spec: TuneSpec, batch: int, seq_len: int) -> float:
    """Forward-only FLOPs of classifying `batch` sequences."""
    d = spec.trained_layers(shape.num_layers)
    layer_f = layer_forward_flops(shape, seq_len)
    extra_f = 2.0 * spec.added_weights_per_layer(shape.hidden, shape.lora_modules) * seq_len
    return batch * (shape.num_layers * layer_f + d * extra_f + head_forward_flops(shape, seq_len))
