"""FLOPs a client actually executes, counted from the model's shape and what is trained.

Counting convention (one multiply-add = 2 FLOPs, as in Kaplan et al. 2020 and nanoGPT's
`estimate_mfu`): a dense layer with P weights costs 2*P FLOPs per token forward. Backward costs
2*P per token for the input gradient plus 2*P for the weight gradient, i.e. 2x forward for a
trained layer, 1x forward for a frozen layer the gradient only passes through.
Embedding look-ups, layer norms, softmax and biases are ignored (under 1% for BERT).

The shape is read from the encoder's own modules (`model/build.model_shape`), so a family's
layout counts as it is: ModernBERT's gated feed-forward, ALBERT's and ELECTRA's embedding
projection, DeBERTa's disentangled attention over its relative positions. `tests/test_flops.py`
checks every family's count against `torch.utils.flop_counter.FlopCounterMode`.
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
    dense_weights: int = 0  # weights of one layer's linear modules, as counted; 0: BERT's formula
    lora_dims: int = 0  # sum of inputs + outputs of the adapted modules; 0: lora_modules x 2H
    relative_positions: int = 0  # relative-position embeddings attention also scores (DeBERTa)
    embed_projection: int = 0  # weights of a projection from embedding to hidden size

    @property
    def layer_weights(self) -> int:
        """Dense weights of one encoder layer (BERT: Q, K, V, O and the two FFN matrices)."""
        if self.dense_weights:
            return self.dense_weights
        return 4 * self.hidden * self.hidden + 2 * self.hidden * self.intermediate


BERT_BASE = ModelShape(num_layers=12, hidden=768, intermediate=3072)


def layer_forward_flops(shape: ModelShape, seq_len: int) -> float:
    """Forward FLOPs of one encoder layer for one sequence of `seq_len` tokens.

    2*P per token for the dense weights, plus 2*T*H each for the attention scores QK^T and
    for the weighted sum of V, per token. DeBERTa's disentangled attention adds, per token, the
    content-to-position and position-to-content scores against its R relative-position
    embeddings (2*R*H each) and, per sequence, projecting those R embeddings to keys and
    queries (2 x 2*R*H*H; the library computes them once per batch, so this slightly
    overcounts batches of several sequences).
    """
    dense = 2 * shape.layer_weights * seq_len
    attention = 2 * 2 * seq_len * seq_len * shape.hidden
    r = shape.relative_positions
    relative = 2 * 2 * seq_len * r * shape.hidden + 2 * 2 * r * shape.hidden * shape.hidden
    return float(dense + attention + relative)


def head_weights(shape: ModelShape) -> int:
    """Classification head: the classifier (H x C), after a pooler (H x H) if there is one."""
    return shape.hidden * shape.hidden * shape.pooler + shape.hidden * shape.num_labels


def head_forward_flops(shape: ModelShape, seq_len: int) -> float:
    """Forward FLOPs of the head for one sequence: once on the pooled vector, or on every one
    of the `seq_len` tokens for a token head (tagging)."""
    return 2.0 * head_weights(shape) * (seq_len if shape.token_head else 1)


def added_weights_per_layer(shape: ModelShape, spec: TuneSpec) -> int:
    """Weights the tune kind adds to each trained layer (adapters, LoRA)."""
    if spec.kind == "lora" and shape.lora_dims:
        return shape.lora_dims * spec.width
    return spec.added_weights_per_layer(shape.hidden, shape.lora_modules)


def train_step_flops(
    shape: ModelShape, spec: TuneSpec, batch: int, seq_len: int, cached: bool = False
) -> float:
    """FLOPs of one optimizer step on `batch` sequences of `seq_len` tokens.

    With `cached`, the frozen bottom layers are not run at all: their output comes from the
    activation cache, so only the trained top layers run forward.
    """
    d = spec.trained_layers(shape.num_layers)
    layer_f = layer_forward_flops(shape, seq_len)
    extra_f = 2.0 * added_weights_per_layer(shape, spec) * seq_len
    frozen_layers = shape.num_layers - d
    project_f = 2.0 * shape.embed_projection * seq_len
    forward = (0 if cached else frozen_layers * layer_f + project_f) + d * (layer_f + extra_f)
    # Trained layers: input gradients through every layer (1x), weight gradients (1x) for
    # the transformer weights when they are trained, and always for the adapter weights.
    backward = d * (layer_f + 2 * extra_f)
    if spec.trains_layer_weights:
        backward += d * layer_f
    if spec.kind == "full":  # the gradient reaches the trained embedding projection
        backward += project_f
    head = head_forward_flops(shape, seq_len)  # forward 1x, backward 2x (input + weights)
    return batch * (forward + backward + 3 * head)


def fill_cache_flops(shape: ModelShape, spec: TuneSpec, batch: int, seq_len: int) -> float:
    """FLOPs of computing the frozen part once for `batch` sequences (to fill the cache)."""
    frozen = shape.num_layers - spec.trained_layers(shape.num_layers)
    return batch * (
        frozen * layer_forward_flops(shape, seq_len) + 2.0 * shape.embed_projection * seq_len
    )


def eval_flops(shape: ModelShape, spec: TuneSpec, batch: int, seq_len: int) -> float:
    """Forward-only FLOPs of classifying `batch` sequences."""
    d = spec.trained_layers(shape.num_layers)
    layer_f = layer_forward_flops(shape, seq_len)
    extra_f = 2.0 * added_weights_per_layer(shape, spec) * seq_len
    project_f = 2.0 * shape.embed_projection * seq_len
    return batch * (
        shape.num_layers * layer_f + project_f + d * extra_f + head_forward_flops(shape, seq_len)
    )
