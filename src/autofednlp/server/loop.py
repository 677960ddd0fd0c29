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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from autofednlp.client.train import EvalResult, evaluate, frozen_features
from autofednlp.config import ExperimentConfig, to_dict
from autofednlp.cost.clock import ClientCost, RoundCost, SimClock, client_cost
from autofednlp.data.federated import FederatedData
from autofednlp.model.build import (
    build_model,
    load_trainable,
    model_shape,
    state_bytes,
    trainable_state,
)
from autofednlp.model.classifier import EncoderClassifier
from autofednlp.model.export import export_model
from autofednlp.model.kinds import TuneSpec
from autofednlp.privacy.accountant import PrivacyLedger
from autofednlp.report.progress import ProgressPrinter, majority_accuracy
from autofednlp.report.results import (
    ADOPTED,
    RunRecorder,
    is_served,
    save_checkpoint,
    time_to_target,
)
from autofednlp.runtime import oom_guard, runtime_for
from autofednlp.server.aggregate import RejectedUpdate, check_update
from autofednlp.server.aggregation import GroupAggregator

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
    max_steps: int = 0  # 0: the client's full local epochs


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

    # Optional: `submit(tasks)` sends them now and returns a call that waits for the same
    # Delivery, so the server can run other rounds meanwhile (without it: `train` at the call).


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
    # what a shared trunk may be averaged from: the checked updates (under central DP, the
    # group's noised average weighted by its clients)
    updates: list[tuple[dict[str, torch.Tensor], float]] = field(default_factory=list)


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
        self.runtime = runtime_for(cfg)
        self._models: dict[TuneSpec, EncoderClassifier] = {}
        self._init_states: dict[TuneSpec, dict[str, torch.Tensor]] = {}
        self.state = self.initial_state(self.spec)
        # federation.served_ema: (configuration, moving average of its global weights)
        self._served: tuple[TuneSpec, dict[str, torch.Tensor]] | None = None
        self.shape = model_shape(
            cfg.model.name,
            data.num_labels,
            cfg.model.pooling,
            cfg.data.task_name,
            tuple(cfg.tune.lora_targets),
        )
        self.clock = SimClock()
        self.rng = random.Random(cfg.seed)
        # the probes of robust trials with `strategy.probes_serve` are drawn from a stream of
        # their own, so the served rounds draw the clients a fixed configuration's would
        self.probe_rng = random.Random(f"{cfg.seed}-probes")
        self.metric = cfg.target_metric  # what "reached" and the trials' winner go by
        labels = data.validation.labels
        # the yardstick a reading must beat: for a classifier's accuracy, always the majority
        self.majority = majority_accuracy(labels.tolist()) if labels.dim() == 1 else None
        self.progress = ProgressPrinter(
            cfg.federation.rounds,
            progress,
            self.majority if self.metric == "accuracy" else None,
            self.metric,
            cfg.federation.time_budget_s,
        )
        self._features: dict[tuple[str, int], list[torch.Tensor]] = {}
        self._t0 = time.monotonic()
        self.next_round = 1
        self._strategy: dict[str, Any] = {}
        self.client_info: dict[int, tuple[int, str]] = {}  # client -> (examples, device)
        self.aggregator = GroupAggregator(cfg)
        self.ledger = (
            PrivacyLedger(cfg.privacy, cfg.data.num_clients) if cfg.privacy.mode != "off" else None
        )
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
                "served": None
                if self._served is None
                else {"spec": dataclasses.asdict(self._served[0]), "state": self._served[1]},
                "clock": self.clock.state(),
                "client_info": self.client_info,
                "rng": self.rng.getstate(),
                "probe_rng": self.probe_rng.getstate(),
                "rows": self.recorder.rows,
                "wall_s": time.monotonic() - self._t0,
                "time_ns": time.time_ns(),
                "strategy": strategy or {},
                "aggregation": self.aggregator.state_dict(),
                "privacy": self.ledger.state_dict() if self.ledger else None,
                "config": to_dict(self.cfg),
            },
        )

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.next_round = ckpt["next_round"]
        self.spec = TuneSpec(**ckpt["spec"])
        self.state = ckpt["state"]
        served = ckpt.get("served")
        self._served = None if served is None else (TuneSpec(**served["spec"]), served["state"])
        for k, v in ckpt["clock"].items():
            setattr(self.clock, k, v)
        self.rng.setstate(ckpt["rng"])
        if ckpt.get("probe_rng") is not None:
            self.probe_rng.setstate(ckpt["probe_rng"])
        self.client_info = dict(ckpt.get("client_info", {}))
        self._strategy = {k: v for k, v in ckpt["strategy"].items() if k != "finished"}
        self.aggregator.load_state_dict(ckpt.get("aggregation") or {})
        if self.ledger and ckpt.get("privacy"):
            self.ledger.load_state_dict(ckpt["privacy"])
        self._t0 = time.monotonic() - ckpt["wall_s"]
        self.progress.bytes = sum(r["bytes_up"] + r["bytes_down"] for r in ckpt["rows"])

    def due(self, count: int) -> bool:
        every = self.cfg.federation.checkpoint_every
        return every > 0 and count % every == 0

    def model_for(self, spec: TuneSpec) -> EncoderClassifier:
        if spec not in self._models:
            cfg = self.cfg
            model = build_model(
                cfg.model.name,
                self.data.num_labels,
                spec,
                cfg.seed,
                cfg.model.pooling,
                cfg.data.task_name,
                tuple(cfg.tune.lora_targets),
            )
            self._init_states[spec] = trainable_state(model)
            self._models[spec] = model.to(self.runtime.device)
        return self._models[spec]

    def initial_state(self, spec: TuneSpec) -> dict[str, torch.Tensor]:
        """The spec's freshly initialised trainable tensors (new capacity's output side at
        zero). Not the cached model's current ones: evaluation loads other weights into it."""
        self.model_for(spec)
        return self._init_states[spec]

    def served_state(self) -> dict[str, torch.Tensor]:
        """The weights the server hands out (validation readings, time to target, test, export):
        the latest global ones, or with `federation.served_ema` their moving average over the
        current configuration's rounds."""
        if self._served is not None and self._served[0] == self.spec:
            return self._served[1]
        return self.state

    def fold_served(self) -> None:
        """Fold the latest global weights into the served moving average
        (`federation.served_ema`), which restarts from them after a change of configuration."""
        decay = self.cfg.served_ema
        if decay <= 0:
            return
        if self._served is None or self._served[0] != self.spec:
            self._served = (self.spec, dict(self.state))
            return
        avg = self._served[1]
        self._served = (
            self.spec,
            {k: torch.lerp(avg[k], v, 1.0 - decay) for k, v in self.state.items()},
        )

    def sample(self, k: int, exclude: set[int] = frozenset()) -> list[int]:
        available = sorted(set(self.transport.available_partitions()) - set(exclude))
        return sorted(self.rng.sample(available, min(k, len(available))))

    def evaluate(
        self, split: str, spec: TuneSpec | None = None, state: dict | None = None
    ) -> tuple[float, float]:
        """(target metric, loss) on `split`: the number the run goes by (accuracy, or entity
        F1 for tagging by default)."""
        metrics = self.evaluate_metrics(split, spec, state)
        return metrics[self.metric], metrics["loss"]

    def evaluate_metrics(
        self, split: str, spec: TuneSpec | None = None, state: dict | None = None
    ) -> dict[str, float]:
        """The task's metrics on `split` (classification: accuracy, macro_f1; tagging: f1,
        precision, recall, accuracy) and the loss, by name."""
        res = self.evaluate_result(split, spec, state)
        return {**res.metrics, "loss": res.loss}

    def evaluate_result(
        self,
        split: str,
        spec: TuneSpec | None = None,
        state: dict | None = None,
        per_sample: bool = False,
    ) -> EvalResult:
        """The evaluation itself (by default of the served model); `per_sample` adds each
        sample's loss (paired comparisons)."""
        spec = spec or self.spec
        model = self.model_for(spec)
        load_trainable(model, self.served_state() if state is None else state)
        data = getattr(self.data, split)
        boundary = spec.boundary(model.num_layers)
        features, rt = None, self.runtime
        with oom_guard(self.cfg, rt.device, f"evaluating on the {split} split"):
            if not model.embeddings_trainable():  # else the "frozen" part changes each round
                key = (split, boundary)
                if key not in self._features:
                    self._features[key] = frozen_features(model, data, boundary, runtime=rt)
                features = self._features[key]
            return evaluate(
                model,
                data,
                self.shape,
                spec,
                boundary=boundary,
                features=features,
                label_names=list(self.data.label_names),
                per_sample=per_sample,
                runtime=rt,
            )

    @staticmethod
    def metric_columns(metrics: dict[str, float] | None, prefix: str = "val") -> dict[str, Any]:
        """`evaluate_metrics`' result as row columns (val_accuracy, val_f1, val_loss, ...)."""
        return {f"{prefix}_{k}": v for k, v in (metrics or {}).items()}

    def train_groups(
        self,
        server_round: int,
        groups: list[tuple[TuneSpec, dict, list[int]]],
        step: bool = True,
        max_steps: dict[int, int] | None = None,
    ) -> list[GroupResult]:
        """Send every group's tasks at once (they run concurrently on real clients), then
        check and aggregate each group's replies separately. Without `step` a group's state is
        its average, before its configuration's server optimizer (the caller steps it).
        `max_steps`: a cap on some clients' local steps (by client)."""
        sent = self.send_groups(server_round, groups, max_steps)
        return self.receive_groups(server_round, groups, sent, step)

    def send_groups(
        self,
        server_round: int,
        groups: list[tuple[TuneSpec, dict, list[int]]],
        max_steps: dict[int, int] | None = None,
    ) -> Callable[[], Delivery]:
        """Send the groups' tasks; the returned call waits for their replies. A client may
        appear in one group of a call only."""
        caps = max_steps or {}
        tasks = [
            TrainTask(pid, spec, state, server_round, self.run_id, caps.get(pid, 0))
            for spec, state, clients in groups
            for pid in clients
        ]
        self.progress.round_started(server_round, len(tasks))
        if self.ledger:  # every sampled client's participation counts, in any group
            self.ledger.record([t.partition_id for t in tasks])
        submit = getattr(self.transport, "submit", None)
        return submit(tasks) if submit else lambda: self.transport.train(tasks)

    def receive_groups(
        self,
        server_round: int,
        groups: list[tuple[TuneSpec, dict, list[int]]],
        sent: Callable[[], Delivery],
        step: bool = True,
    ) -> list[GroupResult]:
        """Wait for the replies of `send_groups(server_round, groups)` (`sent`), then check
        and aggregate each group's separately (see `train_groups`)."""
        delivery = sent()
        by_pid = {r.partition_id: r for r in delivery.replies}
        results = []
        for spec, state, clients in groups:
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
                # what a server learns of its clients from their replies: their data's size
                # and device (AutoFedNLP's trials place clients by them)
                size = reply.metrics.get("num_samples")
                if size is None:  # a client of an older version: its epochs' examples
                    size = int(reply.metrics["num_examples"]) // self.cfg.client.local_epochs
                self.client_info[pid] = (int(size), str(reply.metrics.get("device", "")))
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
            new_state, shared = state, []
            if updates:
                new_state, shared = self.aggregator.average(state, updates, server_round)
                if step:
                    new_state = self.aggregator.step(spec.label(), state, new_state, server_round)
            results.append(
                GroupResult(
                    new_state,
                    self._round_cost(costs, delivery.lost & set(clients)),
                    clients,
                    failed,
                    sum(losses) / len(losses) if losses else None,
                    hits,
                    misses,
                    shared,
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
            "epsilon": self.ledger.epsilon() if self.ledger else None,
        }

    def record_adoption(self, server_round: int, trial: int) -> None:
        """A trial's decision changed the model the server hands out, at this simulated
        moment: its validation reading now, as a served row of group `adopted` that trained
        nothing (no clients, no round time, no traffic). Time to target counts the model
        handed out at each moment, and from here on that is this one; without the row the
        first reading of an adopted configuration came only after its first round, a round
        after the server switched (on BBC News, alpha 0.5, seed 0: d=2 adopted at 2.29 s
        reading 0.923, first counted at 2.53 s)."""
        nothing = GroupResult({}, RoundCost.of([]), [], {}, None)  # no clients, no cost
        row = self.round_row(server_round, self.spec, nothing)
        row.update(trial=trial, group=ADOPTED, served=True, sim_time_s=self.clock.time_s)
        row.update(self.metric_columns(self.evaluate_metrics("validation")))
        self.record(row)

    def time_to_target(self) -> dict[str, Any] | None:
        """When the served model's target metric reached the target and held it."""
        fed = self.cfg.federation
        return time_to_target(
            self.recorder.rows, fed.target_accuracy, f"val_{self.metric}", fed.target_hold
        )

    def record(self, row: dict[str, Any]) -> None:
        row["wall_time_s"] = time.monotonic() - self._t0
        self.recorder.round(row)
        self.progress(row)

    def out_of_time(self, now_s: float | None = None) -> bool:
        """Whether the simulated clock (or `now_s`) has used up `federation.time_budget_s`:
        then no new round starts."""
        budget = self.cfg.federation.time_budget_s
        return budget > 0 and (self.clock.time_s if now_s is None else now_s) >= budget

    def more_rounds(self, server_round: int, now_s: float | None = None) -> bool:
        """Whether a round may follow `server_round`: neither the round cap nor the time
        budget is reached."""
        return server_round < self.cfg.federation.rounds and not self.out_of_time(now_s)

    def ended_by(self) -> str:
        fed = self.cfg.federation
        if fed.stop_at_target and self.time_to_target() is not None:
            return "target"
        return "time_budget" if self.out_of_time() else "rounds"

    def before_round(self, server_round: int) -> None:
        """Called before each round of `run`, once the budget allows it: a subclass's hook
        (e.g. to change the configuration at a chosen time); nothing here."""

    def run(self) -> dict[str, Any]:
        fed = self.cfg.federation
        for r in range(self.next_round, fed.rounds + 1):
            if self.out_of_time():
                break
            self.before_round(r)
            clients = self.sample(fed.clients_per_round)
            (res,) = self.train_groups(r, [(self.spec, self.state, clients)])
            self.state = res.state
            self.fold_served()
            self.clock.advance(res.cost)
            row = self.round_row(r, self.spec, res)
            row["served"] = True
            row["val_accuracy"], row["val_loss"] = (None, None)
            if r % fed.eval_every == 0 or not self.more_rounds(r):
                row.update(self.metric_columns(self.evaluate_metrics("validation")))
            row["sim_time_s"] = self.clock.time_s
            self.record(row)
            if self.due(r):
                self.checkpoint(r + 1)
            if fed.stop_at_target and self.time_to_target() is not None:
                break
        return self.finish()

    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        test = self.evaluate_metrics("test")
        final = self.evaluate_metrics("validation")
        rows = self.recorder.rows
        target = self.cfg.federation.target_accuracy
        best = {  # of the model handed out, never a trial candidate's reading
            f"best_val_{m}": max(
                (r[f"val_{m}"] for r in rows if r.get(f"val_{m}") is not None and is_served(r)),
                default=None,
            )
            for m in dict.fromkeys(("accuracy", self.metric))
        }
        summary = {
            "name": self.cfg.name,
            "task": self.data.task,
            "config": self.spec.label(),
            "rounds": len({r["round"] for r in rows}),
            # what ended the run: the round cap, the simulated-time budget or the target
            "ended_by": self.ended_by(),
            "time_budget_s": self.cfg.federation.time_budget_s or None,
            "target_metric": self.metric,
            "target_accuracy": target,  # the target value of target_metric (the key is old)
            "time_to_accuracy": self.time_to_target(),
            "target_hold": self.cfg.federation.target_hold,
            **best,
            "final_val_accuracy": final.get("accuracy"),
            f"final_val_{self.metric}": final[self.metric],
            **{f"test_{k}": v for k, v in test.items()},
            "lost_words": dict(self.data.lost_words),
            "majority_val_accuracy": self.majority,
            "sim_time_s": self.clock.time_s,
            "bytes_up": self.clock.bytes_up,
            "bytes_down": self.clock.bytes_down,
            "energy_j": self.clock.energy_j,
            "wall_time_s": time.monotonic() - self._t0,
            "trainable_params": sum(t.numel() for t in self.state.values()),
            "run_dir": str(self.recorder.run_dir),
            "spec": dataclasses.asdict(self.spec),
            "label_names": list(self.data.label_names),
            "aggregation": self.cfg.aggregation.name,
            # config.toml keeps `auto`; what each such field resolved to for this strategy
            "auto_resolved": self.cfg.auto_resolved(),
            **({"privacy": self.ledger.summary()} if self.ledger else {}),
            **(extra or {}),
        }
        served = self.served_state()
        torch.save(served, self.recorder.run_dir / "trainable_state.pt")
        # exported from the CPU, so that the files load on any machine
        model = self.model_for(self.spec).to("cpu")
        del self._models[self.spec]  # no longer on the runtime's device
        load_trainable(model, served)
        export_model(
            model,
            self.spec,
            list(self.data.label_names),
            self.cfg.model.name,
            self.recorder.run_dir / "export",
            summary,
            self.cfg,
        )
        # the strategy's last state stays in it: `--resume --set federation.rounds=N` extends
        last_round = max((r["round"] for r in rows), default=0)
        self.checkpoint(last_round + 1, {**self._strategy, "finished": True})
        self.recorder.summary(summary)  # last: its presence marks a finished run
        return summary
