"""Flower's deployment engine for real, on 127.0.0.1: a TLS SuperLink with SuperNode
authentication, three SuperNodes, `flwr run .` of AutoFedNLP from the repository root, and one
SuperNode killed while it trains. docs/deploy.md gives the same steps for several machines."""

import csv
import ipaddress
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import psutil
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key
from flwr.app import ConfigRecord, Message, RecordDict

from autofednlp.deploy.certs import main as certs_main
from autofednlp.deploy.certs import make_node_key, make_trial_certs

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode and flwr live here

# Three rounds of AutoFedNLP on a tiny slice of BBC News with the packaged MiniLM, serving the
# latest weights (an average lags a 3-round run). Background trials: a probe node trains keep
# and deeper beside the served rounds in a probe round short enough to end within the run, so
# rounds.csv lists every task a node trained (a shadow's probe round outlasts 3 rounds, and a
# probe's work the run ends before is counted in clients.json but has no row). A healthy round
# takes 20-35 s on two busy cores (every message starts a ClientApp process that imports torch
# and transformers), so a 60 s timeout only cuts off the node that is gone.
ROUNDS = 3
RUN_OVERRIDES = [
    "data.max_samples=150",
    "data.max_length=32",
    "data.num_clients=3",
    "federation.clients_per_round=3",
    f"federation.rounds={ROUNDS}",
    "federation.round_timeout_s=60",
    "strategy.name=autofed",
    "strategy.trial_rounds=1",
    "strategy.trial_pace=background",  # a bare word: the overrides go inside a quoted string
    "federation.served_ema=0",
    "tune.depth=0",
    "tune.width=8",
]


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A port free now, never handed out before in this session, and outside the kernel's
    ephemeral range: a port from bind(0) is in that range, where any process's outgoing
    connection (a SuperNode dialling the SuperLink, say) can take it before the server
    meant to listen on it binds (seen in CI: 'address already in use')."""
    low, _ = _ephemeral_range()
    candidates = [p for p in range(max(1024, low - 12000), low) if p not in _handed_out]
    for port in random.Random(os.getpid()).sample(candidates, len(candidates)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def _tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class Processes:
    """Every process this test starts, each in its own session, logged to a file, and stopped
    with all its descendants (Flower's SuperExec and app processes) whatever happens."""

    def __init__(self, log_dir: Path, env: dict[str, str], cwd: Path) -> None:
        self.log_dir, self.env, self.cwd = log_dir, env, cwd
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, program: str, *args: str, cwd: Path | None = None):
        log = (self.log_dir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [str(BIN / program), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=cwd or self.cwd,
            start_new_session=True,
        )
        log.close()
        return self.procs[name]

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def wait(self, name: str, timeout_s: float) -> int:
        try:
            return self.procs[name].wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} still running after {timeout_s} s:\n{self.log(name)[-3000:]}")

    def kill(self, name: str) -> None:
        """SIGKILL a process and its descendants at once: a device that dies."""
        for p in _tree(self.procs[name].pid):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.procs[name].wait(timeout=30)

    def stop_all(self, grace_s: float = 15.0) -> list[psutil.Process]:
        """SIGTERM everything (SuperNodes then leave cleanly), SIGKILL what is left after
        `grace_s`; returns what still lives (should be nothing)."""
        procs = [p for proc in self.procs.values() for p in _tree(proc.pid)]
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(alive, timeout=10)
        for proc in self.procs.values():
            proc.poll()
        return alive

    def wait_for_line(self, name: str, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log(name):
            if self.procs[name].poll() is not None:
                pytest.fail(f"{name} exited before {text!r}:\n{self.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} from {name} in {timeout_s} s:\n{self.log(name)[-3000:]}")
            time.sleep(0.5)


# Certificates and keys (fast).


def test_trial_certs_name_the_host_and_chain_to_the_ca(tmp_path):
    certs = make_trial_certs(tmp_path, ["10.1.2.3", "link.example.org"], days=30)
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("127.0.0.1"),  # the SuperLink's own SuperExec connects there
    }
    assert set(san.get_values_for_type(x509.DNSName)) == {"link.example.org", "localhost"}
    key = load_pem_private_key(certs.server_key.read_bytes(), None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()
    for private in (certs.ca_key, certs.server_key):
        assert private.stat().st_mode & 0o777 == 0o600


def test_node_key_is_an_openssh_p384_pair(tmp_path):
    private, public = make_node_key(tmp_path, "node7")
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    kind, blob, comment = public.read_text().split()
    assert (kind, comment) == ("ecdsa-sha2-nistp384", "node7")
    assert private.stat().st_mode & 0o777 == 0o600


def test_certs_command_writes_every_file(tmp_path, capsys):
    assert certs_main(["--host", "127.0.0.1", "--out", str(tmp_path), "--node-keys", "2"]) == 0
    names = {"ca.crt", "ca.key", "server.crt", "server.key", "node0", "node0.pub", "node1"}
    assert names <= {p.name for p in tmp_path.iterdir()}
    assert str(tmp_path / "server.crt") in capsys.readouterr().out


# The Flower app (fast, and slow where Flower packs the repository).


def test_pyproject_is_a_valid_flower_app():
    from flwr.common.config import validate_config

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    valid, errors, _ = validate_config(config, check_module=True, project_dir=REPO)
    assert valid, errors
    assert config["tool"]["flwr"]["app"]["config"]["config"] == ""  # the experiment file
    assert "federations" not in config["tool"]["flwr"]  # `flwr run` would rewrite the file


def test_relative_config_is_read_from_the_submitted_app(tmp_path):
    from autofednlp.config.runconfig import experiment_from_run_config

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "exp.toml").write_text('name = "from-fab"\n[federation]\nrounds = 7\n')
    run_config = {"config": "configs/exp.toml", "set": "federation.rounds=3; data.max_length=32"}
    cfg = experiment_from_run_config(run_config, app_dir=tmp_path)
    assert (cfg.name, cfg.federation.rounds, cfg.data.max_length) == ("from-fab", 3, 32)


