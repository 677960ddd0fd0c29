"""The served model's validation loss over simulated time (`ServedLoss`): its recent level,
its rate of fall and that rate's standard error, from the recorded rows, so a resumed run
computes the same. A background trial prices a candidate's extra round time at the rate; a
plateau (`server/plateau.py`) is a rate within the noise or a level no lower than before;
`strategy.trial_gate = "plateau"` starts a trial only once the current configuration's own
rate is within the noise (`PlateauTrials._settled`).
"""

from __future__ import annotations

import math

from autofednlp.report.results import is_adoption, is_served


class ServedLoss:
    """Statistics of the served readings; a mixin for a run with a `recorder`."""

    def served_loss_level(self, last: int) -> tuple[float, float]:
        """Mean of the served model's last `last` validation losses and its standard error
        (0 with fewer than 2 readings; (inf, 0) with none)."""
        losses = [v for _, v in self._served_losses()[-last:]]
        if not losses:
            return math.inf, 0.0
        mean = sum(losses) / len(losses)
        if len(losses) < 2:
            return mean, 0.0
        var = sum((v - mean) ** 2 for v in losses) / (len(losses) - 1)
        return mean, math.sqrt(var / len(losses))

    def _served_losses(self, current: bool = False) -> list[tuple[float, float]]:
        """(simulated time, validation loss) of every served round's reading, from the
        recorded rows, so a resumed run computes the same; with `current`, only the readings
        since the configuration served now took over. An adoption's reading (`is_adoption`)
        is left out: the trends price and time trials by the served model's rounds, as
        measured before that row was recorded."""
        rows = [
            r
            for r in self.recorder.rows
            if is_served(r) and not is_adoption(r) and r.get("val_loss") is not None
        ]
        if current:
            label, start = self.spec.label(), len(rows)
            while start > 0 and rows[start - 1].get("config") == label:
                start -= 1
            rows = rows[start:]
        return [(float(r["sim_time_s"]), float(r["val_loss"])) for r in rows]

    def served_loss_trend(self, last: int, current: bool = False) -> tuple[float, float]:
        """(How fast the served model's validation loss fell per simulated second over its
        `last` readings (with `current`, of the configuration served now only): the
        least-squares slope, 0 when it did not fall; that slope's standard error, 0 with fewer
        than 3 readings). From the recorded rows, so a resumed run computes the same."""
        return self._trend(self._served_losses(current)[-last:])

    @staticmethod
    def _trend(points: list[tuple[float, float]]) -> tuple[float, float]:
        """`served_loss_trend` of these (simulated time, loss) points."""
        if len(points) < 2:
            return 0.0, 0.0
        mt = sum(t for t, _ in points) / len(points)
        ml = sum(v for _, v in points) / len(points)
        var = sum((t - mt) ** 2 for t, _ in points)
        if var <= 0:
            return 0.0, 0.0
        slope = sum((t - mt) * (v - ml) for t, v in points) / var
        stderr = 0.0
        if len(points) > 2:
            residual = sum((v - ml - slope * (t - mt)) ** 2 for t, v in points)
            stderr = math.sqrt(residual / (len(points) - 2) / var)
        return max(0.0, -slope), stderr
