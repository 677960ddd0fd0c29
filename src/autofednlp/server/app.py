"""Flower ServerApp: runs the engine-independent `FederatedRun` over Flower's Grid."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.config import get_project_dir
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import InMemoryGrid

from autofednlp.config import ConfigError, ExperimentConfig, to_toml
from autofednlp.report.results import new_run_dir
from autofednlp.server import make_run
from autofednlp.server.loop import Delivery, TrainReply, TrainTask

log = logging.getLogger("autofednlp")


def exchange(
    grid: Grid, messages: list[Message], timeout: float | None, poll_s: float = 0.1
) -> list[Message]:
    """Send `messages` and collect the replies that come within `timeout` seconds (None: all).

    Flower's `Grid.send_and_receive` does the same but sleeps a fixed 3 s between pulls on the
    deployment engine, which adds 1.5 s to every round on average; pulling a few replies more
    often costs the SuperLink next to nothing. 0.1 s is the simulation engine's own interval.
    """
    return collect(grid, set(grid.push_messages(messages)), timeout)


def collect(
    grid: Grid, pending: set[str], timeout: float | None, poll_s: float = 0.1, since: float = 0.0
) -> list[Message]:
    """The replies to the pushed messages `pending` that come within `timeout` seconds of
    `since` (a `time.monotonic()` reading; default now)."""
    pending = set(pending)
    deadline = None if timeout is None else (since or time.monotonic()) + timeout
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if not pending or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(poll_s)
    return replies


class GridTransport:
    """Maps client (partition) ids to Flower node ids and carries train tasks as Messages."""

    def __init__(
        self,
        grid: Grid,
        cfg: ExperimentConfig,
        label_names: list[str] | None = None,
        start_wait_s: float = 600.0,
        clients_file: Path | None = None,
    ) -> None:
        self.grid = grid
        self.cfg = cfg
        self.experiment = to_toml(cfg)
        # devices with their own data file number their labels by the server's label set
        self.label_names = list(label_names or cfg.data.labels)
        self.timeout = cfg.federation.round_timeout_s or None
        self.start_wait_s = start_wait_s
        self.clients_file = clients_file
        self.node_of: dict[int, int] = {}  # partition id -> node id
        self.clients: dict[int, dict[str, Any]] = {}  # partition id -> what clients.json shows
        self.unidentified: dict[int, str] = {}  # node id -> why it did not identify itself
        # a simulated federation larger than the experiment: its extra nodes stay idle
        self.simulated = isinstance(grid, InMemoryGrid)
        self._started = False

    def wait_for_nodes(self, poll_s: float = 2.0) -> None:
        """Wait until `clients_per_round` SuperNodes are connected, for at most `start_wait_s`.

        Flower starts the ServerApp as soon as `flwr run` is called, devices or not; without
        this wait the first rounds would sample nobody and train nothing. Later rounds go on
        with the nodes alive (waiting then would hang on a lost device).
        """
        want = self.cfg.federation.clients_per_round
        deadline = time.monotonic() + self.start_wait_s
        last_note = 0.0
        while (have := len(list(self.grid.get_node_ids()))) < want:
            now = time.monotonic()
            if now >= deadline:
                if have == 0:
                    raise RuntimeError(f"no SuperNode connected within {self.start_wait_s:.0f} s")
                log.warning("starting with %d of %d SuperNodes", have, want)
                return
            if now - last_note >= 30:
                log.warning("waiting for SuperNodes: %d of %d connected", have, want)
                last_note = now
            time.sleep(poll_s)

    def _discover(self, node_ids: list[int]) -> None:
        # A node that answered with an error (say, its data file is missing) is not asked again:
        # fixing it means restarting its SuperNode, which then joins under a new node id.
        known = set(self.node_of.values()) | set(self.unidentified)
        new = [n for n in node_ids if n not in known]
        if not new:
            return
        content = RecordDict({"config": ConfigRecord({"experiment": self.experiment})})
        msgs = [Message(content, dst_node_id=n, message_type=MessageType.QUERY) for n in new]
        replies = exchange(self.grid, msgs, self.timeout)
        node_of_msg = {m.metadata.message_id: m.metadata.dst_node_id for m in msgs}
        for reply in replies:
            nid = node_of_msg.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if reply.has_error():
                why = reply.error.reason.strip().splitlines()[-1][:300]
                log.warning("node %d did not identify itself: %s", nid, why)
                self.unidentified[nid] = why
                continue
            ident = reply.content["identity"]
            pid = int(ident["partition_id"])
            old = self.node_of.get(pid)
            if old is not None and old != nid and old in node_ids:
                log.warning("node %d also claims client id %d: it replaces node %d", nid, pid, old)
            self.node_of[pid] = nid
            data = str(ident.get("data_file", "")) or f"partition {pid} of {self.cfg.data.dataset}"
            # a device that rejoined under a new node id keeps its history
            info = self.clients.setdefault(pid, {})
            info.update(node_id=nid, device=str(ident["device"]), data=data)
        self._write_clients()

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Resuming: count the rounds each client trained and failed before the interruption
        from the run's rows, so clients.json agrees with rounds.csv."""
        for row in rows:
            failed = set(str(row.get("failed_clients") or "").split())
            for pid in str(row.get("clients") or "").split():
                info = self.clients.setdefault(int(pid), {})
                key = "rounds_failed" if pid in failed else "rounds_trained"
                info[key] = info.get(key, 0) + 1

    def _write_clients(self) -> None:
        """Which node is which client, its device and data, and how its rounds went."""
        if self.clients_file is None:
            return
        rows = [{"client": pid, **info} for pid, info in sorted(self.clients.items())]
        rows += [
            {"client": None, "node_id": nid, "last_failure": f"did not identify itself: {why}"}
            for nid, why in sorted(self.unidentified.items())
        ]
        tmp = self.clients_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1), encoding="utf-8")
        tmp.replace(self.clients_file)

    def available_partitions(self) -> list[int]:
        if not self._started:
            self.wait_for_nodes()
            self._started = True
        alive = list(self.grid.get_node_ids())
        self._discover(alive)
        alive_set = set(alive)
        pids = [pid for pid, nid in self.node_of.items() if nid in alive_set]
        if self.simulated:
            pids = [pid for pid in pids if pid < self.cfg.data.num_clients]
        return pids

    def train(self, tasks: list[TrainTask]) -> Delivery:
        return self.submit(tasks)()

    def submit(self, tasks: list[TrainTask]) -> Callable[[], Delivery]:
        """Push the tasks now; the returned call collects their replies (the server may run
        other rounds meanwhile, as with AutoFedNLP's background trials)."""
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
                    "max_steps": t.max_steps,
                    "label_names": self.label_names,
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
        pushed = set(self.grid.push_messages(msgs))
        since = time.monotonic()
        return lambda: self._delivery(
            msgs, pid_of, collect(self.grid, pushed, self.timeout, since=since)
        )

    def _delivery(self, msgs: list[Message], pid_of: dict, replies: list[Message]) -> Delivery:
        out = Delivery()
        # Match replies by message id (set when sent): for a node that stopped sending
        # heartbeats, Flower's SuperLink answers itself, with an error from node 1.
        pid_of_msg = {m.metadata.message_id: pid_of[m.metadata.dst_node_id] for m in msgs}
        for reply in replies:
            pid = pid_of_msg.get(reply.metadata.reply_to_message_id)
            if pid is None:
                continue
            if reply.has_error():
                out.failed[pid] = reply.error.reason.strip().splitlines()[-1][:300]
                if reply.error.code == ErrorCode.NODE_UNAVAILABLE:  # its device went away
                    out.lost.add(pid)
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
                out.lost.add(pid)
        self._count(out)
        return out

    def _count(self, out: Delivery) -> None:
        for r in out.replies:
            info = self.clients.setdefault(r.partition_id, {})
            info["rounds_trained"] = info.get("rounds_trained", 0) + 1
            info["examples"] = r.metrics.get("num_examples")
        for pid, why in out.failed.items():
            info = self.clients.setdefault(pid, {})
            info["rounds_failed"] = info.get("rounds_failed", 0) + 1
            info["last_failure"] = why
        self._write_clients()


