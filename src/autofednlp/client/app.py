"""Flower ClientApp: unpacks a message, calls the plain worker, packs the reply.

The experiment configuration travels in every message (a few KB of TOML), so the same app
runs unchanged in the simulation engine and on a SuperNode whose process is new each round.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from autofednlp.config import ExperimentConfig, from_dict
from autofednlp.cost.devices import client_device

app = ClientApp()


@lru_cache(maxsize=8)
def _experiment(text: str) -> ExperimentConfig:
    return from_dict(tomllib.loads(text))


def _identity(context: Context, cfg: ExperimentConfig) -> tuple[int, str, str]:
    """This node's client id, device profile name, and own data file ("" = the partition of
    the experiment's dataset that its client id names)."""
    node = context.node_config
    if "partition-id" not in node:
        raise ValueError("node config has no 'partition-id' (start the SuperNode with it)")
    pid = int(node["partition-id"])
    device = str(node.get("device", "")) or client_device(cfg, pid)
    return pid, device, str(node.get("data-file", ""))


# the file types data.sources reads (a test keeps the two in step); here without importing
# it, which would load torch for a query that must stay light
DATA_FILE_TYPES = (".csv", ".json", ".jsonl", ".parquet", ".conll", ".iob", ".bio", ".txt")


def check_data_file(data_file: str) -> None:
    """What a device can check before it is asked to train: a node whose file is missing or of
    the wrong type stays out of the run, named, instead of failing every round it is sampled."""
    path = Path(data_file).expanduser()
    field = f"node config data-file = {data_file!r}"
    if path.suffix.lower() not in DATA_FILE_TYPES:
        raise ValueError(f"{field}: unsupported file type; use {', '.join(DATA_FILE_TYPES)}")
    if not path.is_file():
        raise ValueError(f"{field}: no such file on this device")


@app.query()
def query(msg: Message, context: Context) -> Message:
    cfg = _experiment(str(msg.content["config"]["experiment"]))
    pid, device, data_file = _identity(context, cfg)
    if data_file:
        check_data_file(data_file)
    reply = ConfigRecord({"partition_id": pid, "device": device, "data_file": data_file})
    return Message(RecordDict({"identity": reply}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    # torch and transformers load only here: an identity query stays light
    from autofednlp.client.worker import train_round
    from autofednlp.model.kinds import TuneSpec

    conf = msg.content["config"]
    cfg = _experiment(str(conf["experiment"]))
    pid, device, data_file = _identity(context, cfg)
    spec = TuneSpec(str(conf["kind"]), int(conf["depth"]), int(conf["width"]))
    state = msg.content["arrays"].to_torch_state_dict()
    new_state, metrics = train_round(
        cfg,
        pid,
        spec,
        state,
        int(conf["server_round"]),
        device,
        run_id=str(conf["run_id"]),
        data_file=data_file,
        label_names=list(conf["label_names"]),
        max_steps=int(conf["max_steps"]) if "max_steps" in conf else 0,
    )
    content = RecordDict({"arrays": ArrayRecord(new_state), "metrics": ConfigRecord(metrics)})
    return Message(content, reply_to=msg)
