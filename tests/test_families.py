"""Every supported encoder family, on a tiny random model built in code: its layers run one by
one compute what the model's own forward does, the activation cache stays exact with every
tune kind that applies, new adapter capacity changes nothing, and what we cannot serve is
refused in one line."""

import pytest
import torch
import torch.nn.functional as F
from tiny_families import (
    FAMILY_TYPES,
    LAYERS,
    kinds_for,
    one_thread,  # noqa: F401 (an autouse fixture: tiny models on 1 thread)
    tiny_batch,
    tiny_encoder,
)

from autofednlp.client.cache import ActivationCache
from autofednlp.config import ConfigError
from autofednlp.data.tokenize import trim_batch
from autofednlp.model.build import build_from_encoder, trainable_state
from autofednlp.model.families import family_for, supported_model_types
from autofednlp.model.kinds import TuneSpec


def test_every_family_of_the_issue_is_supported():
    assert set(FAMILY_TYPES) <= set(supported_model_types())


@pytest.mark.parametrize("attn", [None, "eager"])  # the default (SDPA where supported)
@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_layer_by_layer_equals_the_models_own_forward(model_type, attn):
    encoder = tiny_encoder(model_type, attn=attn)
    family = family_for(encoder)
    ids, mask = tiny_batch()
    with torch.no_grad():
        hidden = family.embed(encoder, ids, mask)
        for i in range(LAYERS):  # one layer at a time, as the cache splits them
            hidden = family.run_layers(encoder, hidden, mask, i, i + 1)
        theirs = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()  # padded positions are masked out and never read
    torch.testing.assert_close(hidden[real], theirs[real], rtol=1e-5, atol=1e-5)


def _model(model_type, spec, task="classification"):
    model = build_from_encoder(tiny_encoder(model_type), 3, spec, seed=0, task=task)
    with torch.no_grad():  # move zero-initialised outputs so every gradient is non-trivial
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model


def _loss_and_grads(model, ids, mask, labels, boundary, hidden=None):
    torch.manual_seed(123)  # the same dropout masks in the trained layers for both passes
    model.zero_grad()
    loss = F.cross_entropy(model(ids, mask, boundary=boundary, boundary_hidden=hidden), labels)
    loss.backward()
    return loss.item(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_cached_step_matches_uncached_for_every_kind(model_type):
    ids, mask = tiny_batch()
    ids, mask = trim_batch(ids * mask, mask)
    labels = torch.tensor([0, 1, 2])
    for spec in kinds_for(model_type):
        if spec.kind == "full":
            continue  # nothing below the first layer is frozen: nothing to cache
        model = _model(model_type, spec).train()
        b = spec.boundary(LAYERS)
        cache = ActivationCache("ns", None, memory_budget_bytes=2**20)
        cache.hidden_for(model, b, torch.tensor([0, 1]), *trim_batch(ids[:2], mask[:2]))
        hidden, misses = cache.hidden_for(model, b, torch.arange(3), ids, mask)
        assert misses == 1
        loss_ref, grads_ref = _loss_and_grads(model, ids, mask, labels, b)
        loss, grads = _loss_and_grads(model, ids, mask, labels, b, hidden)
        assert abs(loss - loss_ref) < 1e-5, spec
        assert grads.keys() == grads_ref.keys() and len(grads) > 0
        for name, g in grads.items():
            assert g.abs().sum() > 0, (spec, name)
            torch.testing.assert_close(g, grads_ref[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_trained_tensors_are_the_top_layers_and_new_adapters_change_nothing(model_type):
    ids, mask = tiny_batch()
    plain = build_from_encoder(tiny_encoder(model_type), 3, TuneSpec("freeze", 0), seed=0).eval()
    with torch.no_grad():
        before = plain(ids, mask)
    for spec in kinds_for(model_type):
        model = build_from_encoder(tiny_encoder(model_type), 3, spec, seed=0).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(ids, mask), before, rtol=1e-5, atol=1e-6)
        if spec.kind == "full":
            continue
        trained = {id(p) for p in model.parameters() if p.requires_grad}
        for i, layer in enumerate(model.layers):
            is_trained = any(id(p) in trained for p in layer.parameters())
            assert is_trained == (i >= spec.boundary(LAYERS)), (spec, i)
        assert not any(p.requires_grad for p in model.embeddings.parameters())
        assert any(n.startswith("classifier.") for n in trainable_state(model))


def test_albert_keeps_its_shared_layer_when_every_weight_is_trained():
    full = build_from_encoder(tiny_encoder("albert"), 3, TuneSpec("full", 0), seed=0)
    assert len({id(m) for m in full.layers}) == 1
    frozen = build_from_encoder(tiny_encoder("albert"), 3, TuneSpec("freeze", 1), seed=0)
    assert len({id(m) for m in frozen.layers}) == LAYERS
    assert frozen.encoder.config.num_hidden_groups == LAYERS


def test_configured_lora_targets_and_their_one_line_refusal():
    model = build_from_encoder(
        tiny_encoder("bert"), 3, TuneSpec("lora", 1, 4), seed=0, lora_targets=("key", "dense")
    )
    names = [n for n in trainable_state(model) if "lora_A" in n]
    assert any(".key." in n for n in names) and not any(".query." in n for n in names)
    from autofednlp.model.build import lora_module_dims

    encoder = tiny_encoder("deberta-v2")
    with pytest.raises(ConfigError, match=r"tune.lora_targets = \['query'\]: .*query_proj"):
        lora_module_dims(encoder, family_for(encoder), ("query",))


def test_bottleneck_is_refused_where_the_adapters_library_has_no_support():
    with pytest.raises(ConfigError, match="tune.kind = 'bottleneck': .* modernbert"):
        build_from_encoder(tiny_encoder("modernbert"), 3, TuneSpec("bottleneck", 1, 8), seed=0)


def test_an_unsupported_family_is_one_line_naming_the_supported_ones():
    from transformers import GPT2Config, GPT2Model

    encoder = GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10))
    with pytest.raises(ConfigError) as err:
        family_for(encoder)
    line = str(err.value)
    assert "\n" not in line and "model type 'gpt2'" in line
    for t in FAMILY_TYPES:
        assert t in line


