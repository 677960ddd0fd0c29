"""The trained adapter alone, in its library's own format, with its head (`export/adapter/`).

- LoRA: a PEFT folder (`adapter_config.json` with `task_type`, `base_model_name_or_path` and
  the head in `modules_to_save`; `adapter_model.safetensors`), written by PEFT itself from the
  family's Transformers classifier, so `AutoPeftModelForSequenceClassification` (or
  `...ForTokenClassification`) loads it onto the base model.
- bottleneck: the `adapters` library's `save_adapter(..., with_head=True)` of a flex-head
  model (`AutoAdapterModel`) carrying our adapter and our head as its classification or
  tagging head; `load_adapter` on `AutoAdapterModel.from_pretrained(base)` loads both.

Where the head has no form in that library (mean pooling; a head the family's classifier does
not have) the adapter is written without it, for the bare encoder (PEFT's
`FEATURE_EXTRACTION`), and `head.safetensors` beside it holds the head; the model card says
how to apply it. Safetensors everywhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from autofednlp.model.classifier import EncoderClassifier
from autofednlp.model.hf_export import TOLERANCE, _auto_class, _labels_config, probe_batch
from autofednlp.model.kinds import ADAPTER_NAME, TuneSpec


def write_adapter(
    model: EncoderClassifier, spec: TuneSpec, label_names: list[str], base_name: str, out: Path
) -> bool:
    """Write `out/`; True when the head is inside the library's format, False when it is
    beside it in `head.safetensors`."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    if spec.kind == "lora":
        with_head = _write_peft(model, spec, label_names, base_name, out, _standard_head(model))
        if not with_head:
            _write_peft(model, spec, label_names, base_name, out, None)
    else:
        with_head = _write_adapters(model, spec, label_names, out)
    if not with_head:
        head = {f"classifier.{k}": v for k, v in model.classifier.state_dict().items()}
        if model.head_dense is not None:
            head.update({f"head_dense.{k}": v for k, v in model.head_dense.state_dict().items()})
        save_file({k: v.contiguous() for k, v in head.items()}, str(out / "head.safetensors"))
    return with_head


def _standard_head(model: EncoderClassifier) -> tuple[str | None, str] | None:
    """(dense, output) module paths of our head in the family's Transformers classifier."""
    if model.task.name != "classification":
        return None, "classifier"
    if model.head_dense is None:
        return None
    return model.family.hf_cls_head.get(model.encoder.config.model_type)