class LostNodeGrid:
    """Node 11 answers, node 12 stopped sending heartbeats (the SuperLink answers for it, as
    flwr 1.42 does), node 13 is silent until the timeout."""

    def __init__(self):
        self.sent, self.replies, self.pulls = [], [], 0

    def get_node_ids(self):
        return [11, 12, 13]

    def pull_messages(self, message_ids):
        self.pulls += 1
        got = [r for r in self.replies if r.metadata.reply_to_message_id in message_ids]
        self.replies = [r for r in self.replies if r not in got]
        return got

    def push_messages(self, messages):
        self.sent += messages
        from flwr.server.superlink.linkstate.utils import (
            create_message_error_unavailable_res_message,
        )

        replies = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id  # what Grid.push_messages does
            if m.metadata.dst_node_id == 11:
                content = RecordDict(
                    {
                        "arrays": m.content["arrays"],
                        "metrics": ConfigRecord({"num_examples": 4, "train_loss": 0.5}),
                    }
                )
                replies.append(Message(content, reply_to=m))
            elif m.metadata.dst_node_id == 12:
                replies.append(create_message_error_unavailable_res_message(m.metadata, "x"))
        self.replies += replies
        return [m.metadata.message_id for m in messages]


def test_grid_transport_names_the_lost_client_and_why(monkeypatch, tmp_path):
    from flwr.supercore.task_identity import TaskIdentity

    from autofednlp.config import load_config
    from autofednlp.model.kinds import TuneSpec
    from autofednlp.server.app import GridTransport
    from autofednlp.server.loop import TrainTask

    for name in ("_run_id", "_node_id", "_task_id"):  # what a ServerApp process has set
        monkeypatch.setattr(TaskIdentity, name, 1)
    cfg = load_config(
        None,
        ["data.num_clients=3", "federation.clients_per_round=3", "federation.round_timeout_s=1"],
    )
    labels = ["business", "sport"]
    clients_file = tmp_path / "clients.json"
    transport = GridTransport(LostNodeGrid(), cfg, labels, clients_file=clients_file)
    transport.node_of = {0: 11, 1: 12, 2: 13}  # as discovered
    spec, state = TuneSpec("bottleneck", 1, 8), {"w": torch.zeros(3)}
    out = transport.train([TrainTask(p, spec, state, server_round=2) for p in range(3)])
    assert [r.partition_id for r in out.replies] == [0]
    assert out.failed[1].startswith("Error: Node Unavailable")
    assert out.failed[2] == "no reply before the round timeout"
    assert out.lost == {1, 2}  # both cost the round its timeout on the simulated clock
    assert 3 <= transport.grid.pulls <= 12  # every 0.1 s until the 1 s timeout, not every 3 s
    # the label set travels with every task: devices with their own files number labels by it
    assert all(list(m.content["config"]["label_names"]) == labels for m in transport.grid.sent)
    shown = {c["client"]: c for c in json.loads(clients_file.read_text())}
    assert shown[0]["rounds_trained"] == 1 and shown[0]["examples"] == 4
    assert shown[2]["rounds_failed"] == 1 and "timeout" in shown[2]["last_failure"]


