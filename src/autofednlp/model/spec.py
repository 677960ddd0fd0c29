"""What a client trains, as one plain description that the model and the cost model share.

Torch-free on purpose: the FLOP counter (`cost/flops.py`) and light commands read it without
loading torch. The tune kinds that act on it live in `model/kinds.py`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TuneSpec:
    """What a client trains: `kind` in the top `depth` layers, bottleneck/rank `width`."""

    kind: str
    depth: int
    width: int = 0

    def boundary(self, num_layers: int) -> int:
        """Index of the lowest trained layer: everything below it is frozen (and cacheable)."""
        if self.kind == "full":
            return 0
        return num_layers - min(self.depth, num_layers)

    def label(self) -> str:
        if self.kind == "full":
            return "full"
        if self.kind == "freeze":
            return f"freeze(d={self.depth})"
        return f"{self.kind}(d={self.depth},w={self.width})"

    def trained_layers(self, num_layers: int) -> int:
        """Layers that run backward: all for full fine-tuning, else the top `depth`."""
        return num_layers - self.boundary(num_layers)

    @property
    def trains_layer_weights(self) -> bool:
        """Whether the transformer weights of trained layers get gradients (not just adapters)."""
        return self.kind in ("full", "freeze")

    def added_weights_per_layer(self, hidden: int, lora_modules: int = 2) -> int:
        """Weights the kind adds to each trained layer of width `hidden`: a bottleneck adapter's
        down (H x w) and up (w x H) projections, or LoRA's A (H x r) and B (r x H) on each of
        the `lora_modules` projections it adapts (BERT: query and value)."""
        if self.kind == "bottleneck":
            return 2 * hidden * self.width
        if self.kind == "lora":
            return lora_modules * 2 * hidden * self.width
        return 0