def submitted_app_dir(grid: Grid) -> Path | None:
    """Where this process unpacked the app that `flwr run` submitted; None outside deployment."""
    try:
        run = grid.run
        return get_project_dir(run.fab_id, run.fab_version, run.fab_hash)
    except Exception:  # no run set (a test's grid) or an empty FAB id
        return None


def given_keys(grid: Grid) -> set[str] | None:
    """The run config keys the user set with `flwr run --run-config`; None if unknown."""
    try:
        return set(grid.run.override_config)
    except Exception:  # no run set (a test's grid)
        return None


def simulated_supernodes(grid: Grid, settle_s: float = 0.5, max_wait_s: float = 30.0) -> int | None:
    """How many virtual SuperNodes Flower's simulation engine runs; None on the deployment
    engine, where devices join over time. The engine registers its nodes right after it starts
    the ServerApp, all at once: the count is read once it holds still."""
    if not isinstance(grid, InMemoryGrid):
        return None
    last, deadline = -1, time.monotonic() + max_wait_s
    while True:
        n = len(list(grid.get_node_ids()))
        if (n == last and n > 0) or time.monotonic() >= deadline:
            return n
        last = n
        time.sleep(settle_s)


def check_federation_size(cfg: ExperimentConfig, supernodes: int | None) -> None:
    """A simulated federation must have a SuperNode for every client of the experiment.

    Flower's default local federation has 2; waiting for more would wait forever. Extra
    SuperNodes are left idle (their partition ids lie past `data.num_clients`)."""
    want = cfg.data.num_clients
    if supernodes is None or supernodes >= want:
        return
    raise ConfigError(
        f"data.num_clients = {want}: the simulated federation has {supernodes} SuperNodes; "
        f'run `flwr run . --federation-config "num-supernodes={want}"` (or once: `flwr '
        f"federation simulation-config <federation> <superlink> --num-supernodes {want}`), "
        f"or lower data.num_clients"
    )


