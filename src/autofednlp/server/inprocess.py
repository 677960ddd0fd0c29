"""A transport that runs clients one after another in this process, without an engine.

For debugging and quick sweeps: the simulated clock does not depend on the engine, so results
match the Flower engines' for the same seed. Experiments meant to be deployed use Flower.
"""

from __future__ import annotations

from collections.abc import Callable

from autofednlp.client.worker import train_round
from autofednlp.config import ExperimentConfig
from autofednlp.runtime import OutOfDeviceMemory
from autofednlp.server.loop import Delivery, TrainReply, TrainTask


class InProcessTransport:
    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg

    def available_partitions(self) -> list[int]:
        return list(range(self.cfg.data.num_clients))

    def submit(self, tasks: list[TrainTask]) -> Callable[[], Delivery]:
        """The tasks run when their replies are asked for (one process, one client at a time)."""
        return lambda: self.train(tasks)

    def train(self, tasks: list[TrainTask]) -> Delivery:
        out = Delivery()
        for t in tasks:
            try:
                state, metrics = train_round(
                    self.cfg,
                    t.partition_id,
                    t.spec,
                    t.state,
                    t.server_round,
                    run_id=t.run_id,
                    max_steps=t.max_steps,
                )
            except OutOfDeviceMemory:  # this machine's GPU, not the client: every client fails
                raise
            except Exception as e:  # a failing client must not end the run
                out.failed[t.partition_id] = f"{type(e).__name__}: {e}"
                continue
            out.replies.append(TrainReply(t.partition_id, state, metrics))
        return out
