"""WorldComp2D model pieces: views, PWConLoss and its positives, localizer, refiner, export."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wherewhat.bench import count_macs, count_parameters, export_onnx
from wherewhat.data.face_crops import face_crop_affine, uncrop_points, warp_to_crop
from wherewhat.geometry import apply_affine, normalized_to_pixel
from wherewhat.methods.worldcomp2d import parts as worldcomp2d_parts
from wherewhat.methods.worldcomp2d.model import (
    FixationLocalizer,
    LandmarkRefiner,
    ProximityEncoder,
    PWConLoss,
    WorldComp2D,
    extract_views,
    grid_fixations,
    heatmap_loss,
    heatmap_peak_offsets,
    heatmap_targets,
    jitter_fixations,
    mean_shape_from_points,
    proximity_weights,
    sample_contrastive_views,
)

# ---------------------------------------------------------------------------------------------
# Views


def _marked_image(points_ij: list[tuple[int, int]], size: int = 256, batch: int = 1):
    """Zero images with value 1 at pixel (row i, col j) of each listed point."""
    image = torch.zeros(batch, 1, size, size)
    for i, j in points_ij:
        image[:, :, i, j] = 1.0
    return image


def test_views_are_centred_where_asked():
    rows_cols = [(40, 200), (128, 64)]
    image = _marked_image(rows_cols)
    # Centre each view on the marked pixel's centre, and a third one shifted by (+3, -2) px.
    centres = torch.tensor([[[200.5, 40.5], [64.5, 128.5], [64.5 + 3, 128.5 - 2]]])
    views = extract_views(image, centres, (27, 109), 27)
    assert views.shape == (1, 3, 2, 27, 27)
    for n in range(2):
        native, context = views[0, n, 0], views[0, n, 1]
        expected = torch.zeros(27, 27)
        expected[13, 13] = 1.0
        torch.testing.assert_close(native, expected)  # an exact pixel copy
        # The context view's centre sample sits exactly on the centre point.
        assert context[13, 13] == 1.0 and context.sum() == 1.0
    shifted = views[0, 2, 0]
    assert shifted[13 + 2, 13 - 3] == 1.0 and shifted.sum() == 1.0


def test_context_view_is_a_resize_without_antialias():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 256, 256, generator=generator)
    pixels = torch.tensor([[[60, 70], [150, 200]], [[100, 100], [54, 201]]])  # (col, row)
    views = extract_views(image, pixels.float() + 0.5, (27, 109), 27)
    for b in range(2):
        for n in range(2):
            col, row = pixels[b, n].tolist()
            native = image[b, :, row - 13 : row + 14, col - 13 : col + 14]
            big = image[b : b + 1, :, row - 54 : row + 55, col - 54 : col + 55]
            resized = F.interpolate(
                big, size=(27, 27), mode="bilinear", align_corners=False, antialias=False
            )[0]
            torch.testing.assert_close(views[b, n, :3], native)
            torch.testing.assert_close(views[b, n, 3:], resized, atol=5e-5, rtol=0)


def test_views_use_one_grid_sample_call(monkeypatch):
    calls = []
    original = F.grid_sample

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(worldcomp2d_parts.F, "grid_sample", counting)
    extract_views(torch.rand(4, 3, 64, 64), torch.rand(4, 9, 2) * 64, (27, 109), 27)
    assert len(calls) == 1


def test_fixation_grid_and_bounded_jitter():
    grid = grid_fixations(256, 3)
    assert grid.shape == (9, 2)
    assert sorted(set(grid[:, 0].tolist())) == [64.5, 128.5, 192.5]
    torch.testing.assert_close(grid[1], torch.tensor([128.5, 64.5]))  # row-major: x varies
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):  # never accumulates: always measured from the nominal grid
        jittered = jitter_fixations(grid, 8, max_shift=5, generator=generator)
        shift = jittered - grid
        assert jittered.shape == (8, 9, 2)
        assert shift.abs().max() <= 5 and torch.equal(shift, shift.round())
    assert (shift != 0).any()


# ---------------------------------------------------------------------------------------------
# PWConLoss and its positives


def test_pwcon_loss_equals_hand_computed_value():
    # Two images -> 4 views: anchors a0, a1 then random views r0, r1; 2-d unit codes.
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    weights = torch.tensor(
        [
            [0.0, 1.5, 2.0, 0.0],  # a0: positives a1 (1.5) and r0 (2.0)
            [0.0, 0.0, 1.2, 0.0],  # a1: positive r0 (1.2)
        ]
    )
    tau = 0.05
    # a0 against (a1, r0, r1): similarities (0, 0.6, -1) / tau = (0, 12, -20).
    lse0 = math.log(math.exp(0) + math.exp(12) + math.exp(-20))
    loss0 = -(1.5 * (0 - lse0) + 2.0 * (12 - lse0)) / 2
    # a1 against (a0, r0, r1): (0, 0.8, 0) / tau = (0, 16, 0).
    lse1 = math.log(math.exp(0) + math.exp(16) + math.exp(0))
    loss1 = -(1.2 * (16 - lse1)) / 1
    expected = (loss0 + loss1) / 2
    assert expected == pytest.approx(4.5000055, abs=1e-6)  # written out: the value itself
    actual = PWConLoss(tau)(codes, weights)
    assert actual.item() == pytest.approx(expected, rel=1e-5)


def test_pwcon_loss_averages_over_anchors_with_positives():
    codes = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    weights = torch.zeros(3, 6)
    weights[0, 4] = 2.0  # anchors 1 and 2 have no positive
    loss = PWConLoss()(codes, weights)
    # Same as anchor 0 alone (its row of logits does not depend on the other anchors).
    torch.testing.assert_close(loss, PWConLoss()(codes, weights[:1]))
    aligned = codes.clone()
    aligned[4] = aligned[0]  # moving the positive onto the anchor lowers the loss
    assert PWConLoss()(aligned, weights) < loss
    assert PWConLoss()(codes, torch.zeros(3, 6)).item() == 0.0


def test_positive_rule_is_a_53px_box_with_proximity_weights():
    landmarks = torch.zeros(1, 2, 2)
    landmarks[0, 1] = torch.tensor([100.0, 100.0])  # landmark 1 of the single image
    offsets = torch.tensor(
        [[0.0, 0.0], [53.0, 0.0], [53.5, 0.0], [40.0, 40.0], [53.0, -53.0], [0.0, 54.0]]
    )
    centres = landmarks[0, 1] + offsets  # views whose centres sit at these offsets
    view_points = landmarks.expand(len(centres), 2, 2)
    weights = proximity_weights(centres, view_points, torch.tensor([1]))[0]
    inside = torch.tensor([True, True, False, True, True, False])
    distance = offsets.norm(dim=-1)
    expected = torch.where(inside, 1 + torch.exp(-0.025 * distance), torch.zeros(6))
    torch.testing.assert_close(weights, expected)
    assert weights[0] == 2.0 and weights[3] == pytest.approx(1 + math.exp(-0.025 * 56.5685))


def test_sampled_views_follow_the_rule():
    generator = torch.Generator().manual_seed(3)
    batch, num = 16, 68
    points = torch.rand(batch, num, 2, generator=generator) * 300 - 22  # some outside 256
    views = sample_contrastive_views(points, (256, 256), generator)
    assert views.centres.shape == (batch, 2, 2) and views.weights.shape == (batch, 2 * batch)
    anchors, randoms = views.centres[:, 0], views.centres[:, 1]
    chosen = points[torch.arange(batch), views.landmark]
    assert ((chosen >= 0) & (chosen < 256)).all()  # anchors only on visible landmarks
    torch.testing.assert_close(anchors, chosen.floor() + 0.5)  # snapped to its pixel's centre
    assert (randoms - 0.5 == (randoms - 0.5).round()).all()
    assert ((randoms > 0) & (randoms < 256)).all()
    all_centres = torch.cat([anchors, randoms])
    for a in range(batch):
        for c in range(2 * batch):
            image = c % batch
            delta = points[image, views.landmark[a]] - all_centres[c]
            positive = bool((delta.abs() <= 53).all()) and c != a
            weight = 1 + math.exp(-0.025 * float(delta.norm())) if positive else 0.0
            assert views.weights[a, c].item() == pytest.approx(weight, abs=1e-6), (a, c)
    assert views.positive[:, batch:].diagonal().any()  # some random view near its anchor


def test_sampling_rejects_images_without_visible_landmarks():
    points = torch.full((2, 5, 2), 300.0)
    points[0, 0] = 10.0
    with pytest.raises(ValueError, match=r"images \[1\]"):
        sample_contrastive_views(points, (256, 256))


# ---------------------------------------------------------------------------------------------
# Encoder and localizer


def test_encoder_codes_are_unit_vectors_of_the_latent_size():
    encoder = ProximityEncoder().eval()
    codes = encoder(torch.randn(5, 6, 27, 27))
    assert codes.shape == (5, 256)
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(5))
    grey = ProximityEncoder(2, channels=(8, 16), strides=(2, 2), hidden=32, latent=16).eval()
    assert grey.project[0][0].in_features == 16 * 7 * 7  # 27 -> 14 -> 7
    torch.testing.assert_close(grey(torch.randn(3, 2, 27, 27)).norm(dim=1), torch.ones(3))


def _face_points(generator: torch.Generator) -> torch.Tensor:
    """A rough 68-point face around (210, 160) in a 400 x 300 photo."""
    angle = torch.linspace(0, 2 * math.pi, 69)[:-1]
    ring = torch.stack([torch.cos(angle) * 60, torch.sin(angle) * 75], dim=-1)
    return ring + torch.tensor([210.0, 160.0]) + torch.randn(68, 2, generator=generator)


def test_localizer_output_maps_back_to_original_pixels_through_the_crop_affine():
    generator = torch.Generator().manual_seed(0)
    original = _face_points(generator)
    affine = face_crop_affine(original, 256, angle_deg=7.0)  # rotated crop: a general affine
    in_crop = apply_affine(original.double(), affine).float()
    model = WorldComp2D(refiner=False).eval()
    model.localizer.set_mean_shape(in_crop[None])
    with torch.no_grad():
        model.localizer.output.weight.zero_()  # an untrained localizer predicts the prior
    photo = torch.rand(3, 300, 400, generator=generator)
    crop = warp_to_crop(photo, affine.double(), 256)[None]
    with torch.no_grad():
        predicted = model(crop)
    torch.testing.assert_close(predicted[0], in_crop, atol=1e-4, rtol=0)
    back = uncrop_points(predicted, affine[None])
    torch.testing.assert_close(back[0], original, atol=1e-3, rtol=0)


def test_localizer_pixels_are_its_normalised_output():
    localizer = FixationLocalizer(num_landmarks=5, latent=16, hidden=(32,), crop_size=128).eval()
    localizer.set_mean_shape(torch.rand(10, 5, 2) * 128)
    codes = F.normalize(torch.randn(3, 9, 16), dim=-1)
    fixations = grid_fixations(128, 3)
    with torch.no_grad():
        normalised = localizer.forward_normalized(codes, fixations)
        pixels = localizer(codes, fixations)
    torch.testing.assert_close(pixels, normalized_to_pixel(normalised, (128, 128)))
    # tanh keeps every landmark within 1 (half a crop) of the prior, in normalised units.
    assert ((normalised - localizer.mean_shape).abs() < 1).all()


def test_mean_shape_skips_missing_points():
    # A point with any non-finite coordinate is missing as a whole.
    points = torch.tensor([[[0.0, 128.0], [64.0, 64.0]], [[256.0, float("nan")], [192.0, 0.0]]])
    expected = torch.tensor([[-1.0, 0.0], [0.0, -0.75]])
    torch.testing.assert_close(mean_shape_from_points(points, 256), expected)


@pytest.mark.parametrize("shape", [(2, 68), (2, 68, 3), (2, 5, 2)])
def test_mean_shape_rejects_shapes_other_than_n_k_2(shape):
    # (2, 5, 2) is well formed but has 5 landmarks where the model expects 68.
    with pytest.raises(ValueError, match=r"expected training shapes \(N, 68, 2\)"):
        mean_shape_from_points(torch.zeros(shape), 256, num_landmarks=68)
    localizer = FixationLocalizer(num_landmarks=68)
    with pytest.raises(ValueError, match="expected training shapes"):
        localizer.set_mean_shape(torch.zeros(shape))


# ---------------------------------------------------------------------------------------------
# Refiner


def test_heatmap_targets_peak_at_the_landmark():
    centres = torch.tensor([[100.5, 50.5], [10.0, 10.0], [10.0, 10.0]])
    landmarks = centres + torch.tensor([[3.0, -2.0], [0.0, 0.0], [13.5, 0.0]])
    targets, valid = heatmap_targets(landmarks, centres, 27, 1.5)
    assert valid.tolist() == [True, True, False]  # 13.5 px is beyond the outermost sample
    assert targets[0].argmax() == (13 - 2) * 27 + (13 + 3)  # row 11, col 16
    assert targets[0, 11, 16] == 1.0
    assert targets[0, 11, 17].item() == pytest.approx(math.exp(-1 / (2 * 1.5**2)))
    assert targets[2].sum() == 0.0
    assert heatmap_loss(targets, targets, valid) == 0.0


def test_heatmap_peak_offsets_are_clamped():
    heatmaps = torch.zeros(4, 27, 27)
    heatmaps[0, 13, 13] = 1.0  # centre: no move
    heatmaps[1, 13 + 5, 13 - 2] = 1.0  # far peak: clamped to (-1, +1)
    heatmaps[2, 13, 14] = 1.0  # one px right
    heatmaps[3, 0, 26] = 1.0
    offsets = heatmap_peak_offsets(heatmaps, max_step=1.0)
    expected = torch.tensor([[0.0, 0.0], [-1.0, 1.0], [1.0, 0.0], [1.0, -1.0]])
    torch.testing.assert_close(offsets, expected)
    assert heatmap_peak_offsets(heatmaps[1:2], max_step=2.0).tolist() == [[-2.0, 2.0]]


def test_refiner_moves_landmarks_by_at_most_max_step():
    refiner = LandmarkRefiner(num_landmarks=4, image_channels=3).eval()
    landmarks = torch.rand(2, 4, 2) * 200 + 28
    with torch.no_grad():
        heatmaps = refiner.heatmaps(torch.randn(2, 3, 256, 256), landmarks)
        refined = refiner(torch.randn(2, 3, 256, 256), landmarks)
    assert heatmaps.shape == (2, 4, 27, 27)
    step = refined - landmarks
    assert step.abs().max() <= 1.0 + 1e-5
    torch.testing.assert_close(step, step.round(), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# Whole model: costs and export


def test_costs_match_the_reference_architecture():
    model = WorldComp2D()
    crop = torch.rand(1, 3, 256, 256)
    assert count_parameters(model) == pytest.approx(2.62e6, rel=0.005)
    macs = count_macs(model, crop)
    assert macs["macs"] == pytest.approx(273e6, rel=0.005)
    assert macs["by_module"]["refiner"] == pytest.approx(201e6, rel=0.005)
    grey = WorldComp2D(num_landmarks=29, image_channels=1)
    assert count_parameters(grey) == pytest.approx(2.58e6, rel=0.01)
    assert count_macs(grey, torch.rand(1, 1, 256, 256))["macs"] == pytest.approx(147e6, rel=0.01)


def test_model_rejects_wrong_crops():
    with pytest.raises(ValueError, match=r"expected face crops \(B, 3, 256, 256\)"):
        WorldComp2D(refiner=False)(torch.rand(1, 3, 128, 128))


def test_onnx_export_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = WorldComp2D().eval()
    model.localizer.set_mean_shape(torch.rand(4, 68, 2) * 160 + 48)
    crops = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    result = export_onnx(model, crops, tmp_path / "worldcomp2d.onnx", atol=1e-4)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert result.checked_batch_sizes == [1, 2]
    assert not result.warnings or all("site-packages/torch" in w for w in result.warnings)
    model.use_refiner = False  # the path without the refiner exports as well
    coarse = export_onnx(model, crops, tmp_path / "coarse.onnx", atol=1e-4)
    assert coarse.max_abs_diff is not None and coarse.max_abs_diff <= 1e-4


# ---------------------------------------------------------------------------------------------
# Learning tiny tasks


def _blob_batch(generator: torch.Generator, batch: int, size: int = 64):
    """Grey images with one bright Gaussian blob; its centre is the single landmark."""
    centre = torch.rand(batch, 1, 2, generator=generator) * (size - 24) + 12
    pixels = torch.arange(size) + 0.5
    dx = pixels[None, None, :] - centre[:, :, 0:1]
    dy = pixels[None, :, None] - centre[:, :, 1:2].transpose(1, 2)
    image = torch.exp(-(dx**2 + dy**2) / (2 * 3.0**2))[:, None]
    return image, centre


def _tiny_model(**kwargs) -> WorldComp2D:
    return WorldComp2D(
        num_landmarks=1,
        image_channels=1,
        crop_size=64,
        view_size=9,
        view_sides=(9, 33),
        encoder_channels=(8, 16),
        encoder_strides=(2, 2),
        encoder_hidden=32,
        latent=16,
        localizer_hidden=(64,),
        **kwargs,
    )


def test_coarse_path_learns_to_find_a_blob():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = _tiny_model(refiner=False)
    model.localizer.set_mean_shape(torch.full((1, 1, 2), 32.0))
    pool_images, pool_centres = _blob_batch(generator, 512)
    test_images, test_centres = _blob_batch(generator, 64)

    def error() -> float:
        model.eval()
        with torch.no_grad():
            return float((model(test_images) - test_centres).norm(dim=-1).mean())

    before = error()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(50):
        pick = torch.randint(0, 512, (16,), generator=generator)
        image = model.normalize(pool_images[pick])
        fixations = jitter_fixations(model.fixations, 16, max_shift=2, generator=generator)
        codes = model.encode(model.observe(image, fixations))
        predicted = model.localizer.forward_normalized(codes, fixations)
        loss = F.mse_loss(predicted, pool_centres[pick] / 32 - 1)  # normalised crop coords
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = error()
    assert before > 8 and after < before / 3, (before, after)


def test_refiner_learns_to_step_towards_the_landmark():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    refiner = LandmarkRefiner(num_landmarks=1, image_channels=1, width=12, groups=3)
    pool_images, pool_centres = _blob_batch(generator, 256)
    test_images, test_centres = _blob_batch(generator, 64)
    start = test_centres + torch.tensor([2.0, -2.0])

    def right_moves() -> float:
        # The right move is (-1, +1) (clamped): the fraction that takes exactly that step.
        refiner.eval()
        with torch.no_grad():
            step = refiner(test_images, start) - start
        refiner.train()
        return float((step == torch.tensor([-1.0, 1.0])).all(dim=-1).float().mean())

    before = right_moves()
    optimizer = torch.optim.Adam(refiner.parameters(), lr=1e-2)
    for _ in range(20):
        pick = torch.randint(0, 256, (16,), generator=generator)
        centres = pool_centres[pick]
        noisy = centres + torch.randint(-3, 4, centres.shape, generator=generator)
        loss = refiner.loss(pool_images[pick], noisy, centres)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before < 0.5 and right_moves() > 0.9, (before, right_moves())