def _one_line_config_errors(record: logging.LogRecord) -> bool:
    """Flower logs a failed app's exception with its traceback; a user mistake (ConfigError)
    is one line naming the field, so it is logged as that line."""
    exc = record.exc_info[1] if record.exc_info else None
    while exc is not None and not isinstance(exc, ConfigError):
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, ConfigError):
        record.msg, record.args, record.exc_info = f"{record.getMessage()}: {exc}", (), None
    return True


def _serve(
    grid: Grid,
    cfg: ExperimentConfig,
    rd: Path,
    progress: str | bool,
    resume: dict | None,
) -> dict[str, Any]:
    from autofednlp.client.worker import client_data

    data = client_data(cfg)
    transport = GridTransport(grid, cfg, data.label_names, clients_file=rd / "clients.json")
    if resume:
        transport.restore(resume["rows"])
    return make_run(cfg, data, transport, rd, progress, resume).run()


def run_submitted(grid: Grid, context: Context) -> None:
    """`flwr run .`: build the experiment from the run config, refuse a simulated federation
    too small for it, then run it as `autofednlp run` would (same checks, run directory,
    lock and results), printing the run directory's absolute path."""
    from autofednlp.config.runconfig import experiment_from_run_config
    from autofednlp.run import run_experiment

    flwr_log = logging.getLogger("flwr")
    if _one_line_config_errors not in flwr_log.filters:
        flwr_log.addFilter(_one_line_config_errors)
    cfg = experiment_from_run_config(
        dict(context.run_config), given_keys(grid), submitted_app_dir(grid)
    )
    check_federation_size(cfg, simulated_supernodes(grid))
    if cfg.federation.engine != "simulation":
        log.warning(
            "federation.engine = %r is `autofednlp run`'s choice; `flwr run` runs on Flower's "
            "engine",
            cfg.federation.engine,
        )
    summary = run_experiment(
        cfg, progress="lines", run_on=lambda c, rd, p, r: _serve(grid, c, rd, p, r)
    )
    from autofednlp.cli import format_summary

    # the ServerApp's stderr is what `flwr run --stream` and `flwr log` show; the summary
    # ends with the run directory's absolute path
    print(format_summary(summary), file=sys.stderr, flush=True)


def make_server_app(
    cfg: ExperimentConfig | None = None,
    run_dir: Path | None = None,
    progress: str | bool = "lines",
    resume: dict | None = None,
) -> ServerApp:
    """A ServerApp bound to `cfg` (`autofednlp run`: already checked, its run directory
    claimed), or reading its experiment from the run config (`flwr run`)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        if cfg is None:
            run_submitted(grid, context)
        else:
            _serve(
                grid,
                cfg,
                Path(run_dir if run_dir is not None else new_run_dir(cfg)),
                progress,
                resume,
            )

    return server_app


app = make_server_app()
