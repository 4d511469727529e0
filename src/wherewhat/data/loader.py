"""A training DataLoader that resumes mid-epoch exactly where a checkpoint left it.

Two pieces:

- :class:`EpochSeededSampler`: the shuffle order of epoch ``e`` is a pure function of
  ``(seed, e)``, and (optionally) every sample gets its own augmentation seed drawn from the same
  generator, so augmentation does not depend on global RNG state, worker count or which worker
  loads which sample.
- :class:`ResumableDataLoader`: a ``torch.utils.data.DataLoader`` with ``state_dict`` /
  ``load_state_dict``. Lightning (``FitLoop.on_save_checkpoint``) stores that state in every
  checkpoint and hands it back on resume (``CombinedLoader._load_state_dicts``); the loader then
  skips the index batches already consumed in the interrupted epoch *without loading their
  samples*, and counts its position from the start of the epoch, so the checkpoints of a resumed
  run hold the same position as those of an uninterrupted one. Lightning hands the state over
  only if it builds the loader after restoring the checkpoint; when it built it earlier (a
  ``configure_optimizers`` that reads ``trainer.estimated_stepping_batches``), the harness's
  ``wherewhat.training.callbacks.resume_train_loader`` does it, calls :meth:`align_epoch` and
  creates the iterator again.

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
    """The loader's index-batch sampler: the wrapped batch sampler, minus the first batches of a
    resumed pass.

    One object per loader, for its whole life: a persistent-worker iterator keeps the index sampler
    it was created with and calls ``iter()`` on it again for every pass, so the skip of a later
    resume must reach it through this object. At the start of each pass it asks the loader how
    many batches to drop (``ResumableDataLoader._skip_for_pass``); the decision is taken at the
    first ``next()``, after Lightning's ``set_epoch`` for a single-process loader: if the sampler
    is then in another epoch than the one the checkpoint was taken in (that epoch had in fact
    ended), nothing is skipped.
    """

    def __init__(self, loader: ResumableDataLoader):
        self.loader = loader
        self.batch_sampler: Any = None

    def __iter__(self) -> Iterator[Any]:
        skip = self.loader._skip_for_pass()
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

    State: ``{"epoch": e, "batches_yielded": k}``: the loader had handed out ``k`` batches of
    epoch ``e`` when the checkpoint was taken, counted from the start of the epoch (a pass resumed
    after ``k0`` batches counts on from ``k0``). Only sized, map-style datasets are supported.

    The resume is armed by :meth:`load_state_dict` and holds until the resumed pass hands out its
    first batch: ``iter()`` may be called again before that (Lightning does when it loaded the
    loader before restoring the checkpoint; :meth:`align_epoch` then says which epoch the trainer
    continues with) and every such pass skips the same batches.
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
        # (epoch, batches to skip) of a loaded checkpoint, until the resumed pass yields a batch.
        self._resume: tuple[int | None, int] | None = None
        self._armed: tuple[int | None, int] | None = None  # what the current pass will skip
        self._skipper = _SkipFirstBatches(self)
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

    def _set_sampler_epoch(self, epoch: int) -> None:
        for sampler in self._epoch_aware_samplers():
            sampler.set_epoch(epoch)

    # -- checkpoint state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        if self._resume is not None:  # resumed but no batch handed out yet: the loaded state
            epoch, batches = self._resume
        else:
            epoch = self._epoch_of_pass if self._epoch_of_pass is not None else self.sampler_epoch()
            batches = self._batches_yielded
        return {"epoch": -1 if epoch is None else epoch, "batches_yielded": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        batches = int(state.get("batches_yielded", 0))
        epoch = int(state.get("epoch", -1))
        if not 0 <= batches:
            raise ValueError(f"batches_yielded must be >= 0, got {batches}")
        saved_epoch = None if epoch < 0 else epoch
        if batches < len(self):
            self._resume = (saved_epoch, batches)
            if saved_epoch is not None:
                # Workers prefetch indices as soon as the iterator exists, before Lightning's
                # set_epoch: put the sampler in the saved epoch now.
                self._set_sampler_epoch(saved_epoch)
        else:
            # That epoch was finished: nothing to skip, and the next pass is the next epoch.
            self._resume = None
            if saved_epoch is not None:
                self._set_sampler_epoch(saved_epoch + 1)

    def align_epoch(self, epoch: int) -> bool:
        """Put the loader in ``epoch``, the epoch the trainer continues with after a resume.

        A loaded position in another epoch (an epoch the trainer counts as finished, e.g. with
        ``limit_train_batches``) is dropped. Returns whether anything changed, i.e. whether an
        iterator created before this call must be created again.
        """
        changed = False
        if self._resume is not None and self._resume[0] not in (None, epoch):
            self._resume = None
            changed = True
        if self.sampler_epoch() not in (None, epoch):
            self._set_sampler_epoch(epoch)
            changed = True
        return changed

    # -- iteration -----------------------------------------------------------------------------
    @property
    def _index_sampler(self) -> Any:
        # Read by DataLoader iterators when they are created (and by len()): always the skipper.
        self._skipper.batch_sampler = super()._index_sampler
        return self._skipper

    def _skip_for_pass(self) -> int:
        """How many batches the pass that is starting drops (called once per pass)."""
        armed, self._armed = self._armed, None
        if armed is None:
            return 0
        epoch, skip = armed
        if epoch is not None and self.sampler_epoch() not in (None, epoch):
            # The saved epoch had ended and the trainer has moved on: a full pass.
            self._resume = None
            self._batches_yielded = 0
            return 0
        return skip

    def __iter__(self) -> Iterator[Any]:
        self._armed = self._resume
        # Set before the iterator exists: worker prefetch may already run the skip.
        self._batches_yielded = 0 if self._resume is None else self._resume[1]
        self._epoch_of_pass = None
        return self._count(super().__iter__())

    def _count(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            if self._epoch_of_pass is None:
                self._epoch_of_pass = self.sampler_epoch()
                self._resume = None  # the resumed pass is under way: the position is live now
            self._batches_yielded += 1
            yield batch
