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
    embed_projection: int = 0  # per-token weights outside the layers (a projection, a conv)
    norm_first: bool = False  # layers normalise their input first (pre-LN, ModernBERT)

    @property
    def layer_weights(self) -> int:
        """Dense weights of one encoder layer (BERT: Q, K, V, O and the two FFN matrices)."""
        if self.dense_weights:
            return self.dense_weights
        return 4 * self.hidden * self.hidden + 2 * self.hidden * self.intermediate


BERT_BASE = ModelShape(num_layers=12, hidden=768, intermediate=3072)


def dense_forward_flops(shape: ModelShape, seq_len: int) -> float:
    """Forward FLOPs of one layer's linear modules for one sequence: 2*P per token."""
    return 2.0 * shape.layer_weights * seq_len


def attention_forward_flops(shape: ModelShape, seq_len: int) -> float:
    """Forward FLOPs of one layer's attention products for one sequence: 2*T*H each for the
    scores QK^T and the weighted sum of V, per token; DeBERTa's disentangled attention adds the
    content-to-position and position-to-content scores against its R relative-position
    embeddings (2*R*H each per token)."""
    per_token = 2 * 2 * seq_len * shape.hidden + 2 * 2 * shape.relative_positions * shape.hidden
    return float(per_token * seq_len)


def relative_projection_flops(shape: ModelShape) -> float:
    """DeBERTa: projecting the R relative-position embeddings to keys and queries, once per
    layer and batch (not per sequence: the library shares them across the batch)."""
    return 2.0 * 2 * shape.relative_positions * shape.hidden * shape.hidden


def layer_forward_flops(shape: ModelShape, seq_len: int) -> float:
    """Forward FLOPs of one encoder layer for one sequence of `seq_len` tokens (without the
    per-batch relative-position projection)."""
    return dense_forward_flops(shape, seq_len) + attention_forward_flops(shape, seq_len)


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


def trained_layers_backward_flops(shape: ModelShape, spec: TuneSpec, seq_len: int) -> float:
    """Backward FLOPs of the trained layers for one sequence, as autograd runs it.

    A linear module costs 2*P per token for its input gradient and 2*P for its weight gradient
    (only when trained); each attention product has two inputs that both need gradients, so it
    costs twice its forward. Added adapter weights cost 2x their forward (input and weight
    gradients). The gradient stops at the lowest trained tensor: unless the embeddings are
    trained (`full`), the lowest trained layer skips the input gradients below it, which for a
    bottleneck adapter (at the layer's output) is the whole layer, and for LoRA and layer
    freezing the Q, K, V projections (3 H^2 weights), unless a trained norm sits before them
    (pre-norm layers under `freeze`).
    """
    d = spec.trained_layers(shape.num_layers)
    if d == 0:
        return 0.0
    dense_f = dense_forward_flops(shape, seq_len)
    attention_f = attention_forward_flops(shape, seq_len)
    extra_f = 2.0 * added_weights_per_layer(shape, spec) * seq_len
    weight_grads = dense_f if spec.trains_layer_weights else 0.0
    upper = dense_f + 2 * attention_f + weight_grads + 2 * extra_f
    if spec.kind == "full":
        return d * upper
    if spec.kind == "bottleneck":
        lowest = 2 * extra_f
    else:
        qkv_f = 2.0 * 3 * shape.hidden * shape.hidden * seq_len
        skipped = 0.0 if (shape.norm_first and spec.kind == "freeze") else qkv_f
        lowest = upper - skipped
    return (d - 1) * upper + lowest


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
    backward = trained_layers_backward_flops(shape, spec, seq_len)
    if spec.kind == "full":  # the gradient reaches the trained embedding projection
        backward += 2 * project_f
    head = head_forward_flops(shape, seq_len)  # forward 1x, backward 2x (input + weights)
    rel = relative_projection_flops(shape)
    per_batch = rel * ((0 if cached else frozen_layers) + d)
    if spec.trains_layer_weights:  # the projections' weights are the layers' key/query
        per_batch += rel * d * (2 if spec.kind == "full" else 1)
    return batch * (forward + backward + 3 * head) + per_batch


def fill_cache_flops(shape: ModelShape, spec: TuneSpec, batch: int, seq_len: int) -> float:
    """FLOPs of computing the frozen part once for `batch` sequences (to fill the cache)."""
    frozen = shape.num_layers - spec.trained_layers(shape.num_layers)
    per_seq = frozen * layer_forward_flops(shape, seq_len) + 2.0 * shape.embed_projection * seq_len
    return batch * per_seq + frozen * relative_projection_flops(shape)


def eval_flops(shape: ModelShape, spec: TuneSpec, batch: int, seq_len: int) -> float:
    """Forward-only FLOPs of classifying `batch` sequences."""
    d = spec.trained_layers(shape.num_layers)
    layer_f = layer_forward_flops(shape, seq_len)
    extra_f = 2.0 * added_weights_per_layer(shape, spec) * seq_len
    project_f = 2.0 * shape.embed_projection * seq_len
    per_seq = shape.num_layers * layer_f + project_f + d * extra_f
    per_seq += head_forward_flops(shape, seq_len)
    return batch * per_seq + shape.num_layers * relative_projection_flops(shape)
