"""The reference's localizer jitter: a walk reset every epoch, nominal positions to the localizer."""

from __future__ import annotations

import pytest
import torch

from wherewhat.methods.worldcomp2d.model import WorldComp2D
from wherewhat.methods.worldcomp2d.parts import FixationWalk, grid_fixations, walk_offsets
from wherewhat.methods.worldcomp2d.task import WorldComp2DTask


def test_walk_stays_within_its_stated_bound_and_moves_like_a_walk():
    grid = grid_fixations(256, 3)
    walk = FixationWalk(grid, max_step=5)
    generator = torch.Generator().manual_seed(0)
    steps = 22
    previous = grid.clone()
    for _ in range(steps):
        walked = walk.step(4, generator)  # (4 slots, F, 2)
        assert walked.shape == (4, *grid.shape)
        assert ((walked - previous).abs() <= 5).all()  # one step at most
        assert torch.equal(walk.offset, walk.offset.round())  # whole pixels
        previous = walked
    assert ((walked - grid).abs() <= walk.bound(steps)).all()
    assert walk.bound(steps) == steps * 5
    # A walk, not i.i.d.: its excursion grows beyond one step's range on average.
    many = FixationWalk(grid_fixations(256, 30), max_step=5)
    for _ in range(steps):
        out = many.step(2, generator)
    assert not torch.equal(out[0], out[1])  # each batch slot walks on its own, as the reference
    rms = (out - many.nominal).pow(2).mean().sqrt()
    assert 10 < rms < 20  # sqrt(22 * 10) = 14.8


def test_walk_resets_each_epoch_in_the_task():
    task = WorldComp2DTask(WorldComp2D(crop_size=64, refiner=False), stage="localizer")
    task.on_train_epoch_start()
    for _ in range(5):
        seen, told = task._jittered_fixations(3)
    assert not torch.equal(seen[0], task.model.fixations)
    task.on_train_epoch_start()  # next epoch
    assert torch.equal(task.walk.offset, torch.zeros_like(task.walk.offset))
    assert task.walk.steps == 0
    seen, _ = task._jittered_fixations(3)
    assert ((seen - task.model.fixations).abs() <= 5).all()


def test_nominal_positions_reach_the_localizer():
    torch.manual_seed(0)
    task = WorldComp2DTask(WorldComp2D(crop_size=64, refiner=False), stage="localizer")
    task.on_train_epoch_start()
    told_seen = []
    original = task.model.localizer.forward_normalized

    def spy(codes, fixations):
        told_seen.append(fixations.clone())
        return original(codes, fixations)

    task.model.localizer.forward_normalized = spy
    image = torch.rand(4, 3, 64, 64)
    points = torch.rand(4, 68, 2) * 64
    cut_at = []
    observe_original = task.model.observe

    def observe(img, centres):
        cut_at.append(centres.clone())
        return observe_original(img, centres)

    task.model.observe = observe
    batch = {"image": image, "points": points}
    for _ in range(3):
        task.training_step(batch, 0)
    nominal = task.model.fixations.expand(4, -1, -1)
    assert all(torch.equal(t, nominal) for t in told_seen)
    assert not all(torch.equal(c, nominal) for c in cut_at)  # views cut at the walked grid


def test_iid_mode_tells_the_localizer_the_jittered_positions():
    task = WorldComp2DTask(
        WorldComp2D(crop_size=64, refiner=False), stage="localizer", jitter_mode="iid"
    )
    seen, told = task._jittered_fixations(6)
    assert torch.equal(seen, told)
    assert ((seen - task.model.fixations).abs() <= 5).all()
    with pytest.raises(Exception, match="jitter_mode"):
        WorldComp2DTask(WorldComp2D(crop_size=64, refiner=False), jitter_mode="bad")


def test_walk_offsets_follow_the_walks_marginal():
    """A bank's offsets: the walk at a uniformly random step of an epoch (hand-computed moments:
    one step has variance ((2 * 5 + 1) ** 2 - 1) / 12 = 10 px^2, the mean step count of an
    epoch of 20 steps is 10.5, so the mean square offset is 105 px^2)."""
    generator = torch.Generator().manual_seed(0)
    offsets = walk_offsets((4000, 9), max_step=5, steps_per_epoch=20, generator=generator)
    assert offsets.shape == (4000, 9, 2)
    assert torch.equal(offsets, offsets.round())
    assert (offsets.abs() <= 20 * 5).all()
    assert 95 < float(offsets.pow(2).mean()) < 115
    assert abs(float(offsets.mean())) < 0.5