def test_grid_transport_pushes_at_submit_and_collects_each_call_apart(monkeypatch, tmp_path):
    """Background trials push the probes' tasks, run served rounds, then collect: every push
    happens at `submit`, and each collection gets its own call's replies, even for a client
    sent two tasks (a probe trains keep's configuration and a candidate's)."""
    from flwr.supercore.task_identity import TaskIdentity

    from autofednlp.config import load_config
    from autofednlp.model.kinds import TuneSpec
    from autofednlp.server.app import GridTransport
    from autofednlp.server.loop import TrainTask

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    cfg = load_config(None, ["data.num_clients=3", "federation.clients_per_round=3"])
    transport = GridTransport(LostNodeGrid(), cfg, ["a", "b"], clients_file=tmp_path / "c.json")
    transport.node_of = {0: 11, 1: 12, 2: 13}
    keep = {"w": torch.zeros(3)}
    deeper = {"w": torch.ones(3)}
    first = transport.submit([TrainTask(0, TuneSpec("bottleneck", 1, 8), keep, 5)])
    second = transport.submit([TrainTask(0, TuneSpec("bottleneck", 2, 8), deeper, 5)])
    assert len(transport.grid.sent) == 2 and transport.grid.pulls == 0  # both out, none waited
    got_second, got_first = second(), first()
    assert torch.equal(got_second.replies[0].state["w"], deeper["w"])
    assert torch.equal(got_first.replies[0].state["w"], keep["w"])
    assert not got_first.failed and not got_second.failed


class IdentityGrid:
    """Nodes answer identity queries: node id -> partition id, or an error text."""

    def __init__(self, answers):
        self.answers, self.alive, self.queried, self.replies = answers, list(answers), [], []

    def get_node_ids(self):
        return list(self.alive)

    def push_messages(self, messages):
        from flwr.app import Error

        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            nid = m.metadata.dst_node_id
            self.queried.append(nid)
            answer = self.answers[nid]
            if isinstance(answer, str):
                self.replies.append(Message(Error(code=0, reason=answer), reply_to=m))
            else:
                ident = {"partition_id": answer, "device": "rpi4", "data_file": ""}
                self.replies.append(
                    Message(RecordDict({"identity": ConfigRecord(ident)}), reply_to=m)
                )
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids):
        got = [r for r in self.replies if r.metadata.reply_to_message_id in message_ids]
        self.replies = [r for r in self.replies if r not in got]
        return got


def test_clients_json_keeps_history_across_rejoins_resumes_and_bad_nodes(monkeypatch, tmp_path):
    from flwr.supercore.task_identity import TaskIdentity

    from autofednlp.config import load_config
    from autofednlp.server.app import GridTransport
    from autofednlp.server.loop import Delivery

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    cfg = load_config(None, ["data.num_clients=3", "federation.clients_per_round=2"])
    grid = IdentityGrid({11: 0, 12: 1, 13: "ValueError: node config data-file = 'x.tsv': bad"})
    clients_file = tmp_path / "clients.json"
    transport = GridTransport(grid, cfg, ["a", "b"], start_wait_s=0, clients_file=clients_file)
    # resumed: rows before the interruption count
    transport.restore([{"clients": "0 1", "failed_clients": "1"}, {"clients": "0 2"}])
    assert sorted(transport.available_partitions()) == [0, 1]
    transport._count(Delivery(failed={0: "no reply before the round timeout"}))
    grid.answers[21], grid.alive = 0, [21, 12, 13]  # client 0's device rejoined as node 21
    assert sorted(transport.available_partitions()) == [0, 1]
    assert grid.queried == [11, 12, 13, 21]  # the node that failed its identity is not re-asked
    shown = json.loads(clients_file.read_text())
    by_client = {c["client"]: c for c in shown}
    assert by_client[0]["node_id"] == 21 and by_client[0]["rounds_trained"] == 2
    assert by_client[0]["rounds_failed"] == 1 and "timeout" in by_client[0]["last_failure"]
    assert by_client[1]["rounds_failed"] == 1 and by_client[2]["rounds_trained"] == 1
    assert by_client[None]["node_id"] == 13 and "x.tsv" in by_client[None]["last_failure"]


