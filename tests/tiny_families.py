"""A tiny random encoder of every supported family, built in code (no downloads): 3 layers,
hidden size 32, vocabulary 100. ALBERT and ELECTRA embed in 16 dimensions and project to 32;
DeBERTa is configured like v3 (relative positions in buckets, no absolute positions)."""

from __future__ import annotations

import pytest
import torch

VOCAB = 100
LAYERS = 3
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def _config(model_type: str):
    import transformers as tf

    if model_type == "bert":
        return tf.BertConfig(**COMMON)
    if model_type == "roberta":
        return tf.RobertaConfig(**{**COMMON, "max_position_embeddings": 66}, pad_token_id=1)
    if model_type == "xlm-roberta":
        return tf.XLMRobertaConfig(**{**COMMON, "max_position_embeddings": 66}, pad_token_id=1)
    if model_type == "electra":
        return tf.ElectraConfig(**COMMON, embedding_size=16)
    if model_type == "albert":
        return tf.AlbertConfig(**COMMON, embedding_size=16, num_hidden_groups=1)
    if model_type == "distilbert":
        return tf.DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=LAYERS, n_heads=4, hidden_dim=64,
            max_position_embeddings=64,
        )  # fmt: skip
    if model_type == "deberta-v2":
        return tf.DebertaV2Config(
            **COMMON, relative_attention=True, position_buckets=8, max_relative_positions=32,
            pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", share_att_key=True,
            position_biased_input=False, conv_kernel_size=3, type_vocab_size=0,
        )  # fmt: skip
    if model_type == "modernbert":
        return tf.ModernBertConfig(
            **COMMON, global_attn_every_n_layers=2, local_attention=4, pad_token_id=0,
            bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
            reference_compile=False,
        )  # fmt: skip
    raise KeyError(model_type)


FAMILY_TYPES = [
    "bert", "roberta", "xlm-roberta", "electra", "albert", "distilbert", "deberta-v2", "modernbert",
]  # fmt: skip


def tiny_encoder(model_type: str, seed: int = 0, attn: str | None = None):
    from transformers import AutoModel

    torch.manual_seed(seed)
    return AutoModel.from_config(_config(model_type), attn_implementation=attn).eval()


def tiny_batch(length: int = 12):
    """Three right-padded samples of different lengths, ids clear of the special tokens."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (3, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return ids, mask


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread than on several that contend (import it into a
    test module to apply it there)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def kinds_for(model_type: str) -> list:
    """Every tune kind that applies to `model_type`: bottleneck only where `adapters` has it."""
    from autofednlp.model.families import family_for
    from autofednlp.model.kinds import TuneSpec

    specs = [TuneSpec("full", 0), TuneSpec("freeze", 1), TuneSpec("lora", 2, 4)]
    if family_for(tiny_encoder(model_type)).bottleneck:
        specs.append(TuneSpec("bottleneck", 2, 8))
    return specs
