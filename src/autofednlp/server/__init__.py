"""What the server decides: the round loop, aggregation, and AutoFedNLP's trials."""

from __future__ import annotations

from pathlib import Path

from autofednlp.config import ExperimentConfig
from autofednlp.data.federated import FederatedData
from autofednlp.server.loop import FederatedRun, Transport


def make_run(
    cfg: ExperimentConfig,
    data: FederatedData,
    transport: Transport,
    run_dir: Path,
    progress: str | bool = "lines",
    resume: dict | None = None,
) -> FederatedRun:
    """The run for `cfg.strategy.name`: a fixed configuration, or AutoFedNLP's upgrades."""
    if cfg.strategy.name == "autofed" and cfg.strategy.trials == "robust":
        from autofednlp.server.robust import RobustAutoFedRun

        return RobustAutoFedRun(cfg, data, transport, Path(run_dir), progress, resume)
    if cfg.strategy.name == "autofed":
        from autofednlp.server.autofed import AutoFedRun

        return AutoFedRun(cfg, data, transport, Path(run_dir), progress, resume)
    return FederatedRun(cfg, data, transport, Path(run_dir), progress, resume)