class JoiningGrid:
    """SuperNodes connect one by one, as after `flwr run` was called before the devices."""

    def __init__(self, counts):
        self.counts = itertools.chain(counts, itertools.repeat(counts[-1]))

    def get_node_ids(self):
        return list(range(next(self.counts)))


@pytest.mark.parametrize(
    "counts, start_wait_s, outcome",
    [
        ([0, 1, 2, 3], 60, "ready"),  # waits for clients_per_round = 3
        ([0, 1, 1, 1, 1], 0.05, "fewer"),  # gives up and starts with what came
        ([0, 0, 0, 0, 0], 0.05, "error"),  # nobody: a clear error, not empty rounds
    ],
)
def test_first_round_waits_for_supernodes(counts, start_wait_s, outcome):
    from autofednlp.config import load_config
    from autofednlp.server.app import GridTransport

    cfg = load_config(None, ["data.num_clients=3", "federation.clients_per_round=3"])
    transport = GridTransport(JoiningGrid(counts), cfg, start_wait_s=start_wait_s)
    if outcome == "error":
        with pytest.raises(RuntimeError, match="no SuperNode connected"):
            transport.wait_for_nodes(poll_s=0.02)
    else:
        transport.wait_for_nodes(poll_s=0.02)
        assert len(transport.grid.get_node_ids()) == (3 if outcome == "ready" else 1)


@pytest.mark.slow
def test_fab_holds_the_sources_not_the_venv():
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(REPO)
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert "src/autofednlp/server/app.py" in names and "configs/default.toml" in names
    assert not [n for n in names if n.startswith((".venv/", "runs/")) or "/test_" in n]
    assert len(fab) < 1_000_000, len(fab)


# The deployment engine end to end (slow: about 3-4 minutes on two busy cores).


OWN_ROWS = 12


