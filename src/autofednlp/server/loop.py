"""The server's round loop, independent of the engine that carries the messages.

A `Transport` sends train tasks to clients and returns the replies that came; the Flower
ServerApp provides one over its Grid. Everything else here (sampling, FedAvg, the simulated
clock, evaluation, results) is plain Python.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from autofednlp.client.train import evaluate, frozen_features
from autofednlp.config import ExperimentConfig
from autofednlp.cost.clock import ClientCost, RoundCost, SimClock, client_cost
from autofednlp.data.federated import FederatedData
from autofednlp.model.build import (
    build_model,
    load_trainable,
    model_shape,
    state_bytes,
    trainable_state,
    trained_part,
)
from autofednlp.model.kinds import TuneSpec
from autofednlp.report.results import RunRecorder, time_to_accuracy
from autofednlp.server.aggregate import RejectedUpdate, check_update, fedavg

log = logging.getLogger("autofednlp")


@dataclass
class TrainTask:
    partition_id: int
    spec: TuneSpec
    state: dict[str, torch.Tensor]
    server_round: int


@dataclass
class TrainReply:
    partition_id: int
    state: dict[str, torch.Tensor]
    metrics: dict[str, Any]


@dataclass
class Delivery:
    replies: list[TrainReply] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # partition id -> why


class Transport(Protocol):
    def available_partitions(self) -> list[int]:
        """Client (partition) ids that can be asked to train now."""

    def train(self, tasks: list[TrainTask]) -> Delivery:
        """Run the tasks on their clients; return the replies that came and what failed."""


class ProgressPrinter:
    """One line per round on stderr, quiet-able."""

    def __init__(self, total_rounds: int, enabled: bool = True) -> None:
        self.total = total_rounds
        self.enabled = enabled

    def __call__(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        acc = row.get("val_accuracy")
        acc_s = "  -  " if acc is None else f"{acc:.3f}"
        mb = (row["cum_bytes_up"] + row["cum_bytes_down"]) / 1e6
        print(
            f"round {row['round']:>3}/{self.total} | {row['config']:<22} | "
            f"sim {row['sim_time_s'] / 3600:7.3f} h | val acc {acc_s} | "
            f"traffic {mb:9.2f} MB | wall {row['wall_time_s']:6.1f} s",
            file=sys.stderr,
            flush=True,
        )


class FederatedRun:
    """FedAvg with client sampling, server-side validation and a simulated clock."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        data: FederatedData,
        transport: Transport,
        run_dir: Path,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.data = data
        self.transport = transport
        self.recorder = RunRecorder(run_dir, cfg)
        self.spec = TuneSpec(cfg.tune.kind, cfg.tune.depth, cfg.tune.width)
        self.model = build_model(
            cfg.model.name, data.num_labels, self.spec, cfg.seed, cfg.model.pooling
        )
        self.state = trainable_state(self.model)
        self.shape = model_shape(cfg.model.name, data.num_labels, cfg.model.pooling)
        self.clock = SimClock()
        self.rng = random.Random(cfg.seed)
        self.progress = ProgressPrinter(cfg.federation.rounds, progress)
        self._features: dict[tuple[str, int], list[torch.Tensor]] = {}
        self._t0 = time.monotonic()

    def sample(self) -> list[int]:
        available = sorted(self.transport.available_partitions())
        k = min(self.cfg.federation.clients_per_round, len(available))
        return sorted(self.rng.sample(available, k))

    def evaluate(self, split: str) -> tuple[float, float]:
        load_trainable(self.model, self.state)
        data = getattr(self.data, split)
        boundary = self.spec.boundary(self.model.num_layers)
        features = None
        if not self.model.embeddings_trainable():  # else the "frozen" part changes each round
            key = (split, boundary)
            if key not in self._features:
                self._features[key] = frozen_features(self.model, data, boundary)
            features = self._features[key]
        res = evaluate(
            self.model,
            data,
            self.shape,
            trained_part(self.spec),
            boundary=boundary,
            features=features,
        )
        return res.accuracy, res.loss

    def train_round(self, server_round: int) -> dict[str, Any]:
        chosen = self.sample()
        tasks = [TrainTask(pid, self.spec, self.state, server_round) for pid in chosen]
        delivery = self.transport.train(tasks)
        updates, costs = [], []
        failed = dict(delivery.failed)
        bytes_down = state_bytes(self.state)
        for reply in delivery.replies:
            try:
                check_update(self.state, reply.state, reply.metrics.get("num_examples", 0))
            except RejectedUpdate as e:
                failed[reply.partition_id] = f"rejected: {e}"
                continue
            updates.append((reply.state, reply.metrics["num_examples"]))
            costs.append(
                client_cost(
                    self.cfg.cost,
                    float(reply.metrics["compute_s"]),
                    bytes_down,
                    state_bytes(reply.state),
                )
            )
        for pid, why in failed.items():
            log.warning("round %d: client %d failed: %s", server_round, pid, why)
        if updates:
            self.state = fedavg(updates)
        rc = self._round_cost(costs, failed)
        self.clock.advance(rc)
        losses = [r.metrics["train_loss"] for r in delivery.replies if r.partition_id not in failed]
        return {
            "clients": " ".join(str(p) for p in chosen),
            "failed_clients": " ".join(str(p) for p in sorted(failed)),
            "round_time_s": rc.duration_s,
            "train_loss": sum(losses) / len(losses) if losses else None,
            "bytes_up": rc.bytes_up,
            "bytes_down": rc.bytes_down,
            "energy_j": rc.energy_j,
        }

    def _round_cost(self, costs: list[ClientCost], failed: dict[int, str]) -> RoundCost:
        rc = RoundCost.of(costs)
        timeout = self.cfg.federation.round_timeout_s
        if failed and timeout > 0:
            # A synchronous round with a lost client lasts until the server gives up on it.
            rc = dataclasses.replace(rc, duration_s=max(rc.duration_s, timeout))
        return rc

    def run(self) -> dict[str, Any]:
        fed = self.cfg.federation
        for r in range(1, fed.rounds + 1):
            row: dict[str, Any] = {"round": r, "config": self.spec.label()}
            row.update(self.train_round(r))
            row["val_accuracy"], row["val_loss"] = (None, None)
            if r % fed.eval_every == 0 or r == fed.rounds:
                row["val_accuracy"], row["val_loss"] = self.evaluate("validation")
            row["sim_time_s"] = self.clock.time_s
            row["wall_time_s"] = time.monotonic() - self._t0
            row["cum_bytes_up"], row["cum_bytes_down"] = self.clock.bytes_up, self.clock.bytes_down
            self.recorder.round(row)
            self.progress(row)
            reached = row["val_accuracy"] is not None and row["val_accuracy"] >= fed.target_accuracy
            if fed.stop_at_target and reached:
                break
        return self.finish()

    def finish(self) -> dict[str, Any]:
        test_acc, test_loss = self.evaluate("test")
        rows = self.recorder.rows
        accs = [r["val_accuracy"] for r in rows if r["val_accuracy"] is not None]
        summary = {
            "name": self.cfg.name,
            "config": self.spec.label(),
            "rounds": len(rows),
            "target_accuracy": self.cfg.federation.target_accuracy,
            "time_to_accuracy": time_to_accuracy(rows, self.cfg.federation.target_accuracy),
            "best_val_accuracy": max(accs) if accs else None,
            "final_val_accuracy": accs[-1] if accs else None,
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            "sim_time_s": self.clock.time_s,
            "bytes_up": self.clock.bytes_up,
            "bytes_down": self.clock.bytes_down,
            "energy_j": self.clock.energy_j,
            "wall_time_s": time.monotonic() - self._t0,
            "trainable_params": sum(t.numel() for t in self.state.values()),
            "run_dir": str(self.recorder.run_dir),
        }
        self.recorder.summary(summary)
        torch.save(self.state, self.recorder.run_dir / "trainable_state.pt")
        return summary
