"""What the server can tell of a client's round time before it trains (`ClientPacing`).

The robust trials pace and price candidates by these estimates: `trial_pace = "keep"` caps a
candidate's local steps at keep's round time, and a background trial charges a candidate for
its extra seconds per round (`steady_round_s`). They come from the FLOP counter, the device
profiles and the links, with each client's data size and device from its last reply and its
cache fills from the boundaries it trained before: an estimate, never charged to the clock.
"""

from __future__ import annotations

import math
from typing import Any

from autofednlp.client.worker import boundaries_filled
from autofednlp.cost.clock import client_cost
from autofednlp.cost.devices import client_device, get_profile
from autofednlp.cost.flops import fill_cache_flops, train_step_flops
from autofednlp.model.build import state_bytes
from autofednlp.model.kinds import TuneSpec
from autofednlp.report.results import is_adoption
from autofednlp.server.autofed import Group


class ClientPacing:
    """Round-time estimates per client and configuration; a mixin for a run (`AutoFedRun`)
    that has `cfg`, `shape`, `client_info`, `model_for`, `receive_groups` and `recorder`."""

    _cached: dict[int, set[int]]  # client -> boundaries its activation cache holds

    def receive_groups(self, server_round: int, groups: list, sent: Any, step: bool = True) -> list:
        """As the base class; also notes which boundaries each client's cache now holds."""
        results = super().receive_groups(server_round, groups, sent, step)
        for (spec, _, _), res in zip(groups, results):
            layers = self.model_for(spec).num_layers
            held = boundaries_filled(self.cfg, layers, spec.boundary(layers))
            for c in set(res.clients) - set(res.failed):
                self._cached.setdefault(c, set()).update(held)
        return results

    def last_served(self) -> tuple[list[int], float] | None:
        """The last served round's clients and its round time (None before one): what the
        estimates of the rounds to come start from. A decision's `adopted` row trained
        nothing: not a round."""
        rows = reversed(self.recorder.rows)
        row = next((r for r in rows if r.get("served") and not is_adoption(r)), None)
        if row is None:
            return None
        return [int(c) for c in str(row["clients"]).split()], float(row["round_time_s"])

    def cache_holds(self, client: int, spec: TuneSpec) -> bool:
        """Whether `client`'s activation cache holds `spec`'s boundary, as far as the server
        can tell from the rounds it trained."""
        layers = self.model_for(spec).num_layers
        return spec.boundary(layers) in self._cached.get(client, ())

    def _step_seconds(self, client: int, spec: TuneSpec, state: dict) -> tuple:
        """What the server can tell of `client` training `spec`: (samples, local steps of its
        full epochs, seconds per step, seconds of cache fill per first-epoch step, seconds of
        transfer). Data size and device from its last reply (unknown: the largest size seen,
        the configured device); cache fills from the boundaries it trained before; the FLOP
        counter; the links. An estimate for pacing trials, never charged."""
        sizes = [n for n, _ in self.client_info.values()]
        n, device = self.client_info.get(client, (max(sizes, default=1), ""))
        c = self.cfg
        batch, seq, cache = c.client.batch_size, c.data.max_length, c.client.activation_cache
        profile = get_profile(device or client_device(c, client))
        step_s = profile.compute_s(train_step_flops(self.shape, spec, batch, seq, cached=cache))
        fill_s = 0.0
        if cache and not self.cache_holds(client, spec):
            fill_s = profile.compute_s(fill_cache_flops(self.shape, spec, batch, seq))
        size = state_bytes(state)
        transfer_s = client_cost(c.cost, 0.0, size, size).total_s
        return n, c.client.local_epochs * math.ceil(n / batch), step_s, fill_s, transfer_s

    def _round_seconds(self, client: int, spec: TuneSpec, state: dict) -> tuple:
        """(full local steps, seconds after k steps as a function of k) for `client` on
        `spec`: the estimate is gathered once, then priced per step count."""
        n, full, step_s, fill_s, transfer_s = self._step_seconds(client, spec, state)
        first_epoch = math.ceil(n / self.cfg.client.batch_size)
        return full, lambda k: transfer_s + k * step_s + min(k, first_epoch) * fill_s

    def client_seconds(self, client: int, spec: TuneSpec, state: dict) -> float:
        """The simulated seconds `client` would take for a full round of `spec`, as the
        server can tell (`_step_seconds`)."""
        full, seconds = self._round_seconds(client, spec, state)
        return seconds(full)

    def steps_within(self, client: int, spec: TuneSpec, state: dict, budget_s: float) -> int:
        """The most local steps of `spec` that `client` can take within `budget_s` (at
        least 1); 0 when its full epochs fit."""
        full, seconds = self._round_seconds(client, spec, state)
        if seconds(full) <= budget_s:
            return 0
        k = max((k for k in range(1, full) if seconds(k) <= budget_s), default=1)
        return 0 if k >= full else k

    def steady_round_s(self, clients: list[int], g: Group) -> float:
        """The server's estimate of a round of `g`'s configuration on `clients` once their
        caches are filled (a fill is paid once): its slowest client's seconds."""

        def steady(c: int) -> float:
            _, full, step_s, _, transfer_s = self._step_seconds(c, g.spec, g.state)
            return transfer_s + full * step_s

        return max(steady(c) for c in clients)
