"""A run directory a person can open: resolved config, per-round CSV and JSONL, summary JSON."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autofednlp.config import ConfigError, ExperimentConfig, to_toml

if TYPE_CHECKING:
    from autofednlp.report.tensorboard_log import TensorBoardLog

ROUND_FIELDS = [
    "round",
    "trial",
    "group",
    "config",
    "sim_time_s",
    "round_time_s",
    "wall_time_s",
    "val_accuracy",
    "val_loss",
    # the task's other metrics (#10): classification macro-F1; tagging entity-level scores
    "val_macro_f1",
    "val_f1",
    "val_precision",
    "val_recall",
    "train_loss",
    "bytes_up",
    "bytes_down",
    "energy_j",
    "cache_hits",
    "cache_misses",
    "served",
    "clients",
    "failed_clients",
    # client-level DP (#13): epsilon at privacy.delta so far; empty without DP
    "epsilon",
]


CHECKPOINT = "checkpoint.pt"
LOCK = "run.lock"

# run directory -> the round its latest checkpoint resumes from (what an interrupt message says)
last_checkpoint: dict[Path, int] = {}
_held_locks: dict[Path, int] = {}  # run directory -> file descriptor holding its lock


def lock_run_dir(run_dir: Path) -> None:
    """Make this process the only writer of `run_dir` until it exits or calls `unlock_run_dir`.

    An advisory `flock` on `run_dir/run.lock`: the kernel drops it when the process dies, even
    by `kill -9`, so a stale lock never blocks a `--resume`. Taking a lock this process already
    holds is a no-op. A second process is refused in one line naming the holder."""
    import fcntl

    rd = Path(run_dir).resolve()
    if rd in _held_locks:
        return
    try:
        rd.mkdir(parents=True, exist_ok=True)
        fd = os.open(rd / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"run directory {str(rd)!r} cannot be written ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(
            f"run directory {str(rd)!r} is in use by another run ({holder}); wait for it to "
            "end or choose another --run-dir"
        ) from None
    os.ftruncate(fd, 0)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}, since {started}\n".encode(), 0)
    _held_locks[rd] = fd


def unlock_run_dir(run_dir: Path) -> None:
    fd = _held_locks.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def save_checkpoint(run_dir: Path, data: dict[str, Any]) -> None:
    """Write the checkpoint atomically (write, then rename): a kill leaves the previous one."""
    import torch

    path = Path(run_dir) / CHECKPOINT
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    last_checkpoint[Path(run_dir).resolve()] = int(data["next_round"])


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    import torch

    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"--resume {str(run_dir)!r}: no {CHECKPOINT} there to resume from")
    try:
        return torch.load(path, weights_only=False)
    except Exception as e:
        raise ConfigError(f"{str(path)!r} cannot be read ({type(e).__name__})") from None


def new_run_dir(cfg: ExperimentConfig, run_dir: str | None = None, create: bool = True) -> Path:
    """`run_dir` if given (it must not exist yet), else `<output_dir>/<name>-<timestamp>`.

    With `create=False` the directory is only chosen and checked: a run that then fails its
    preflight leaves nothing behind."""
    if run_dir is not None:
        p = Path(run_dir)
        _check_dir_path(p, "--run-dir")
        # a lock file alone (left by whoever cleared the directory for this run) is empty
        if p.exists() and any(f.name != LOCK for f in p.iterdir()):
            raise ConfigError(f"run directory {str(p)!r} already exists and is not empty")
    else:
        _check_dir_path(Path(cfg.output_dir), "output_dir")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        p = Path(cfg.output_dir) / f"{cfg.name}-{stamp}"
        i = 1
        while p.exists():
            p = Path(cfg.output_dir) / f"{cfg.name}-{stamp}-{i}"
            i += 1
    if create:
        make_dir(p, "--run-dir" if run_dir is not None else "output_dir")
    return p.resolve()


def _check_dir_path(p: Path, field: str) -> None:
    """`p` and every existing parent must be directories: a file there is a user mistake."""
    for q in [p, *p.parents]:
        if q.exists():
            if not q.is_dir():
                what = "it" if q == p else f"{str(q)!r}"
                raise ConfigError(f"{field} = {str(p)!r}: {what} is a file, not a directory")
            return


def make_dir(p: Path, field: str) -> Path:
    """Create directory `p` (and parents), a `ConfigError` naming `field` if that fails."""
    _check_dir_path(p, field)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{field} = {str(p)!r}: cannot create it ({e.strerror})") from None
    return p


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class RunRecorder:
    """Appends one row per round as it happens, so a killed run keeps what it did."""

    def __init__(
        self, run_dir: Path, cfg: ExperimentConfig, rows: list[dict[str, Any]] = ()
    ) -> None:
        """A fresh record, or (resuming) one that starts again from `rows`."""
        self.run_dir = Path(run_dir)
        # the command line and the notebook API hold the lock already; a deployed ServerApp
        # takes it here
        lock_run_dir(self.run_dir)
        self.tensorboard: TensorBoardLog | None = None
        if cfg.tensorboard:
            from autofednlp.report.tensorboard_log import TensorBoardLog

            self.tensorboard = TensorBoardLog(self.run_dir)
        (self.run_dir / "config.toml").write_text(to_toml(cfg), encoding="utf-8")
        self._csv_path = self.run_dir / "rounds.csv"
        self._jsonl_path = self.run_dir / "rounds.jsonl"
        with self._csv_path.open("w", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=ROUND_FIELDS).writeheader()
        self._jsonl_path.write_text("", encoding="utf-8")
        self.rows: list[dict[str, Any]] = []
        for row in rows:
            self.round(row)

    def round(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self._csv_path.open("a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=ROUND_FIELDS, extrasaction="ignore")
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in ROUND_FIELDS})
        with self._jsonl_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=str) + "\n")
        if self.tensorboard:
            self.tensorboard.round(row)

    def trial(self, entry: dict[str, Any]) -> None:
        """The end of an AutoFedNLP trial (its trajectory entry): summary.json lists them all at
        the end; the TensorBoard log shows each as it happens."""
        if self.tensorboard:
            self.tensorboard.trial(entry, self.rows)

    def summary(self, summary: dict[str, Any]) -> None:
        if self.tensorboard:
            self.tensorboard.close()
            self.tensorboard = None
        write_json_atomic(self.run_dir / "summary.json", summary)


# the group of a row that records a trial's decision changing the served model (no training)
ADOPTED = "adopted"


def is_adoption(row: dict[str, Any]) -> bool:
    """Whether a row records a decision changing the served model (a reading, not a round)."""
    return row.get("group") == ADOPTED


def is_served(row: dict[str, Any]) -> bool:
    """Whether a round's reading is of the model the server would hand out at that moment: every
    row of a fixed run; for AutoFedNLP its current configuration's, never a trial candidate's."""
    return row.get("served", True) not in (False, 0, "0", "False", "false")


def time_to_target(
    rows: list[dict[str, Any]], target: float, column: str = "val_accuracy", hold: int = 1
) -> dict[str, Any] | None:
    """The first simulated time at which the served model's `column` reached `target` and held
    it for `hold` consecutive evaluations (that one and the next `hold - 1`): one lucky reading
    does not count. None if it never did. The same definition for every method, in every
    summary and in the benchmark. Each moment counts once, with its last reading: a
    decision's `adopted` row supersedes the reading of the model it replaced at that moment,
    so a hold spans readings at distinct times."""
    ordered = sorted(
        (r for r in rows if r.get(column) is not None and is_served(r)),
        key=lambda r: (r["sim_time_s"], r["round"]),
    )
    served = [
        r
        for i, r in enumerate(ordered)
        if i + 1 == len(ordered) or ordered[i + 1]["sim_time_s"] != r["sim_time_s"]
    ]
    for i in range(len(served) - max(hold, 1) + 1):
        if all(r[column] >= target for r in served[i : i + max(hold, 1)]):
            return {"sim_time_s": served[i]["sim_time_s"], "round": served[i]["round"]}
    return None


def human_duration(seconds: float | None) -> str:
    """Simulated durations span seconds to days: pick the unit that reads well."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def human_bytes(n_bytes: float | None) -> str:
    """Traffic spans kilobytes (a few adapter rounds) to gigabytes (full fine-tuning)."""
    if n_bytes is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{n_bytes:.0f} B"


def human_energy(joules: float | None) -> str:
    """Energy in Wh (kWh when large); J below a tenth of a Wh, where Wh reads as 0.00."""
    if joules is None:
        return "-"
    wh = joules / 3600
    if wh >= 1000:
        return f"{wh / 1000:.2f} kWh"
    if wh >= 0.1:
        return f"{wh:.2f} Wh"
    return f"{joules:.1f} J"
