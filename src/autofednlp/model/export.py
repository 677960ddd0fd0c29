"""Export a trained model in the adapter libraries' own formats, loadable without AutoFedNLP,
and load a run's model back for prediction."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from autofednlp.model.build import load_trainable, resolve_model_path
from autofednlp.model.classifier import EncoderClassifier
from autofednlp.model.kinds import ADAPTER_NAME, TuneSpec


def export_model(
    model: EncoderClassifier, spec: TuneSpec, label_names: list[str], base_model: str, out: Path
) -> Path:
    """Write `out/` with:
    - `adapter/`: bottleneck adapters in the `adapters` library's format (`model.load_adapter`),
      or LoRA in PEFT's format (`PeftModel.from_pretrained`), when the kind has adapters;
    - `encoder/`: the whole fine-tuned encoder (`AutoModel.from_pretrained`) for full/freeze;
    - `head.safetensors` + `head.json`: the head (for tagging, the token head that classifies
      every token) and what it needs: task, pooling, labels (tags), base model.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    has_adapters = spec.kind in ("bottleneck", "lora") and spec.depth > 0
    if spec.kind == "bottleneck" and has_adapters:
        model.encoder.save_adapter(str(out / "adapter"), ADAPTER_NAME)
    elif spec.kind == "lora" and has_adapters:
        _save_peft(model, spec, out / "adapter")
    elif spec.kind in ("full", "freeze"):
        model.encoder.save_pretrained(out / "encoder")
    head = {f"classifier.{k}": v.contiguous() for k, v in model.classifier.state_dict().items()}
    if model.head_dense is not None:
        head.update(
            {f"head_dense.{k}": v.contiguous() for k, v in model.head_dense.state_dict().items()}
        )
    save_file(head, str(out / "head.safetensors"))
    meta = {
        "base_model": base_model,
        "task": model.task.name,
        "pooling": model.pooling,
        "labels": label_names,
        "spec": {"kind": spec.kind, "depth": spec.depth, "width": spec.width},
    }
    (out / "head.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def _save_peft(model: EncoderClassifier, spec: TuneSpec, path: Path) -> None:
    from peft import LoraConfig, get_peft_model_state_dict

    n = model.num_layers
    config = LoraConfig(
        r=spec.width,
        lora_alpha=spec.width,
        target_modules=list(model.family.lora_targets),
        layers_to_transform=list(range(n - spec.depth, n)),
        layers_pattern=model.family.layers_pattern,
        lora_dropout=0.0,
    )
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(path))
    state = get_peft_model_state_dict(model.encoder)
    save_file(
        {f"base_model.model.{k}": v.contiguous() for k, v in state.items()},
        str(path / "adapter_model.safetensors"),
    )


def load_run_model(run_dir: Path) -> tuple[EncoderClassifier, list[str], str]:
    """The final model of a run directory, its label names and its base model path."""
    from autofednlp.config import ConfigError, load_config
    from autofednlp.model.build import build_model

    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        cfg = load_config(run_dir / "config.toml")
        state = torch.load(run_dir / "trainable_state.pt", weights_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{str(run_dir)!r} holds no finished run ({e})") from None
    spec = TuneSpec(**summary["spec"])
    model = build_model(
        cfg.model.name,
        len(summary["label_names"]),
        spec,
        cfg.seed,
        cfg.model.pooling,
        cfg.data.task_name,
    )
    load_trainable(model, state)
    return model.eval(), summary["label_names"], resolve_model_path(cfg.model.name)
