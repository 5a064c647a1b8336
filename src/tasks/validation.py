"""What every stage's `validate()` shares: the first N items of the val split in training-sized batches,
collated and moved to the task's device, and means weighted as each stage defines them (per frame, per
item or per batch). The engine runs `validate()` under a forked RNG, in eval mode (src/engine/loop.py)."""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch


def val_batches(dataset, count: Optional[int], batch_size: int, collate: Callable, device) -> Iterator[dict]:
    """Batches of the first `count` items (0 or None: all) of `dataset`, collated, tensors on `device`."""
    total = min(count or len(dataset), len(dataset))
    step = max(1, batch_size)
    for start in range(0, total, step):
        batch = collate([dataset[i] for i in range(start, min(start + step, total))])
        yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class Means:
    """Weighted means by name: add(name, value, weight) ... means() -> {name: sum(value * weight) / sum(weight)}."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, name: str, value, weight: float = 1.0) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value) * weight
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def means(self) -> dict[str, float]:
        return {name: total / max(self.weights[name], 1e-12) for name, total in self.sums.items()}
