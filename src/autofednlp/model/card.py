"""The model card (`export/README.md`): what a person taking the model away needs to know.

Base model as a hub id when it came from the hub (the packaged MiniLM is
`sentence-transformers/all-MiniLM-L6-v2`), else the name of its folder: never a path of the
machine that trained it. Then how to load each part, the data, the task and labels, the
configuration and how it grew, the metrics, and what training cost on the simulated devices.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PACKAGED_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def base_model_id(model_name: str) -> str:
    """`minilm` -> its hub id; a local directory -> its folder name; a hub id as it is."""
    if model_name == "minilm":
        return PACKAGED_HUB_ID
    if os.path.isdir(model_name):
        return Path(model_name.rstrip("/\\")).name
    return model_name


def dataset_name(dataset: str) -> str:
    """A file is named by its file name alone; bundled and hub names as they are."""
    if os.sep in dataset or "/" in dataset and os.path.exists(dataset):
        return Path(dataset).name
    return dataset


def _loader(task: str) -> str:
    kind = "SequenceClassification" if task == "classification" else "TokenClassification"
    return f"AutoModelFor{kind}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "—" if value is None else str(value)


def model_card(info: dict[str, Any], summary: dict[str, Any] | None, cfg: Any | None) -> str:
    """`info`: base (id), task, pooling, labels, spec (dict), model ("standard" / "bundled"),
    adapter (None, "lora" or "bottleneck"), adapter_head (bool)."""
    task, base = info["task"], info["base"]
    loader = _loader(task)
    remote = ", trust_remote_code=True" if info["model"] == "bundled" else ""
    pipeline = "text-classification" if task == "classification" else "token-classification"
    lines = [
        "---",
        f"base_model: {base}",
        "library_name: transformers",
        f"pipeline_tag: {pipeline}",
        "tags: [autofednlp, federated-learning]",
        "---",
        "",
        f"# {(summary or {}).get('name') or 'model'}: {base}, fine-tuned federatedly",
        "",
        f"Task: **{task}**"
        + (
            f" ({info['pooling']} pooling)"
            if task == "classification"
            else " (a tag per word; the first sub-token of each word carries its tag)"
        ),
        f"Labels ({len(info['labels'])}): {', '.join(f'`{x}`' for x in info['labels'])}",
        "",
        "## Use it",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {loader}",
        f'model = {loader}.from_pretrained("model"{remote})',
        'tokenizer = AutoTokenizer.from_pretrained("model")',
        "```",
        "",
    ]
    if info["model"] == "bundled":
        lines += [
            "`model/` holds a small class of its own (`modeling_autofednlp.py`, needing only torch "
            "and transformers"
            + (
                ", and `adapters` for its bottleneck adapter"
                if info["adapter"] == "bottleneck"
                else ""
            )
            + "): the encoder's Transformers classes "
            "have no head like this one. Loading it without `trust_remote_code=True` fails.",
            "",
        ]
    lines += _adapter_section(info, base)
    lines += ["## Training", ""]
    spec = info["spec"]
    lines.append(f"- Trained: `{spec['kind']}`, depth {spec['depth']}, width {spec['width']}")
    if cfg is not None:
        fed = cfg.federation
        lines += [
            f"- Data: `{dataset_name(cfg.data.dataset)}`, {cfg.data.num_clients} clients "
            f"({cfg.data.partitioner}"
            + (f", alpha {cfg.data.alpha}" if cfg.data.partitioner == "dirichlet" else "")
            + f"), max {cfg.data.max_length} tokens per sample",
            f"- Federation: {cfg.strategy.name}, {fed.clients_per_round} clients per round, "
            f"{cfg.client.local_epochs} local epoch(s), batch {cfg.client.batch_size}, seed "
            f"{cfg.seed}",
        ]
    if summary:
        traj = summary.get("trajectory") or []
        if traj:
            steps = " -> ".join(f"{t['config']} at {t['sim_time_s']:.0f} s" for t in traj)
            lines.append(f"- Configuration trajectory: {steps}")
        lines += [
            f"- Rounds: {summary.get('rounds')}; final configuration `{summary.get('config')}`",
            "",
            "## Results",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        for key in sorted(summary):
            if key.startswith(("test_", "best_val_", "final_val_")):
                lines.append(f"| {key} | {_fmt(summary[key])} |")
        lines += [
            "",
            "## Cost (simulated devices and links)",
            "",
            f"- Simulated time: {summary.get('sim_time_s', 0):.1f} s; time to "
            f"{summary.get('target_metric')} {_fmt(summary.get('target_accuracy'))}: "
            + _reached(summary.get("time_to_accuracy")),
            f"- Traffic: {summary.get('bytes_up', 0) / 1e6:.2f} MB up, "
            f"{summary.get('bytes_down', 0) / 1e6:.2f} MB down; energy "
            f"{summary.get('energy_j', 0):.1f} J",
            f"- Trained (exchanged) parameters: {summary.get('trainable_params')}",
        ]
    return "\n".join(lines) + "\n"


def _reached(when: dict[str, Any] | None) -> str:
    """`time_to_accuracy` of a summary: when (and in which round) the target was reached."""
    if not when:
        return "not reached"
    return f"{when['sim_time_s']:.1f} s (round {when['round']})"


def _adapter_section(info: dict[str, Any], base: str) -> list[str]:
    kind, task = info["adapter"], info["task"]
    if kind is None:
        return []
    if kind == "untied":
        return [
            f"No adapter alone: {base} shares one layer's weights across its layers, and to "
            "train only the top layers each layer got its own copy, so an adapter of those "
            f"layers does not fit {base} as published. `model/` has it all (a standard ALBERT "
            "with `num_hidden_groups` = its number of layers).",
            "",
        ]
    if kind == "lora" and info["adapter_head"]:
        loader = "AutoPeftModelFor" + _loader(task).removeprefix("AutoModelFor")
        extra = "".join(f", {k}={v!r}" for k, v in info["base_kwargs"].items())
        code = [
            f"from peft import {loader}",
            f"# {base}'s classifier, with the labels and head settings of this one",
            f'model = {loader}.from_pretrained("adapter"{extra})',
        ]
    elif kind == "lora":
        code = [
            "from peft import AutoPeftModelForFeatureExtraction",
            f"# {base} with the LoRA; apply the head below to its last hidden states",
            'encoder = AutoPeftModelForFeatureExtraction.from_pretrained("adapter")',
        ]
    else:
        code = [
            "from adapters import AutoAdapterModel",
            f'model = AutoAdapterModel.from_pretrained("{base}")',
            'name = model.load_adapter("adapter", use_safetensors=True)',
            "model.set_active_adapters(name)",
        ]
    what = "LoRA in PEFT's format" if kind == "lora" else "the bottleneck adapter in the "
    what += "" if kind == "lora" else "`adapters` library's format"
    lines = [f"`adapter/` holds {what}" + (", with its head:" if info["adapter_head"] else ":")]
    lines += ["", "```python", *code, "```", ""]
    if not info["adapter_head"]:
        if task == "classification" and info["pooling"] == "cls":
            how = "the first token's last hidden state through `head_dense`, tanh, `classifier`"
        elif task == "classification":
            how = "the mean of the last hidden states over the attended tokens, then `classifier`"
        else:
            how = "`classifier` on every token's hidden state"
        lines += [
            "That format has no place for this head, so it is beside the adapter in "
            f"`adapter/head.safetensors`: {how}. `model/` has it all in one.",
            "",
        ]
    return lines
