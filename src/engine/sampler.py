"""Data order as a pure function of (seed, epoch, micro-batch index).

The batch a process sees at micro-batch `b` depends only on the seed, `b`, its rank and the world size,
so a resumed run only needs the step it stopped at to continue on exactly the next batch: no iterator
state to save, no batches re-read to skip (diffusers' text-to-image script re-reads
them). Every epoch is a fresh permutation of the whole dataset; the tail that does not fill a global
batch is left out of that epoch only (a different tail each epoch).
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list]):
    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0):
        global_batch = batch_size * world_size
        if num_items < global_batch:
            raise ValueError(f"the dataset has {num_items} items, fewer than one global batch "
                             f"({batch_size} per process x {world_size} processes)")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self.batches_per_epoch = num_items // global_batch
        self._epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.num_items, generator=generator)
        return self._perm

    def batch(self, index: int) -> list[int]:
        """The indices this process reads at micro-batch `index`."""
        epoch, within = divmod(index, self.batches_per_epoch)
        start = (within * self.world_size + self.rank) * self.batch_size
        return self._permutation(epoch)[start:start + self.batch_size].tolist()

    def __iter__(self):
        index = self.start_batch
        while True:  # endless: the engine counts steps, not epochs
            yield self.batch(index)
            index += 1

    def __len__(self) -> int:
        return self.batches_per_epoch
