"""A training DataLoader that resumes mid-epoch exactly where a checkpoint left it.

Two pieces:

- :class:`EpochSeededSampler`: the shuffle order of epoch ``e`` is a pure function of
  ``(seed, e)``, and (optionally) every sample gets its own augmentation seed drawn from the same
  generator, so augmentation does not depend on global RNG state, worker count or which worker
  loads which sample.
- :class:`ResumableDataLoader`: a ``torch.utils.data.DataLoader`` with ``state_dict`` /
  ``load_state_dict``. Lightning (``FitLoop.on_save_checkpoint``) stores that state in every
  checkpoint and hands it back on resume (``CombinedLoader._load_state_dicts``) before the first
  ``iter()``; the loader then skips the index batches already consumed in the interrupted epoch
  *without loading their samples*.

Under DDP Lightning wraps the sampler in ``DistributedSamplerWrapper``, which shards the sampler's
(deterministic) order per rank; skipping happens after sharding, at the batch level, so it stays
exact on every rank.

The module depends on torch only, so data modules can use it without importing Lightning.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["EpochSeededSampler", "ResumableDataLoader", "SampleKey"]

# A dataset index plus the seed its random augmentation must use: ``(index, sample_seed)``.
SampleKey = tuple[int, int]

_SEED_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: decorrelates (seed, epoch) pairs


class EpochSeededSampler(Sampler):
    """Yields a permutation of ``range(num_samples)`` that depends only on ``(seed, epoch)``.

    Args:
        num_samples: dataset length.
        seed: base seed of the shuffle order (and of the per-sample augmentation seeds).
        shuffle: permute (True) or keep dataset order (False).
        sample_seeds: yield ``(index, sample_seed)`` pairs instead of bare indices; a dataset that
            accepts such keys seeds its augmentation with ``sample_seed`` (see
            ``wherewhat.data.digits.DigitsDataset``), which makes augmentation reproducible per
            epoch and independent of workers and global RNG state.

    ``set_epoch`` is called by Lightning at the start of every epoch.
    """

    def __init__(
        self, num_samples: int, seed: int = 0, shuffle: bool = True, sample_seeds: bool = False
    ):
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.sample_seeds = sample_seeds
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _generator(self) -> torch.Generator:
        mixed = (self.seed * _SEED_MIX + self.epoch) % (2**63)
        return torch.Generator().manual_seed(mixed)

    def __iter__(self) -> Iterator[int | SampleKey]:
        generator = self._generator()
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        if not self.sample_seeds:
            return iter(order)
        seeds = torch.randint(0, 2**62, (self.num_samples,), generator=generator).tolist()
        # The seed belongs to the (epoch, index) pair, not to the position in the order.
        return iter([(index, seeds[index]) for index in order])

    def __len__(self) -> int:
        return self.num_samples


class _SkipFirstBatches:
    """Index-batch sampler that drops the first ``skip`` batches of its first pass only.

    Lazy on purpose: the skip is decided at the first ``next()``, after Lightning has called
    ``set_epoch``; if the epoch then differs from the one the checkpoint was taken in (the saved
    epoch had in fact finished), nothing is skipped.
    """

    def __init__(
        self, batch_sampler: Any, skip: int, epoch: int | None, loader: ResumableDataLoader
    ):
        self.batch_sampler = batch_sampler
        self.skip = skip
        self.epoch = epoch
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        skip, self.skip = self.skip, 0  # one shot: persistent workers re-iterate this object
        if (
            skip
            and self.epoch is not None
            and self.loader.sampler_epoch() not in (None, self.epoch)
        ):
            skip = 0
            self.loader._batches_yielded = 0
        iterator = iter(self.batch_sampler)
        for _ in range(skip):
            next(iterator, None)  # indices only: the skipped samples are never loaded
        yield from iterator

    def __len__(self) -> int:
        return len(self.batch_sampler)


class ResumableDataLoader(DataLoader):
    """``DataLoader`` whose position inside an epoch is saved in (and restored from) checkpoints.

    Args:
        dataset: a map-style dataset (indexable, with ``len``).
        batch_size, shuffle: as for ``DataLoader``; when no ``sampler`` is given the order comes
            from an :class:`EpochSeededSampler` with ``seed`` and ``sample_seeds``.
        sampler: an explicit sampler (Lightning passes its distributed wrapper here under DDP).
        seed: seed of the shuffle order and of the loader's own ``generator`` (so creating an
            iterator never draws from the global torch RNG, which the resume test relies on).
        sample_seeds: let the sampler yield ``(index, sample_seed)`` keys (see above).
        **kwargs: any other ``DataLoader`` argument (``num_workers``, ``collate_fn``, ...).

    State: ``{"epoch": e, "batches_yielded": k}`` - the loader had handed out ``k`` batches of
    epoch ``e`` when the checkpoint was taken. Only sized, map-style datasets are supported.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Sampler | None = None,
        *,
        seed: int = 0,
        sample_seeds: bool = False,
        **kwargs: Any,
    ):
        if not isinstance(dataset, Sized):
            raise TypeError("ResumableDataLoader needs a map-style dataset with __len__")
        if sampler is None and kwargs.get("batch_sampler") is None:
            sampler = EpochSeededSampler(
                len(dataset), seed=seed, shuffle=bool(shuffle), sample_seeds=sample_seeds
            )
        kwargs.setdefault("generator", torch.Generator().manual_seed(int(seed)))
        self.seed = seed
        self.sample_seeds = sample_seeds
        self._batches_yielded = 0
        self._epoch_of_pass: int | None = None
        self._pending_skip = 0
        self._pending_epoch: int | None = None
        self._skip_for_new_iterator: _SkipFirstBatches | None = None
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)

    # -- the epoch as set by Lightning through ``set_epoch`` ------------------------------------
    def _epoch_aware_samplers(self) -> list[Any]:
        found: dict[int, Any] = {}
        for candidate in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if candidate is not None and callable(getattr(candidate, "set_epoch", None)):
                found[id(candidate)] = candidate
        return list(found.values())

    def sampler_epoch(self) -> int | None:
        """The epoch the sampler was last set to (``None`` if it does not track epochs)."""
        for sampler in self._epoch_aware_samplers():
            epoch = getattr(sampler, "epoch", None)
            if epoch is not None:
                return int(epoch)
        return None

    # -- checkpoint state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        epoch = self._epoch_of_pass if self._epoch_of_pass is not None else self.sampler_epoch()
        return {"epoch": -1 if epoch is None else epoch, "batches_yielded": self._batches_yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        batches = int(state.get("batches_yielded", 0))
        epoch = int(state.get("epoch", -1))
        if not 0 <= batches:
            raise ValueError(f"batches_yielded must be >= 0, got {batches}")
        # A finished epoch (all batches handed out) leaves nothing to skip.
        self._pending_skip = batches if batches < len(self) else 0
        self._pending_epoch = None if epoch < 0 else epoch
        if self._pending_epoch is not None:
            # Workers prefetch indices as soon as the iterator exists, before Lightning's
            # set_epoch: put the sampler in the saved epoch now.
            for sampler in self._epoch_aware_samplers():
                sampler.set_epoch(self._pending_epoch)

    # -- iteration -----------------------------------------------------------------------------
    @property
    def _index_sampler(self) -> Any:
        # Read by DataLoader iterators when they are created; __iter__ sets the one-shot skip.
        base = super()._index_sampler
        skipper = self._skip_for_new_iterator
        if skipper is None:
            return base
        skipper.batch_sampler = base
        return skipper

    def __iter__(self) -> Iterator[Any]:
        skip, self._pending_skip = self._pending_skip, 0
        # Set before the iterator exists: worker prefetch may already run the skip below.
        self._batches_yielded = skip
        self._epoch_of_pass = None
        if skip:
            self._skip_for_new_iterator = _SkipFirstBatches(None, skip, self._pending_epoch, self)
        try:
            iterator = super().__iter__()
        finally:
            self._skip_for_new_iterator = None
        return self._count(iterator)

    def _count(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            if self._epoch_of_pass is None:
                self._epoch_of_pass = self.sampler_epoch()
            self._batches_yielded += 1
            yield batch