def _write_peft(
    model: EncoderClassifier,
    spec: TuneSpec,
    label_names: list[str],
    base_name: str,
    out: Path,
    head: tuple[str | None, str] | None,
) -> bool:
    """Write the PEFT folder, with `head` (module paths in the family's classifier) in
    `modules_to_save`, or for the bare encoder if `head` is None. False (and nothing written)
    if the classifier with our weights does not predict what `model` predicts."""
    from peft import LoraConfig, get_peft_model

    config = model.encoder.config.__class__.from_dict(
        {**model.encoder.config.to_dict(), **_labels_config(label_names), **model.family.hf_config}
    )
    if head is not None:
        base = _auto_class(model.task.name).from_config(config)
        task_type = "SEQ_CLS" if model.task.name == "classification" else "TOKEN_CLS"
        dense, outp = head
        modules = (
            ["classifier"] if dense is None or dense.startswith("classifier.") else [dense, outp]
        )
        prefix = base.base_model_prefix + "."
    else:
        from transformers import AutoModel

        base = AutoModel.from_config(config)
        task_type, modules, prefix = "FEATURE_EXTRACTION", None, ""
    missing, _ = base.load_state_dict(
        {prefix + k: v for k, v in _plain_encoder_state(model).items()}, strict=False
    )
    head_paths = tuple(p for p in (head or ()) if p)
    if any(not k.startswith(head_paths) and ".pooler." not in k for k in missing):
        return False  # the classifier has parts we did not train (ModernBERT's head)
    n = model.num_layers
    lora = LoraConfig(
        task_type=task_type,
        r=spec.width,
        lora_alpha=spec.width,
        target_modules=list(model.lora_targets),
        layers_to_transform=list(range(n - spec.depth, n)),
        layers_pattern=model.family.layers_pattern,
        lora_dropout=0.0,
        modules_to_save=modules,
    )
    if head is not None:  # into the classifier before PEFT copies it into `modules_to_save`
        dense, outp = head
        base.get_submodule(outp).load_state_dict(model.classifier.state_dict())
        if dense is not None:
            base.get_submodule(dense).load_state_dict(model.head_dense.state_dict())
    base.name_or_path = base_name
    peft_model = get_peft_model(base, lora)
    ours = {n: p for n, p in model.encoder.named_parameters() if "lora_" in n}
    theirs = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    lead = "base_model.model." + prefix
    if {n.removeprefix(lead) for n in theirs} != set(ours):
        raise RuntimeError(f"export: PEFT placed LoRA differently ({sorted(theirs)[:2]})")
    with torch.no_grad():
        for n, p in theirs.items():
            p.copy_(ours[n.removeprefix(lead)])
    if head is not None:
        ids, mask = probe_batch(model)
        with torch.no_grad():
            theirs = peft_model.eval()(input_ids=ids, attention_mask=mask).logits
            if not torch.allclose(theirs, model.eval()(ids, mask), atol=TOLERANCE):
                return False
    # the embeddings are not trained: no need to ask the hub whether the vocabulary grew
    peft_model.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=False)
    _set_json(out / "adapter_config.json", base_model_name_or_path=base_name)
    return head is not None


def _plain_encoder_state(model: EncoderClassifier) -> dict[str, torch.Tensor]:
    """The encoder's pretrained weights under their plain names (without LoRA's wrappers)."""
    state = {}
    for k, v in model.encoder.state_dict().items():
        if "lora_" in k:
            continue
        state[k.replace(".base_layer.", ".")] = v
    return state


def _write_adapters(
    model: EncoderClassifier, spec: TuneSpec, label_names: list[str], out: Path
) -> bool:
    import adapters
    from adapters import AutoAdapterModel, SeqBnConfig

    flex = AutoAdapterModel.from_config(model.encoder.config.__class__.from_dict(
        {k: v for k, v in model.encoder.config.to_dict().items() if k != "adapters"}
    ))  # fmt: skip
    del adapters
    boundary = spec.boundary(model.num_layers)
    hidden = model.encoder.config.hidden_size
    flex.add_adapter(
        ADAPTER_NAME,
        config=SeqBnConfig(reduction_factor=hidden / spec.width, leave_out=list(range(boundary))),
    )
    base = flex.base_model
    missing, unexpected = base.load_state_dict(model.encoder.state_dict(), strict=False)
    if unexpected or any(ADAPTER_NAME in k for k in missing):
        raise RuntimeError(f"export: the adapter model lacks {sorted(unexpected)[:3]}")
    # the flex heads read the first token (dense, tanh, linear) or classify every token, in
    # every family the library supports
    with_head = model.task.name != "classification" or model.head_dense is not None
    labels = dict(enumerate(label_names))
    if with_head and model.task.name == "classification":
        flex.add_classification_head(
            ADAPTER_NAME, num_labels=len(label_names), layers=2, activation_function="tanh",
            id2label=labels,
        )  # fmt: skip
        linears = [m for m in flex.heads[ADAPTER_NAME] if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            linears[0].load_state_dict(model.head_dense.state_dict())
            linears[-1].load_state_dict(model.classifier.state_dict())
    elif with_head:
        flex.add_tagging_head(ADAPTER_NAME, num_labels=len(label_names), layers=1, id2label=labels)
        linears = [m for m in flex.heads[ADAPTER_NAME] if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            linears[-1].load_state_dict(model.classifier.state_dict())
    flex.save_adapter(str(out), ADAPTER_NAME, with_head=with_head, use_safetensors=True)
    return with_head


def _set_json(path: Path, **values) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(values)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
