"""The server's round loop, independent of the engine that carries the messages.

A `Transport` sends train tasks to clients and returns the replies that came; the Flower
ServerApp provides one over its Grid. Everything else here (sampling, FedAvg, the simulated
clock, evaluation, results) is plain Python.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from autofednlp.client.train import evaluate, frozen_features
from autofednlp.config import ExperimentConfig, to_dict
from autofednlp.cost.clock import ClientCost, RoundCost, SimClock, client_cost
from autofednlp.data.federated import FederatedData
from autofednlp.model.build import (
    build_model,
    load_trainable,
    model_shape,
    resolve_model_path,
    state_bytes,
    trainable_state,
    trained_part,
)
from autofednlp.model.classifier import EncoderClassifier
from autofednlp.model.export import export_model
from autofednlp.model.kinds import TuneSpec
from autofednlp.report.progress import ProgressPrinter, majority_accuracy
from autofednlp.report.results import (
    RunRecorder,
    save_checkpoint,
    time_to_accuracy,
)
from autofednlp.server.aggregate import RejectedUpdate, check_update, fedavg

log = logging.getLogger("autofednlp")


def run_id_for(run_dir: Path) -> str:
    """A short id for a run, unique per run directory: scopes the clients' caches."""
    resolved = str(Path(run_dir).resolve())
    return f"{Path(run_dir).name[:40]}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


@dataclass
class TrainTask:
    partition_id: int
    spec: TuneSpec
    state: dict[str, torch.Tensor]
    server_round: int
    run_id: str = ""


@dataclass
class TrainReply:
    partition_id: int
    state: dict[str, torch.Tensor]
    metrics: dict[str, Any]


@dataclass
class Delivery:
    replies: list[TrainReply] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # partition id -> why
    # the failed clients the round had to wait for (no reply, device lost), as opposed to
    # those that answered at once with an error: only these make a round last its timeout
    lost: set[int] = field(default_factory=set)


class Transport(Protocol):
    def available_partitions(self) -> list[int]:
        """Client (partition) ids that can be asked to train now."""

    def train(self, tasks: list[TrainTask]) -> Delivery:
        """Run the tasks on their clients; return the replies that came and what failed."""


@dataclass
class GroupResult:
    """One group's round: its new weights, what it cost, and who took part."""

    state: dict[str, torch.Tensor]
    cost: RoundCost
    clients: list[int]
    failed: dict[int, str]
    train_loss: float | None
    cache_hits: int = 0
    cache_misses: int = 0


