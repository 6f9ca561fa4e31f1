"""A deterministic, resumable, rank-sharded sampler.

The order of epoch e is a permutation drawn from (seed, e) alone, so a resumed
run sees exactly the batches the uninterrupted run would have seen. Each item is
yielded as (epoch, index): the dataset seeds its augmentation from it, which keeps
random crops identical across resumes and worker counts, even with persistent
workers.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    def __init__(self, n_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        # batch_size is per rank; a global batch of batch_size*world_size is dropped-last
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_step = 0, 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def steps_per_epoch(self) -> int:
        return self.n_items // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Start epoch `epoch` after `start_step` optimizer steps already done in it."""
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch() - self.start_step) * self.batch_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n_items, generator=generator)
        for step in range(self.start_step, self.steps_per_epoch()):
            global_batch = order[step * self.global_batch:(step + 1) * self.global_batch]
            for index in global_batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size].tolist():
                yield (self.epoch, index)
