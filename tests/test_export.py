"""What a user takes away, for every encoder family: `export/model` loads with Transformers
alone, `export/adapter` with PEFT or `adapters` alone, and both predict what the trained
network predicts; the model card names the base model without a path of this machine."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from tiny_families import (
    FAMILY_TYPES,
    one_thread,  # noqa: F401 (an autouse fixture: tiny models on 1 thread)
    tiny_batch,
    tiny_encoder,
)

from autofednlp.model.build import build_from_encoder
from autofednlp.model.export import export_model
from autofednlp.model.kinds import TuneSpec

LABELS = ["neg", "neu", "pos"]


def _cases():
    for t in FAMILY_TYPES:
        yield t, TuneSpec("lora", 2, 4), "classification", "cls"
        yield t, TuneSpec("lora", 1, 4), "tagging", "mean"
        if t == "modernbert":  # no bottleneck adapters in the `adapters` library
            yield t, TuneSpec("freeze", 1), "classification", "mean"
        else:
            yield t, TuneSpec("bottleneck", 2, 8), "classification", "mean"
    yield "bert", TuneSpec("bottleneck", 1, 8), "tagging", "mean"
    yield "deberta-v2", TuneSpec("bottleneck", 1, 8), "classification", "cls"
    yield "albert", TuneSpec("full", 0), "classification", "cls"


def _trained(model_type, spec, task, pooling):
    model = build_from_encoder(tiny_encoder(model_type), 3, spec, 0, pooling, task)
    with torch.no_grad():  # as if trained: every trained tensor moved
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _auto(task, peft=False):
    import transformers

    kind = "SequenceClassification" if task == "classification" else "TokenClassification"
    if peft:
        import peft as peft_lib

        return getattr(peft_lib, f"AutoPeftModelFor{kind}")
    return getattr(transformers, f"AutoModelFor{kind}")


def _head_apart(folder, hidden, mask, task, pooling):
    """The head as the card describes it, for an adapter exported without one."""
    head = load_file(str(folder / "head.safetensors"))
    if task == "classification" and pooling == "cls":
        hidden = torch.tanh(hidden[:, 0] @ head["head_dense.weight"].T + head["head_dense.bias"])
    elif task == "classification":
        m = mask.unsqueeze(-1).float()
        hidden = (hidden * m).sum(1) / m.sum(1)
    return hidden @ head["classifier.weight"].T + head["classifier.bias"]


@pytest.mark.parametrize("model_type, spec, task, pooling", list(_cases()))
def test_export_loads_with_the_libraries_alone_and_predicts_the_same(
    model_type, spec, task, pooling, tmp_path, monkeypatch
):
    model = _trained(model_type, spec, task, pooling)
    base_dir = tmp_path / f"tiny-{model_type}"
    tiny_encoder(model_type).save_pretrained(base_dir)  # the pretrained base, as on the hub
    out = export_model(model, spec, LABELS, str(base_dir), tmp_path / "export")
    ids, mask = tiny_batch()
    with torch.no_grad():
        ours = model(ids, mask)
    real = mask.bool() if task == "tagging" else slice(None)
    info = json.loads((out / "autofednlp.json").read_text())
    assert info["base"] == base_dir.name and info["labels"] == LABELS

    # (a) the whole model, Transformers alone
    remote = info["model"] == "bundled"
    loaded = _auto(task).from_pretrained(str(out / "model"), trust_remote_code=remote).eval()
    assert loaded.config.id2label[2] == "pos"
    with torch.no_grad():
        theirs = loaded(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(theirs[real], ours[real], rtol=1e-4, atol=1e-4)
    if not remote:
        assert loaded.config.model_type == model.encoder.config.model_type
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))  # safetensors only

    # (b) the adapter alone, its library alone, the base model found by its folder name
    monkeypatch.chdir(tmp_path)
    adapter = out / "adapter"
    if info["adapter"] == "lora":
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == base_dir.name
        assert config["task_type"] in ("SEQ_CLS", "TOKEN_CLS", "FEATURE_EXTRACTION")
        if info["adapter_head"]:
            kwargs = info["base_kwargs"]  # as the model card's snippet passes them
            peft_model = _auto(task, peft=True).from_pretrained(str(adapter), **kwargs).eval()
            with torch.no_grad():
                theirs = peft_model(input_ids=ids, attention_mask=mask).logits
        else:
            from peft import AutoPeftModelForFeatureExtraction

            encoder = AutoPeftModelForFeatureExtraction.from_pretrained(str(adapter)).eval()
            with torch.no_grad():
                hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            theirs = _head_apart(adapter, hidden, mask, task, pooling)
        torch.testing.assert_close(theirs[real], ours[real], rtol=1e-4, atol=1e-4)
    elif info["adapter"] == "bottleneck":
        from adapters import AutoAdapterModel

        flex = AutoAdapterModel.from_pretrained(base_dir.name)
        flex.set_active_adapters(flex.load_adapter(str(adapter), use_safetensors=True))
        flex.eval()
        with torch.no_grad():
            output = flex(input_ids=ids, attention_mask=mask)
        if info["adapter_head"]:
            theirs = output.logits
        else:
            theirs = _head_apart(adapter, output[0], mask, task, pooling)
        torch.testing.assert_close(theirs[real], ours[real], rtol=1e-4, atol=1e-4)
    else:
        assert not adapter.exists()
        assert info["adapter"] == ("untied" if model_type == "albert" and spec.depth else None)

    # (c) the model card
    card = (out / "README.md").read_text()
    assert f"base_model: {base_dir.name}" in card and "pos" in card
    assert str(tmp_path) not in card and os.path.expanduser("~") not in card


def test_model_card_reads_a_runs_summary():
    from autofednlp.model.card import base_model_id, model_card

    info = {
        "base": base_model_id("minilm"), "task": "classification", "pooling": "mean",
        "labels": ["a", "b"], "spec": {"kind": "lora", "depth": 1, "width": 4},
        "model": "standard", "adapter": "lora", "adapter_head": True,
        "base_kwargs": {"num_labels": 2},
    }  # fmt: skip
    summary = {
        "rounds": 3, "config": "lora(d=1,w=4)", "target_metric": "accuracy",
        "target_accuracy": 0.9, "time_to_accuracy": {"sim_time_s": 3.25, "round": 2},
        "sim_time_s": 5.0, "bytes_up": 1e6, "bytes_down": 2e6, "energy_j": 3.0,
        "trajectory": [{"config": "lora(d=1,w=4)", "sim_time_s": 2.0}], "test_accuracy": 0.5,
    }  # fmt: skip
    card = model_card(info, summary, None)
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    assert "accuracy 0.9000: 3.2 s (round 2)" in card and "| test_accuracy | 0.5000 |" in card
    assert "AutoPeftModelForSequenceClassification" in card and "num_labels=2" in card
    assert "1.00 MB up, 2.00 MB down" in card and "lora(d=1,w=4) at 2 s" in card
