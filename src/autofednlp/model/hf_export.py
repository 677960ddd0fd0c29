"""The trained model as a Transformers model folder (`export/model/`), loadable with
`AutoModelForSequenceClassification` / `AutoModelForTokenClassification` and no AutoFedNLP.

LoRA is merged into the weights it adapts. When the head is one the family's own Transformers
class has (a token head; the first token through dense + tanh for BERT, RoBERTa, XLM-R, ALBERT,
DeBERTa-v2), the folder is that class, standard in every way. Otherwise (mean pooling, other
families' heads, bottleneck adapters, which cannot be merged) it holds a small bundled class
(`bundled/modeling_autofednlp.py`, loaded with `trust_remote_code=True`; its own model type, so
loading it without that flag fails loudly instead of building a different head). Either way the
export checks itself: the folder, loaded back, must predict what the trained network predicts.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from autofednlp.model.classifier import EncoderClassifier
from autofednlp.model.kinds import ADAPTER_NAME, TuneSpec

BUNDLED = Path(__file__).parent / "bundled" / "modeling_autofednlp.py"
TOLERANCE = 1e-4  # largest logit difference the self-check accepts (float32 reorderings)


def merged(model: EncoderClassifier) -> EncoderClassifier:
    """A copy of `model` with every LoRA module merged into the weight it adapts and removed,
    so its encoder is a plain Transformers encoder again."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = copy.deepcopy(model).eval()
    tuned = [(n, m) for n, m in out.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in tuned:
        module.merge()
        parent, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent), child, module.get_base_layer())
    return out


def probe_batch(model: EncoderClassifier) -> tuple[torch.Tensor, torch.Tensor]:
    """Two samples, the second padded: what the self-check compares predictions on."""
    config = model.encoder.config
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, min(config.vocab_size, 1000), (2, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    pad = getattr(config, "pad_token_id", None) or 0
    return ids.masked_fill(mask == 0, pad), mask


def write_model(model: EncoderClassifier, spec: TuneSpec, label_names: list[str], out: Path) -> str:
    """Write `out/` and return how to load it: "standard" or "bundled" (trust_remote_code)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    flat = merged(model)
    ids, mask = probe_batch(flat)
    with torch.no_grad():
        expected = flat(ids, mask)
    if spec.kind != "bottleneck" and _write_standard(flat, label_names, out, ids, mask, expected):
        return "standard"
    shutil.rmtree(out, ignore_errors=True)
    _write_bundled(flat, spec, label_names, out)
    got = _loaded_logits(out, flat.task.name, ids, mask, remote=True)
    if not torch.allclose(got, expected, atol=TOLERANCE):
        raise RuntimeError(f"export: {out} does not predict what the trained model predicts")
    return "bundled"


def _labels_config(label_names: list[str]) -> dict:
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }


def _auto_class(task: str):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    if task == "classification":
        return AutoModelForSequenceClassification
    return AutoModelForTokenClassification


def _write_standard(
    flat: EncoderClassifier,
    label_names: list[str],
    out: Path,
    ids: torch.Tensor,
    mask: torch.Tensor,
    expected: torch.Tensor,
) -> bool:
    """The family's own Transformers class with our weights, if it computes our head."""
    task = flat.task.name
    model_type = flat.encoder.config.model_type
    if task == "classification":
        if flat.head_dense is None or model_type not in flat.family.hf_cls_head:
            return False
        dense_path, out_path = flat.family.hf_cls_head[model_type]
    else:
        dense_path, out_path = None, "classifier"
    config = copy.deepcopy(flat.encoder.config)
    for key, value in {**_labels_config(label_names), **flat.family.hf_config}.items():
        setattr(config, key, value)
    hf = _auto_class(task).from_config(config).eval()
    missing, unexpected = hf.base_model.load_state_dict(flat.encoder.state_dict(), strict=False)
    if any(not k.startswith("pooler.") for k in [*missing, *unexpected]):
        return False  # the pooler is the only part a task's class may lack or add
    with torch.no_grad():
        if dense_path is not None:
            hf.get_submodule(dense_path).load_state_dict(flat.head_dense.state_dict())
        hf.get_submodule(out_path).load_state_dict(flat.classifier.state_dict())
        if not torch.allclose(
            hf(input_ids=ids, attention_mask=mask).logits, expected, atol=TOLERANCE
        ):
            return False
    hf.save_pretrained(out, safe_serialization=True)
    got = _loaded_logits(out, task, ids, mask, remote=False)
    return torch.allclose(got, expected, atol=TOLERANCE)


def _write_bundled(
    flat: EncoderClassifier, spec: TuneSpec, label_names: list[str], out: Path
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUNDLED, out / BUNDLED.name)
    module = BUNDLED.stem
    adapter = None
    if spec.kind == "bottleneck" and spec.depth > 0:
        adapter = {"name": ADAPTER_NAME, "config": _seqbn_kwargs(flat, spec)}
    encoder_config = flat.encoder.config.to_dict()
    encoder_config.pop("adapters", None)  # the adapters library's own record; `adapter` says it
    config = {
        "model_type": "autofednlp",
        "architectures": [
            "AutoFedNLPForSequenceClassification"
            if flat.task.name == "classification"
            else "AutoFedNLPForTokenClassification"
        ],
        "auto_map": {
            "AutoConfig": f"{module}.AutoFedNLPConfig",
            "AutoModelForSequenceClassification": f"{module}.AutoFedNLPForSequenceClassification",
            "AutoModelForTokenClassification": f"{module}.AutoFedNLPForTokenClassification",
        },
        "encoder": encoder_config,
        "task": flat.task.name,
        "pooling": flat.pooling,
        "adapter": adapter,
        **_labels_config(label_names),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    state = {k: v.detach().contiguous().clone() for k, v in _plain_state(flat).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def _seqbn_kwargs(flat: EncoderClassifier, spec: TuneSpec) -> dict:
    boundary = spec.boundary(flat.num_layers)
    hidden = flat.encoder.config.hidden_size
    return {"reduction_factor": hidden / spec.width, "leave_out": list(range(boundary))}


def _plain_state(flat: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without duplicates of a shared tensor (safetensors stores each once)."""
    seen: set[int] = set()
    state = {}
    for name, tensor in flat.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        state[name] = tensor
    return state


def _loaded_logits(
    folder: Path, task: str, ids: torch.Tensor, mask: torch.Tensor, remote: bool
) -> torch.Tensor:
    loaded = _auto_class(task).from_pretrained(str(folder), trust_remote_code=remote).eval()
    with torch.no_grad():
        return loaded(input_ids=ids, attention_mask=mask).logits
