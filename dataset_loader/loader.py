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
from torch.utils.data import DataLoader, Dataset, Sampler


def _seed_from(*values: int) -> int:
    """A 63-bit seed mixing `values` (so (seed, epoch) = (1, 0) and (0, 1) differ)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class VideoSampler(Sampler):
    """The videos of each epoch, a pure function of (seed, epoch), sharded over processes.

    With `parts` = P, an epoch reads one P-th of the videos: a permutation is drawn once per cycle of
    P epochs (from seed and cycle) and epoch e reads its (e mod P)-th part, so every video is read
    once every P epochs. Training uses P = repeated sampling R: each video read gives R pairs, so an
    epoch holds as many pairs as there are videos (MAE-ST's "effective" epochs). Parts have
    num_items // P videos; the fewer than P left over sit out that cycle (other ones next cycle).
    With `world` processes each takes every world-th video of the epoch, from `rank`
    (`drop_last`: the epoch is cut to a multiple of world; else padded by wrapping around).
    Yields (index, epoch) for datasets that take the epoch with the index (`with_epoch`), so item
    randomness follows the epoch even in persistent workers; plain indices otherwise.
    """

    def __init__(self, num_items: int, seed: int = 0, shuffle: bool = True, parts: int = 1, rank: int = 0,
                 world: int = 1, drop_last: bool = True, with_epoch: bool = True) -> None:
        if parts < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"need parts >= 1 and 0 <= rank < world, got parts={parts}, rank={rank}, world={world}")
        self.num_items, self.seed, self.shuffle, self.parts = num_items, seed, shuffle, parts
        self.rank, self.world, self.drop_last, self.with_epoch = rank, world, drop_last, with_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self, epoch: int) -> list[int]:
        """This process's videos of `epoch`, in order."""
        cycle, part = divmod(epoch, self.parts)
        if self.shuffle:
            generator = torch.Generator().manual_seed(_seed_from(self.seed, cycle))
            order = torch.randperm(self.num_items, generator=generator).tolist()
        else:
            order = list(range(self.num_items))
        size = self.num_items // self.parts
        chosen = order[part * size:(part + 1) * size]
        if self.drop_last:
            chosen = chosen[: len(chosen) // self.world * self.world]
        elif chosen and len(chosen) % self.world:
            chosen += chosen[: self.world - len(chosen) % self.world]
        return chosen[self.rank::self.world]

    def __iter__(self) -> Iterator:
        epoch = self.epoch
        if self.with_epoch:
            return ((index, epoch) for index in self.indices(epoch))
        return iter(self.indices(epoch))

    def __len__(self) -> int:
        return len(self.indices(0))


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
    parts: int = 1,
) -> DataLoader:
    """A DataLoader of flattened pair batches (B*R, 3, H, W); call `set_loader_epoch` before each epoch.

    Args:
        dataset: a `KineticsFramePairs`, or any dataset of (f1, f2) items (a `Subset`, say); one whose
            `epoch_in_index` is True receives (index, epoch) pairs as indices, which keeps its randomness
            following the epoch in persistent workers.
        batch_size: videos per batch (each gives R pairs with repeated sampling R).
        num_workers: loader processes (0 = load in this process).
        seed: seed of the order of videos (the dataset's own seed fixes the pairs drawn from them).
        distributed: shard the videos over the processes (None: when torch.distributed is initialised).
        pin_memory: page-locked batches for fast copies to the GPU (None: when CUDA is available).
        persistent_workers: keep workers between epochs (None: when num_workers > 0).
        parts: an epoch reads 1/parts of the videos (see `VideoSampler`; training: repeated sampling R).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    initialised = dist.is_available() and dist.is_initialized()
    if distributed is None:
        distributed = initialised
    if distributed and not initialised:
        raise ValueError("distributed=True needs torch.distributed initialised first (init_process_group)")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    # datasets that take (index, epoch) get the epoch with each index; others get plain indices
    sampler = VideoSampler(len(dataset), seed=seed, shuffle=shuffle, parts=parts, rank=rank, world=world,
                           drop_last=drop_last, with_epoch=getattr(dataset, "epoch_in_index", False))
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = num_workers > 0
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
