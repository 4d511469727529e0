"""SSDIR's what-encoder inputs (``cells | glimpse | both``), the invariance term, and eq. 4."""

from __future__ import annotations

import math

import pytest
import torch
from tests.test_ssdir import SIZE, SMALL, scenes, set_oracle, tiny_detector

from wherewhat.errors import ConfigError
from wherewhat.geometry import extract
from wherewhat.methods.ssdir.model import SSDIR
from wherewhat.methods.ssdir.object_encoder import jittered_box_affines, nt_xent, object_crops
from wherewhat.methods.ssdir.parts import present_probability
from wherewhat.training.precision import to_float32


def test_unjittered_view_is_the_plain_box_crop_and_jitter_moves_it():
    images = torch.rand(2, 1, 40, 50)
    boxes = torch.tensor([[5.0, 6.0, 25.0, 30.0], [10.0, 2.0, 44.0, 38.0]])
    index = torch.tensor([0, 1])
    plain = jittered_box_affines(boxes, 16, shift=0.0, log_scale=0.0, degrees=0.0)
    torch.testing.assert_close(
        object_crops(images, index, plain, 16),
        extract(images, boxes, (16, 16), batch_index=index), atol=1e-5, rtol=0,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    moved = jittered_box_affines(boxes, 16, generator=generator)
    assert not torch.allclose(moved, plain)
    # the box centre stays within shift x size of the crop centre
    centre = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, torch.ones(2, 1)], 1)
    landed = torch.einsum("nij,nj->ni", moved, centre)[:, :2]
    assert (landed - 8).abs().max() < 16 * 0.1 * math.exp(0.15) + 16 * math.sin(math.radians(10))


def test_nt_xent_is_zero_for_one_object_and_matches_a_hand_value():
    a = torch.tensor([[0.3, -1.2, 2.0]])
    assert nt_xent(a, a.clone()).item() == pytest.approx(0.0, abs=1e-6)
    # Two objects, identical orthogonal views, temperature 1: each view sees its partner at
    # cosine 1 and two negatives at 0: -log(e / (e + 2)).
    views = torch.eye(2)
    expected = math.log((math.e + 2) / math.e)
    assert nt_xent(views, views.clone(), temperature=1.0).item() == pytest.approx(expected)


def test_eq4_presence_is_the_best_object_probability_where_an_object_wins():
    probs = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.34, 0.33, 0.33]]])
    beta = present_probability(probs.log(), "max_object")
    torch.testing.assert_close(beta, torch.tensor([[0.0, 0.6, 0.0]]))
    torch.testing.assert_close(
        present_probability(probs.log(), "not_background"), torch.tensor([[0.5, 0.9, 0.66]])
    )


@pytest.mark.parametrize("what_input", ["glimpse", "both"])
def test_glimpse_modes_place_objects_on_their_boxes(what_input):
    detector = tiny_detector()
    box = torch.tensor([[10.0, 20.0, 30.0, 44.0]])
    set_oracle(detector, [box], copies=2)
    model = SSDIR(detector, normalize_output=False, what_input=what_input, what_crop_size=16,
                  **SMALL).eval()  # fmt: skip
    with torch.no_grad():  # a decoder that draws a white glimpse
        last = model.what_decoder.layers[-2]
        last.weight.zero_()
        last.bias.fill_(30.0)
    out = model(torch.rand(1, 1, *SIZE))
    assert out["what_mean"] is None and out["object_what_mean"].shape == (1, SMALL["z_what_size"])
    recon = out["reconstruction"][0, 0]
    assert torch.allclose(recon[20:44, 10:30], torch.ones(24, 20), atol=1e-5)
    assert recon.sum().item() == pytest.approx(20 * 24, abs=1e-2)
    (record,) = model.encode(torch.rand(1, 1, *SIZE))
    assert record["z_what"].shape == (1, SMALL["z_what_size"])


@pytest.mark.parametrize(
    ("what_input", "weight"), [("glimpse", 0.0), ("both", 0.0), ("glimpse", 50.0)]
)
def test_glimpse_modes_and_the_invariance_term_train(what_input, weight):
    batch = scenes(4)
    images = batch["image"]
    detector = tiny_detector()
    set_oracle(detector, batch["boxes"])
    torch.manual_seed(0)
    model = SSDIR(detector, what_input=what_input, what_crop_size=16, invariance_weight=weight,
                  **SMALL).train()  # fmt: skip
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=5e-3)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert all(id(p) in trainable for p in model.glimpse_encoder.parameters())
    assert not any(id(p) in trainable for p in model.detector.parameters())
    losses = []
    for _ in range(25):
        terms = model.loss(images, model(images))
        assert torch.isfinite(terms["loss"])
        assert (terms["invariance"].item() > 0) == (weight > 0)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    # measured: x0.79-0.84 after 25 steps
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses


def test_invalid_what_options_are_refused():
    with pytest.raises(ConfigError, match="what_input"):
        SSDIR(tiny_detector(), what_input="pixels", **SMALL)
    with pytest.raises(ConfigError, match="invariance_weight"):
        SSDIR(tiny_detector(), invariance_weight=1.0, **SMALL)


def test_level_shares_say_which_levels_receive_objects():
    from wherewhat.models.ssd import matched_level_shares

    detector = tiny_detector()
    levels = len(detector.grid_sizes)
    small = torch.tensor([[4.0, 4.0, 12.0, 12.0]])  # the smallest anchors' size
    large = torch.tensor([[0.0, 0.0, 64.0, 64.0]])  # the whole image: the coarsest level
    shares = matched_level_shares([small, large], detector.anchors, detector.anchor_level, levels)
    assert shares.shape == (levels,) and shares.sum() >= 1.0 - 1e-6

    def best_level(box):  # every box is forced onto its best-IoU anchor
        from torchvision.ops import box_iou

        return int(detector.anchor_level[box_iou(box, detector.anchors)[0].argmax()])

    low, high = best_level(small), best_level(large)
    assert low < high and shares[low] >= 0.5 and shares[high] >= 0.5
    assert matched_level_shares([], detector.anchors, detector.anchor_level, levels).sum() == 0


@pytest.mark.parametrize("what_input", ["glimpse", "both"])
def test_invariance_views_are_encoded_in_the_forward_pass_precision(what_input):
    """Under bf16 autocast the two jittered views go through the encoder in bf16 (its
    convolutions are the term's cost), while the term itself stays float32 and close to the
    float32 value; without autocast everything is float32."""
    batch = scenes(2)
    images = batch["image"]
    detector = tiny_detector()
    set_oracle(detector, batch["boxes"])
    torch.manual_seed(0)
    model = SSDIR(detector, what_input=what_input, what_crop_size=16, invariance_weight=1.0,
                  **SMALL).train()  # fmt: skip
    encoded: list[torch.dtype] = []
    model.glimpse_encoder.register_forward_hook(lambda m, args, out: encoded.append(out.dtype))
    terms = {}
    for name, enabled in (("float32", False), ("bf16", True)):
        encoded.clear()
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            outputs = to_float32(model(images))
        with torch.autocast("cpu", enabled=False):  # as the task computes the loss
            terms[name] = model.loss(images, outputs)["invariance"]
        want = torch.bfloat16 if enabled else torch.float32
        assert outputs["autocast_dtype"] == (torch.bfloat16 if enabled else None)
        assert encoded == [want] * 3  # the forward pass's z_what, then the two views
        assert terms[name].dtype == torch.float32
    assert terms["float32"].item() > 0
    assert terms["bf16"].item() == pytest.approx(terms["float32"].item(), rel=0.05)