@pytest.mark.parametrize(
    "model_type, sets, fragments",
    [
        ("gpt2", [], ["model type 'gpt2'", "is not supported (supported: albert, bert,"]),
        ("modernbert", ['tune.kind="bottleneck"'], ["adapters library does not support"]),
        ("bert", ['tune.kind="lora"', 'tune.lora_targets=["q"]'], ["tune.lora_targets = ['q']"]),
    ],
)
def test_the_cli_refuses_before_the_run_in_one_line(tmp_path, capfd, model_type, sets, fragments):
    from small_run import small_overrides

    from autofednlp.cli import main

    if model_type == "gpt2":
        from transformers import GPT2Config, GPT2Model

        GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10)).save_pretrained(
            tmp_path / "m"
        )
    else:
        tiny_encoder(model_type).save_pretrained(tmp_path / "m")
    argv = [x for s in small_overrides(str(tmp_path / "m"), *sets) for x in ("--set", s)]
    assert main(["run", *argv, "--run-dir", str(tmp_path / "r"), "--quiet"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autofednlp: error: "), err
    for f in fragments:
        assert f in err[0], err[0]
    assert not (tmp_path / "r").exists()


def test_a_byte_level_bpe_tokenizer_reads_pre_split_words(tmp_path):
    """RoBERTa's and ModernBERT's tokenizers refuse pre-split words unless told to put a
    space before each; tagging asks for it."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    from autofednlp.data.tokenize import tokenize_words, words_tokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["Anna visited Oslo", "Bob likes tea"] * 5, vocab_size=300,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])  # fmt: skip
    bpe.save_model(str(tmp_path))
    RobertaTokenizerFast(
        str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")
    ).save_pretrained(tmp_path / "tok")
    tok = RobertaTokenizerFast.from_pretrained(tmp_path / "tok")
    with pytest.raises((ValueError, AssertionError), match="add_prefix_space"):
        tokenize_words([["Anna", "visited"]], [[1, 0]], tok, 8)
    enc, lost = tokenize_words([["Anna", "visited"]], [[1, 0]], words_tokenizer(tok), 8)
    assert lost == [0] and enc["labels"][0].tolist().count(1) == 1


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_frozen_states_in_one_pass_equal_each_boundary_alone(model_type):
    """The activation cache's lookahead stores lower boundaries from one frozen pass: each
    must be what a fill at that boundary computes (relative positions, first-layer convolution
    and sliding windows included)."""
    ids, mask = tiny_batch()
    ids, mask = trim_batch(ids * mask, mask)
    model = _model(model_type, TuneSpec("lora", 1, 4)).train()
    states = model.frozen_states(ids, mask, range(LAYERS))
    for b, h in states.items():
        torch.testing.assert_close(h, model.frozen_forward(ids, mask, b), rtol=0, atol=0)
