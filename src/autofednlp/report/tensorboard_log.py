"""TensorBoard event files for a run (option `tensorboard`): what rounds.csv holds, as scalars,
so runs can be watched live and overlaid with `tensorboard --logdir runs/`.

Tags, step = round unless said otherwise:

| tag | what |
|---|---|
| `val/accuracy`, `val/loss`, `train/loss` | the global model's (AutoFedNLP: only accuracy) |
| `val/accuracy_vs_sim_ms` | the same accuracy with step = simulated milliseconds |
| `sim/time_s`, `sim/traffic_mb`, `sim/energy_j` | the simulated clock and totals so far |
| `config/depth`, `config/width` | AutoFedNLP: the configuration each trial chose |
| `<tag>/<group>` | AutoFedNLP: every group's round (`val/accuracy/deeper`, ...) |

AutoFedNLP has no single global model per round: its plain tags follow each trial's winner
(the weights and configuration that continue), one point per trial at its last round.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"


def _sim_ms(sim_time_s: float) -> int:
    # TensorBoard plots a tag against its integer step (or wall-clock time, which here is only
    # how long the simulation took), so accuracy against *simulated* time, the quantity this
    # project is about, gets its own tag whose step is the simulated time. Milliseconds, not
    # seconds: early AutoFedNLP rounds train only the head and last well under a second, and
    # whole seconds would put several rounds on one step.
    return round(sim_time_s * 1000)


class TensorBoardLog:
    """Writes the rows of a run as they are recorded (`RunRecorder` calls it)."""

    def __init__(self, run_dir: Path) -> None:
        # Imported here so that runs without the option do not load tensorboard at all.
        from torch.utils.tensorboard import SummaryWriter

        path = Path(run_dir) / TENSORBOARD_DIR
        # The recorder writes the whole record again when a run resumes (from the checkpoint's
        # rows), and so does this log: what a killed run wrote after its last checkpoint must
        # not stay behind as a second value at the same step.
        shutil.rmtree(path, ignore_errors=True)
        self.writer = SummaryWriter(str(path))
        self.bytes = 0
        self.energy_j = 0.0

    def round(self, row: dict[str, Any]) -> None:
        """One row of rounds.csv; a group row (AutoFedNLP) goes under its group's tags."""
        step = row["round"]
        self.bytes += row["bytes_up"] + row["bytes_down"]
        self.energy_j += row["energy_j"]
        group = row.get("group")
        suffix = f"/{group}" if group else ""
        for tag, key in (
            ("val/accuracy", "val_accuracy"),
            ("val/loss", "val_loss"),
            ("val/macro_f1", "val_macro_f1"),  # classification
            ("val/f1", "val_f1"),  # tagging: entity-level
            ("val/precision", "val_precision"),
            ("val/recall", "val_recall"),
            ("train/loss", "train_loss"),
        ):
            if row.get(key) is not None:
                self.writer.add_scalar(tag + suffix, row[key], step)
        if row.get("val_accuracy") is not None:
            self.writer.add_scalar(
                "val/accuracy_vs_sim_ms" + suffix, row["val_accuracy"], _sim_ms(row["sim_time_s"])
            )
        if not group:
            self._totals(step, row["sim_time_s"], self.bytes, self.energy_j)
        eps = row.get("epsilon")  # client-level DP: one value a round, on the served row
        if eps is not None and eps != float("inf") and (not group or row.get("served")):
            self.writer.add_scalar("privacy/epsilon", eps, step)
        self.writer.flush()  # a killed run keeps what it logged, as it keeps rounds.csv

    def trial(self, entry: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        """The end of an AutoFedNLP trial (an entry of summary.json's trajectory): the winner's
        validation accuracy and configuration, at the trial's last round."""
        step = max((r["round"] for r in rows if r.get("trial") == entry["trial"]), default=None)
        if step is None:  # a trial that ran no round has nothing to show
            return
        done = [r for r in rows if r["round"] <= step]
        self.writer.add_scalar("val/accuracy", entry["val_accuracy"], step)
        self.writer.add_scalar(
            "val/accuracy_vs_sim_ms", entry["val_accuracy"], _sim_ms(entry["sim_time_s"])
        )
        self.writer.add_scalar("config/depth", entry["depth"], step)
        self.writer.add_scalar("config/width", entry["width"], step)
        self._totals(
            step,
            entry["sim_time_s"],
            sum(r["bytes_up"] + r["bytes_down"] for r in done),
            sum(r["energy_j"] for r in done),
        )
        self.writer.flush()

    def _totals(self, step: int, sim_time_s: float, traffic_bytes: int, energy_j: float) -> None:
        self.writer.add_scalar("sim/time_s", sim_time_s, step)
        self.writer.add_scalar("sim/traffic_mb", traffic_bytes / 1e6, step)
        self.writer.add_scalar("sim/energy_j", energy_j, step)

    def close(self) -> None:
        self.writer.close()  # flushes
