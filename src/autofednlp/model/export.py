"""Export a trained model so that it can be taken away, and load a run's model back.

`export/` holds:
- `model/`: the whole model as a Transformers folder (`hf_export.py`) with its tokenizer:
  `AutoModelForSequenceClassification` / `...ForTokenClassification` load it, no AutoFedNLP;
- `adapter/`: for lora and bottleneck, the adapter alone in PEFT's or the `adapters` library's
  format, with its head where that format has one (`adapter_export.py`);
- `README.md`: the model card (`card.py`);
- `autofednlp.json`: task, pooling, labels, what was trained and the base model (its hub id or
  folder name).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from autofednlp.model.build import load_trainable, resolve_model_path
from autofednlp.model.classifier import EncoderClassifier
from autofednlp.model.kinds import TuneSpec


def export_model(
    model: EncoderClassifier,
    spec: TuneSpec,
    label_names: list[str],
    model_name: str,
    out: Path,
    summary: dict[str, Any] | None = None,
    cfg: Any | None = None,
) -> Path:
    """Write `out/` as above. `model_name` is `model.name` of the configuration; `summary` and
    `cfg` (the run's) fill the model card."""
    from autofednlp.model.adapter_export import write_adapter
    from autofednlp.model.card import base_model_id, model_card
    from autofednlp.model.hf_export import write_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in ("head.json", "head.safetensors"):  # the layout before this one
        (out / old).unlink(missing_ok=True)
    base = base_model_id(model_name)
    model = model.eval()
    how = write_model(model, spec, label_names, out / "model")
    _save_tokenizer(resolve_model_path(model_name), out / "model")
    adapter = spec.kind if spec.kind in ("bottleneck", "lora") and spec.depth > 0 else None
    adapter_head = False
    if adapter is not None and not model.family.adapter_fits_base(model.encoder):
        adapter = "untied"  # the card says why there is no adapter alone
    if adapter in ("bottleneck", "lora"):
        adapter_head = write_adapter(model, spec, label_names, base, out / "adapter")
    info = {
        "base": base,
        "task": model.task.name,
        "pooling": model.pooling,
        "labels": list(label_names),
        "spec": {"kind": spec.kind, "depth": spec.depth, "width": spec.width},
        "lora_targets": list(model.lora_targets) if spec.kind == "lora" else [],
        "model": how,
        "adapter": adapter,
        "adapter_head": adapter_head,
        # what the base model's classifier needs to be this one's (PEFT loads it from `base`)
        "base_kwargs": {"num_labels": len(label_names), **model.family.hf_config},
    }
    (out / "autofednlp.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(info, summary, cfg), encoding="utf-8")
    return out


def _save_tokenizer(path: str, out: Path) -> None:
    """The base model's tokenizer beside the model, so the folder is complete (a model
    without a tokenizer, as tests build, is exported without one)."""
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(path).save_pretrained(str(out))
    except Exception as e:  # noqa: BLE001  (tokenizer loaders fail in many ways on a bare folder)
        logging.getLogger(__name__).info("no tokenizer exported: %s", e)


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
        tuple(cfg.tune.lora_targets),
    )
    load_trainable(model, state)
    return model.eval(), summary["label_names"], resolve_model_path(cfg.model.name)
