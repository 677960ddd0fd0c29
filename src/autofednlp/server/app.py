"""Flower ServerApp: runs the engine-independent `FederatedRun` over Flower's Grid."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from autofednlp.config import ExperimentConfig, load_config, to_toml
from autofednlp.report.results import new_run_dir
from autofednlp.server import make_run
from autofednlp.server.loop import Delivery, TrainReply, TrainTask

log = logging.getLogger("autofednlp")


class GridTransport:
    """Maps client (partition) ids to Flower node ids and carries train tasks as Messages."""

    def __init__(self, grid: Grid, cfg: ExperimentConfig) -> None:
        self.grid = grid
        self.cfg = cfg
        self.experiment = to_toml(cfg)
        self.timeout = cfg.federation.round_timeout_s or None
        self.node_of: dict[int, int] = {}  # partition id -> node id
        self.device_of: dict[int, str] = {}

    def _discover(self, node_ids: list[int]) -> None:
        known = set(self.node_of.values())
        new = [n for n in node_ids if n not in known]
        if not new:
            return
        content = RecordDict({"config": ConfigRecord({"experiment": self.experiment})})
        msgs = [Message(content, dst_node_id=n, message_type=MessageType.QUERY) for n in new]
        for reply in self.grid.send_and_receive(msgs, timeout=self.timeout):
            if reply.has_error():
                log.warning(
                    "node %d did not identify itself: %s",
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            ident = reply.content["identity"]
            pid = int(ident["partition_id"])
            self.node_of[pid] = reply.metadata.src_node_id
            self.device_of[pid] = str(ident["device"])

    def available_partitions(self) -> list[int]:
        alive = list(self.grid.get_node_ids())
        self._discover(alive)
        alive_set = set(alive)
        return [pid for pid, nid in self.node_of.items() if nid in alive_set]

    def train(self, tasks: list[TrainTask]) -> Delivery:
        msgs, pid_of = [], {}
        for t in tasks:
            conf = ConfigRecord(
                {
                    "experiment": self.experiment,
                    "kind": t.spec.kind,
                    "depth": t.spec.depth,
                    "width": t.spec.width,
                    "server_round": t.server_round,
                    "run_id": t.run_id,
                }
            )
            content = RecordDict({"arrays": ArrayRecord(t.state), "config": conf})
            nid = self.node_of[t.partition_id]
            pid_of[nid] = t.partition_id
            msgs.append(
                Message(
                    content,
                    dst_node_id=nid,
                    message_type=MessageType.TRAIN,
                    group_id=str(t.server_round),
                )
            )
        out = Delivery()
        for reply in self.grid.send_and_receive(msgs, timeout=self.timeout):
            pid = pid_of.get(reply.metadata.src_node_id)
            if pid is None:
                continue
            if reply.has_error():
                out.failed[pid] = reply.error.reason.strip().splitlines()[-1][:300]
                continue
            try:
                state = reply.content["arrays"].to_torch_state_dict()
                metrics = dict(reply.content["metrics"])
            except Exception as e:  # a malformed reply is the client's fault, not the run's
                out.failed[pid] = f"malformed reply: {e}"
                continue
            out.replies.append(TrainReply(pid, state, metrics))
        for pid in pid_of.values():
            if pid not in out.failed and all(r.partition_id != pid for r in out.replies):
                out.failed[pid] = "no reply before the round timeout"
        return out


def config_from_run_config(run_config: dict[str, Any]) -> ExperimentConfig:
    """Deployment: `flwr run . --run-config 'config="exp.toml" set="federation.rounds=3"'`."""
    path = str(run_config.get("config", "")) or None
    overrides = [s for s in str(run_config.get("set", "")).split(";") if s.strip()]
    return load_config(path, overrides)


def make_server_app(
    cfg: ExperimentConfig | None = None, run_dir: Path | None = None, progress: str | bool = "lines"
) -> ServerApp:
    """A ServerApp bound to `cfg` (simulation), or reading its config from the run config."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        from autofednlp.client.worker import client_data

        c = cfg if cfg is not None else config_from_run_config(dict(context.run_config))
        rd = run_dir if run_dir is not None else new_run_dir(c)
        fed = make_run(c, client_data(c), GridTransport(grid, c), Path(rd), progress)
        fed.run()

    return server_app


app = make_server_app()