def _own_data_file(path: Path) -> str:
    """A device's private CSV: BBC articles it holds itself, under the server's label names."""
    from autofednlp.data.sources import load_bbc_news

    bbc = load_bbc_news()
    picks = range(0, len(bbc.texts), len(bbc.texts) // OWN_ROWS)[:OWN_ROWS]
    rows = [(bbc.texts[i][:300], bbc.label_names[bbc.labels[i]]) for i in picks]
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return str(path)


def _rows(run_root: Path) -> list[dict[str, str]]:
    files = sorted(run_root.glob("*/rounds.csv"))
    if not files:
        return []
    with files[0].open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.serial  # its rounds race a 60 s timeout
def test_flwr_run_on_tls_superlink_survives_a_lost_supernode(tmp_path):
    certs = make_trial_certs(tmp_path / "certs", ["127.0.0.1"])
    keys = {n: make_node_key(tmp_path / "keys", n) for n in ("node0", "node1", "node2", "spare")}
    rogue_key, _ = make_node_key(tmp_path / "keys", "rogue")  # never registered
    port = free_port()
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "trial"\n\n[superlink.trial]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{certs.ca_cert}"\n'
    )
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # SuperLink spawns SuperExec
        "FLWR_HOME": str(flwr_home),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    link_dir = tmp_path / "superlink"  # its working directory: the ServerApp's too
    link_dir.mkdir()
    run_root = tmp_path / "runs"
    procs = Processes(tmp_path, env, cwd=tmp_path)
    tls = ["--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile", str(certs.server_cert)]
    t_start = time.monotonic()
    try:
        procs.start(
            "superlink",
            "flower-superlink",
            *tls,
            "--ssl-keyfile", str(certs.server_key),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--database", str(tmp_path / "superlink.db"),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            cwd=link_dir,
        )  # fmt: skip
        procs.wait_for_line("superlink", "Uvicorn running on https://", 60)
        for name, (_, public) in keys.items():
            procs.start(f"register-{name}", "flwr", "supernode", "register", str(public), "trial")
        for name in keys:
            assert procs.wait(f"register-{name}", 60) == 0, procs.log(f"register-{name}")

        def supernode(name: str, *args: str) -> None:
            procs.start(name, "flower-supernode", "--superlink", f"127.0.0.1:{port}",
                        "--port", str(free_port()), *args)  # fmt: skip

        # node2: a device profile by name, and its own data file instead of a partition
        own = ' device="rpi4" data-file="' + _own_data_file(tmp_path / "node2-data.csv") + '"'
        for i, device in enumerate(["", "", own]):
            supernode(
                f"node{i}",
                "--root-certificates", str(certs.ca_cert),
                "--auth-supernode-private-key", str(keys[f"node{i}"][0]),
                "--node-config", f"partition-id={i} num-partitions=3{device}",
            )  # fmt: skip
        # Refused: a SuperNode that does not trust our CA, and one whose key is not registered.
        supernode("no-ca", "--auth-supernode-private-key", str(keys["spare"][0]),
                  "--node-config", "partition-id=0", "--max-retries", "1")  # fmt: skip
        supernode("rogue", "--root-certificates", str(certs.ca_cert),
                  "--auth-supernode-private-key", str(rogue_key),
                  "--node-config", "partition-id=0", "--max-retries", "1")  # fmt: skip
        for i in range(3):
            procs.wait_for_line(f"node{i}", "SuperNode ID:", 60)
        assert procs.wait("no-ca", 60) != 0
        assert "CERTIFICATE_VERIFY_FAILED" in procs.log("no-ca")
        assert procs.wait("rogue", 60) != 0
        assert "Failed to activate SuperNode" in procs.log("rogue")
        t_ready = time.monotonic()

        overrides = ";".join([*RUN_OVERRIDES, f"output_dir={run_root}"])
        run = procs.start(
            "flwr-run",
            "flwr", "run", ".", "trial",
            "--run-config", f'config="configs/default.toml" set="{overrides}"',
            "--stream",
            cwd=REPO,
        )  # fmt: skip
        killed, deadline = None, time.monotonic() + 480
        while run.poll() is None:
            assert time.monotonic() < deadline, procs.log("flwr-run")[-5000:]
            if killed is None and any(r["round"] == "1" for r in _rows(run_root)):
                # Round 1 is recorded; kill the first node that receives a round-2 task,
                # while its ClientApp is still loading: it never replies.
                for i in range(3):
                    if "ROUND 2]" in procs.log(f"node{i}"):
                        procs.kill(f"node{i}")
                        killed = i
                        break
            time.sleep(1)
        t_done = time.monotonic()
        out = procs.log("flwr-run")
        assert run.returncode == 0, out[-5000:]
    finally:
        survivors = procs.stop_all()
    assert not survivors, survivors

    assert killed is not None, out[-5000:]
    summaries = list(run_root.glob("*/summary.json"))
    assert summaries, out[-5000:]
    summary = json.loads(summaries[0].read_text())
    assert summary["rounds"] == ROUNDS
    rows = _rows(run_root)
    failed = [r for r in rows if r["failed_clients"]]
    assert failed and all(r["failed_clients"] == str(killed) for r in failed), rows
    assert all(int(r["round"]) >= 2 for r in failed), rows
    assert f"client {killed} failed" in out
    clients = {
        c["client"]: c for c in json.loads(summaries[0].with_name("clients.json").read_text())
    }
    assert clients[2]["data"].endswith("node2-data.csv") and clients[2]["device"] == "rpi4"
    assert clients[0]["data"].startswith("partition 0 of")
    trained = [
        r for r in rows if "2" in r["clients"].split() and "2" not in r["failed_clients"].split()
    ]
    assert clients[2].get("rounds_trained", 0) == len(trained), (clients, rows)
    if trained:  # it trained on its own 12 rows, not on partition 2 of the server's data
        assert clients[2]["examples"] == OWN_ROWS, clients
    first = max(float(r["val_accuracy"]) for r in rows if r["round"] == "1")
    final, chance = summary["final_val_accuracy"], 1 / 5
    assert final > first or final >= 2 * chance, (summary, rows)

    walls = {int(r["round"]): float(r["wall_time_s"]) for r in rows}
    per_round = [round(walls[r] - walls[r - 1], 1) for r in sorted(walls) if r - 1 in walls]
    print(
        f"\ndeployment: ready in {t_ready - t_start:.0f} s, flwr run {t_done - t_ready:.0f} s, "
        f"round 1 done at {walls[1]:.0f} s of the ServerApp, later rounds {per_round} s, "
        f"killed node{killed}; failed rows: {[(r['round'], r['failed_clients']) for r in failed]}; "
        f"node2 trained on its own file in {len(trained)} rounds"
    )