class FederatedRun:
    """FedAvg with client sampling, server-side validation and a simulated clock.

    The unit of work is a *group round*: a set of clients trains one configuration from the
    same weights and FedAvg combines their updates. A plain run has one group; AutoFedNLP's
    trials run several side by side (`server/autofed.py`).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        data: FederatedData,
        transport: Transport,
        run_dir: Path,
        progress: str | bool = "lines",
        resume: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.data = data
        self.transport = transport
        self.recorder = RunRecorder(run_dir, cfg, resume["rows"] if resume else ())
        self.run_id = run_id_for(run_dir)
        self.spec = TuneSpec(cfg.tune.kind, cfg.tune.depth, cfg.tune.width)
        self._models: dict[TuneSpec, EncoderClassifier] = {}
        self.state = self.initial_state(self.spec)
        self.shape = model_shape(cfg.model.name, data.num_labels, cfg.model.pooling)
        self.clock = SimClock()
        self.rng = random.Random(cfg.seed)
        self.majority = majority_accuracy(data.validation.labels.tolist())
        self.progress = ProgressPrinter(cfg.federation.rounds, progress, self.majority)
        self._features: dict[tuple[str, int], list[torch.Tensor]] = {}
        self._t0 = time.monotonic()
        self.next_round = 1
        self._strategy: dict[str, Any] = {}
        if resume:
            self.restore(resume)
        else:  # an interrupt before the first periodic checkpoint can still be resumed
            self.checkpoint(1)

    def checkpoint(self, next_round: int, strategy: dict[str, Any] | None = None) -> None:
        """Everything needed to continue exactly: weights, configuration, simulated clock,
        sampling RNG, the rows so far and the strategy's own state."""
        self._strategy = strategy or {}
        save_checkpoint(
            self.recorder.run_dir,
            {
                "next_round": next_round,
                "spec": dataclasses.asdict(self.spec),
                "state": self.state,
                "clock": self.clock.state(),
                "rng": self.rng.getstate(),
                "rows": self.recorder.rows,
                "wall_s": time.monotonic() - self._t0,
                "time_ns": time.time_ns(),
                "strategy": strategy or {},
                "config": to_dict(self.cfg),
            },
        )

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.next_round = ckpt["next_round"]
        self.spec = TuneSpec(**ckpt["spec"])
        self.state = ckpt["state"]
        for k, v in ckpt["clock"].items():
            setattr(self.clock, k, v)
        self.rng.setstate(ckpt["rng"])
        self._strategy = {k: v for k, v in ckpt["strategy"].items() if k != "finished"}
        self._t0 = time.monotonic() - ckpt["wall_s"]
        self.progress.bytes = sum(r["bytes_up"] + r["bytes_down"] for r in ckpt["rows"])

    def due(self, count: int) -> bool:
        every = self.cfg.federation.checkpoint_every
        return every > 0 and count % every == 0

    def model_for(self, spec: TuneSpec) -> EncoderClassifier:
        if spec not in self._models:
            cfg = self.cfg
            self._models[spec] = build_model(
                cfg.model.name, self.data.num_labels, spec, cfg.seed, cfg.model.pooling
            )
        return self._models[spec]

    def initial_state(self, spec: TuneSpec) -> dict[str, torch.Tensor]:
        return trainable_state(self.model_for(spec))

    def sample(self, k: int, exclude: set[int] = frozenset()) -> list[int]:
        available = sorted(set(self.transport.available_partitions()) - set(exclude))
        return sorted(self.rng.sample(available, min(k, len(available))))

    def evaluate(
        self, split: str, spec: TuneSpec | None = None, state: dict | None = None
    ) -> tuple[float, float]:
        spec = spec or self.spec
        model = self.model_for(spec)
        load_trainable(model, self.state if state is None else state)
        data = getattr(self.data, split)
        boundary = spec.boundary(model.num_layers)
        features = None
        if not model.embeddings_trainable():  # else the "frozen" part changes each round
            key = (split, boundary)
            if key not in self._features:
                self._features[key] = frozen_features(model, data, boundary)
            features = self._features[key]
        res = evaluate(
            model, data, self.shape, trained_part(spec), boundary=boundary, features=features
        )
        return res.accuracy, res.loss

    def train_groups(
        self, server_round: int, groups: list[tuple[TuneSpec, dict, list[int]]]
    ) -> list[GroupResult]:
        """Send every group's tasks at once (they run concurrently on real clients), then
        check and average each group's replies separately."""
        tasks = [
            TrainTask(pid, spec, state, server_round, self.run_id)
            for spec, state, clients in groups
            for pid in clients
        ]
        self.progress.round_started(server_round, len(tasks))
        delivery = self.transport.train(tasks)
        by_pid = {r.partition_id: r for r in delivery.replies}
        results = []
        for _spec, state, clients in groups:
            updates, costs, losses, hits, misses = [], [], [], 0, 0
            failed = {p: w for p, w in delivery.failed.items() if p in clients}
            bytes_down = state_bytes(state)
            for pid in clients:
                reply = by_pid.get(pid)
                if reply is None:
                    failed.setdefault(pid, "no reply")
                    continue
                try:
                    check_update(state, reply.state, reply.metrics.get("num_examples", 0))
                except RejectedUpdate as e:
                    failed[pid] = f"rejected: {e}"
                    continue
                updates.append((reply.state, reply.metrics["num_examples"]))
                losses.append(float(reply.metrics["train_loss"]))
                hits += max(int(reply.metrics.get("cache_hits", 0)), 0)
                misses += max(int(reply.metrics.get("cache_misses", 0)), 0)
                compute_s = float(reply.metrics["compute_s"])
                costs.append(
                    client_cost(self.cfg.cost, compute_s, bytes_down, state_bytes(reply.state))
                )
            for pid, why in sorted(failed.items()):
                log.warning("round %d: client %d failed: %s", server_round, pid, why)
            # A group left with no usable reply keeps its previous weights.
            new_state = fedavg(updates) if updates else state
            results.append(
                GroupResult(
                    new_state,
                    self._round_cost(costs, delivery.lost & set(clients)),
                    clients,
                    failed,
                    sum(losses) / len(losses) if losses else None,
                    hits,
                    misses,
                )
            )
        return results

    def _round_cost(self, costs: list[ClientCost], lost: set[int]) -> RoundCost:
        rc = RoundCost.of(costs)
        timeout = self.cfg.federation.round_timeout_s
        if lost and timeout > 0:
            # A synchronous round with a lost client lasts until the server gives up on it.
            rc = dataclasses.replace(rc, duration_s=max(rc.duration_s, timeout))
        return rc

    def round_row(self, server_round: int, spec: TuneSpec, res: GroupResult) -> dict[str, Any]:
        return {
            "round": server_round,
            "config": spec.label(),
            "clients": " ".join(str(p) for p in res.clients),
            "failed_clients": " ".join(str(p) for p in sorted(res.failed)),
            "round_time_s": res.cost.duration_s,
            "train_loss": res.train_loss,
            "bytes_up": res.cost.bytes_up,
            "bytes_down": res.cost.bytes_down,
            "energy_j": res.cost.energy_j,
            "cache_hits": res.cache_hits,
            "cache_misses": res.cache_misses,
        }

    def record(self, row: dict[str, Any]) -> None:
        row["wall_time_s"] = time.monotonic() - self._t0
        self.recorder.round(row)
        self.progress(row)

    def run(self) -> dict[str, Any]:
        fed = self.cfg.federation
        for r in range(self.next_round, fed.rounds + 1):
            clients = self.sample(fed.clients_per_round)
            (res,) = self.train_groups(r, [(self.spec, self.state, clients)])
            self.state = res.state
            self.clock.advance(res.cost)
            row = self.round_row(r, self.spec, res)
            row["val_accuracy"], row["val_loss"] = (None, None)
            if r % fed.eval_every == 0 or r == fed.rounds:
                row["val_accuracy"], row["val_loss"] = self.evaluate("validation")
            row["sim_time_s"] = self.clock.time_s
            self.record(row)
            if self.due(r):
                self.checkpoint(r + 1)
            reached = row["val_accuracy"] is not None and row["val_accuracy"] >= fed.target_accuracy
            if fed.stop_at_target and reached:
                break
        return self.finish()

    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        test_acc, test_loss = self.evaluate("test")
        rows = self.recorder.rows
        accs = [r["val_accuracy"] for r in rows if r["val_accuracy"] is not None]
        summary = {
            "name": self.cfg.name,
            "config": self.spec.label(),
            "rounds": len({r["round"] for r in rows}),
            "target_accuracy": self.cfg.federation.target_accuracy,
            "time_to_accuracy": time_to_accuracy(rows, self.cfg.federation.target_accuracy),
            "best_val_accuracy": max(accs) if accs else None,
            "majority_val_accuracy": self.majority,
            "final_val_accuracy": self.evaluate("validation")[0],
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            "sim_time_s": self.clock.time_s,
            "bytes_up": self.clock.bytes_up,
            "bytes_down": self.clock.bytes_down,
            "energy_j": self.clock.energy_j,
            "wall_time_s": time.monotonic() - self._t0,
            "trainable_params": sum(t.numel() for t in self.state.values()),
            "run_dir": str(self.recorder.run_dir),
            "spec": dataclasses.asdict(self.spec),
            "label_names": list(self.data.label_names),
            **(extra or {}),
        }
        torch.save(self.state, self.recorder.run_dir / "trainable_state.pt")
        model = self.model_for(self.spec)
        load_trainable(model, self.state)
        export_model(
            model,
            self.spec,
            list(self.data.label_names),
            resolve_model_path(self.cfg.model.name),
            self.recorder.run_dir / "export",
        )
        # the strategy's last state stays in it: `--resume --set federation.rounds=N` extends
        last_round = max((r["round"] for r in rows), default=0)
        self.checkpoint(last_round + 1, {**self._strategy, "finished": True})
        self.recorder.summary(summary)  # last: its presence marks a finished run
        return summary
