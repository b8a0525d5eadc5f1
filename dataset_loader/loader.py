"""The data loader of frame pairs: workers, pinned memory, distributed sampling, reproducible epochs.

    loader = make_pair_loader(dataset, batch_size=64, num_workers=8, seed=0)
    for epoch in range(start_epoch, epochs):
        set_loader_epoch(loader, epoch)
        for f1, f2 in loader:          # (B*R, 3, H, W) each: repeated samples are flattened into the batch
            ...

The sampler hands each index to the workers together with its epoch, so item randomness follows the
epoch even in persistent workers, and the batches of an epoch depend only on (seed, epoch): a run
resumed at an epoch boundary with the same seed sees exactly the same batches.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


def _seed_from(*values: int) -> int:
    """A 63-bit seed mixing `values` (so (seed, epoch) = (1, 0) and (0, 1) differ)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class SeededSampler(Sampler[int]):
    """All indices once per epoch, in an order that is a pure function of (seed, epoch)."""

    def __init__(self, num_items: int, seed: int = 0, shuffle: bool = True) -> None:
        self.num_items, self.seed, self.shuffle = num_items, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_items))
        generator = torch.Generator().manual_seed(_seed_from(self.seed, self.epoch))
        return iter(torch.randperm(self.num_items, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_items


class EpochSampler(Sampler[tuple[int, int]]):
    """Wraps an index sampler to yield `(index, epoch)`, for datasets with `epoch_in_index = True`."""

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((index, epoch) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def collate_pairs(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Items (f1, f2) of (3, H, W) or (R, 3, H, W) -> two (B*R, 3, H, W) tensors."""
    f1 = torch.stack([b[0] for b in batch])
    f2 = torch.stack([b[1] for b in batch])
    return f1.flatten(0, f1.dim() - 4), f2.flatten(0, f2.dim() - 4)


def seed_worker(worker_id: int) -> None:
    """Seeds Python's and NumPy's global generators in a worker from its torch seed (base seed + worker id).

    Workers also ignore SIGINT and SIGTERM: a Ctrl-C or a scheduler's SIGTERM reaches the whole process
    group, and the training process stops them itself after finishing its step.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_pair_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    distributed: bool | None = None,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
) -> DataLoader:
    """A DataLoader of flattened pair batches (B*R, 3, H, W); call `set_loader_epoch` before each epoch.

    Args:
        dataset: a `KineticsFramePairs`, or any dataset of (f1, f2) items (a `Subset`, say); one whose
            `epoch_in_index` is True receives (index, epoch) pairs as indices, which keeps its randomness
            following the epoch in persistent workers.
        batch_size: videos per batch (each gives R pairs with repeated sampling R).
        num_workers: loader processes (0 = load in this process).
        seed: seed of the order of videos (the dataset's own seed fixes the pairs drawn from them).
        distributed: shard with `DistributedSampler` (None: when torch.distributed is initialised).
        pin_memory: page-locked batches for fast copies to the GPU (None: when CUDA is available).
        persistent_workers: keep workers between epochs (None: when num_workers > 0).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    initialised = dist.is_available() and dist.is_initialized()
    if distributed is None:
        distributed = initialised
    if distributed:
        if not initialised:
            raise ValueError("distributed=True needs torch.distributed initialised first (init_process_group)")
        base: Sampler[int] = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    else:
        base = SeededSampler(len(dataset), seed=seed, shuffle=shuffle)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    # datasets that take (index, epoch) get the epoch with each index; others get plain indices
    sampler = EpochSampler(base) if getattr(dataset, "epoch_in_index", False) else base
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_pairs,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=persistent_workers and num_workers > 0,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(_seed_from(seed)),
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of the loader's sampler (order, sharding) and of its items' randomness."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
