"""Client-level differential privacy: clipping and noising updates, and the privacy accountant."""
