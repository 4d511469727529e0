"""SSDIR: placement, KL and likelihood values, depth merge, de-duplication, a tiny overfit run,
the frozen detector, bad batches, detector loading and the Lightning task.

All on a tiny real ``SSDDetector`` (64 x 64 px, width 1/8). An "oracle" makes the detector's
box / class outputs equal to chosen boxes (as a perfectly trained detector would give), while the
features stay the detector's own.
"""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from torch.distributions import Normal, kl_divergence
from torch.utils.data import DataLoader, TensorDataset
from torchvision.ops import box_iou

from wherewhat.data.scatter import ScatterConfig, ScatterMNIST, collate_scenes, load_or_generate
from wherewhat.geometry import extract
from wherewhat.methods.ssdir.model import SSDIR, load_detector
from wherewhat.methods.ssdir.parts import (
    bernoulli_log_likelihood,
    depth_weights,
    gaussian_log_likelihood,
    kl_normal_to_standard,
    merge_objects,
    select_objects,
)
from wherewhat.methods.ssdir.task import SSDIRTask
from wherewhat.models.spec import module_spec
from wherewhat.models.ssd import SSDDetector
from wherewhat.tasks.ssd import SSDTask
from wherewhat.training.config_files import expand_config_bases
from wherewhat.training.harness import WherewhatCLI

SIZE = (64, 64)
SMALL = {"z_what_size": 16, "what_hidden": 1, "glimpse_size": 16, "decoder_width": 64}
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONFIG = CONFIGS / "ssdir" / "default.yaml"


def tiny_detector(seed: int = 0) -> SSDDetector:
    torch.manual_seed(seed)
    return SSDDetector(image_size=SIZE, width_mult=0.125)


def set_oracle(detector: SSDDetector, boxes_per_image: list[torch.Tensor], copies: int = 1) -> None:
    """Make ``detector(images)`` report exactly these boxes, each on its ``copies`` best-IoU free
    anchors (copies > 1: duplicates, as SSD produces), with confidence ~1; all other anchors are
    background."""
    loc = torch.zeros(len(boxes_per_image), detector.num_anchors, 4)
    classes = torch.zeros(len(boxes_per_image), detector.num_anchors, dtype=torch.long)
    for b, boxes in enumerate(boxes_per_image):
        if len(boxes) == 0:
            continue
        iou = box_iou(boxes, detector.anchors)
        for g in iou.max(dim=1).values.argsort(descending=True).tolist():
            top = iou[g].masked_fill(classes[b] > 0, -1.0).topk(copies).indices
            classes[b, top] = 1
            loc[b, top] = detector.encode_boxes(boxes[g].expand(copies, 4), detector.anchors[top])
    logits = torch.nn.functional.one_hot(classes, detector.num_classes + 1).float() * 20.0 - 10.0
    real_forward = detector.forward

    def forward(images: torch.Tensor) -> dict:
        out = real_forward(images)
        assert images.shape[0] == len(boxes_per_image)
        return {**out, "loc": loc, "logits": logits}

    detector.forward = forward


def scenes(n: int = 4) -> dict:
    config = ScatterConfig(
        image_size=SIZE,
        grid_sizes=((2, 2),),
        min_digit_size=20,
        max_digit_size=30,
        min_digits=1,
        max_digits=3,
        n_train=n,
        n_test=1,
    )
    data = ScatterMNIST(load_or_generate(config, "train"))
    return collate_scenes([data[i] for i in range(n)])


# -- placement ---------------------------------------------------------------------------------
def test_glimpse_placed_by_z_where_lands_on_its_box():
    detector = tiny_detector()
    box = torch.tensor([[10.0, 20.0, 30.0, 44.0]])
    set_oracle(detector, [box], copies=2)
    model = SSDIR(detector, normalize_output=False, **SMALL).eval()
    with torch.no_grad():  # a decoder that draws a white glimpse
        last = model.what_decoder.layers[-2]
        last.weight.zero_()
        last.bias.fill_(30.0)
    out = model(torch.zeros(1, 1, *SIZE))
    assert len(out["image_index"]) == 1  # duplicates of the one box were removed
    torch.testing.assert_close(out["object_boxes"], box)
    recon = out["reconstruction"][0, 0]
    inside = recon[20:44, 10:30]
    assert torch.allclose(inside, torch.ones_like(inside), atol=1e-5)
    outside = recon.clone()
    outside[20:44, 10:30] = 0
    assert outside.abs().max() < 1e-6
    assert recon.sum().item() == pytest.approx(20 * 24, abs=1e-2)
    # orientation: the glimpse's top-left quadrant lands in the box's top-left quadrant
    quadrant = torch.zeros(1, 1, 16, 16)
    quadrant[..., :8, :8] = 1.0
    model.what_decoder.forward = lambda z: quadrant.expand(len(z), -1, -1, -1)
    recon = model(torch.zeros(1, 1, *SIZE))["reconstruction"][0, 0]
    assert recon[20:31, 10:19].min() > 0.99  # box top-left: x 10..20, y 20..32
    assert recon[33:44, 10:30].max() < 0.01 and recon[20:44, 21:30].max() < 0.01


# -- KL and likelihoods ------------------------------------------------------------------------
def test_kl_matches_torch_distributions_and_a_hand_value():
    torch.manual_seed(0)
    mean = torch.randn(5, 7) * 2
    for sigma in (0.1, 0.5, 1.0, 2.0):
        expected = kl_divergence(Normal(mean, sigma), Normal(0.0, 1.0))
        torch.testing.assert_close(kl_normal_to_standard(mean, sigma), expected)
    # mean 1, sigma 0.1: -log 0.1 + (0.01 + 1) / 2 - 1/2
    hand = kl_normal_to_standard(torch.tensor([1.0]), 0.1).item()
    assert hand == pytest.approx(math.log(10) + 0.005, abs=1e-6)
    assert kl_normal_to_standard(torch.zeros(3), 1.0).abs().max() < 1e-7


def test_model_kl_terms_sum_over_cells_that_render_objects():
    detector = tiny_detector()
    set_oracle(detector, [torch.tensor([[4.0, 4.0, 24.0, 28.0], [34.0, 30.0, 60.0, 58.0]])])
    model = SSDIR(detector, **SMALL).eval()
    images = torch.rand(1, 1, *SIZE)
    out = model(images)
    terms = model.loss(images, out)
    cells = out["cell_index"].unique()
    assert len(out["image_index"]) == 2
    what = Normal(out["what_mean"][0, cells], 0.1)
    depth = Normal(out["depth_mean"][0, cells], 0.1)
    expected_what = kl_divergence(what, Normal(0.0, 1.0)).sum()
    expected_depth = kl_divergence(depth, Normal(0.0, 1.0)).sum()
    torch.testing.assert_close(terms["kl_what"], expected_what)
    torch.testing.assert_close(terms["kl_depth"], expected_depth)


def test_likelihoods_match_hand_values_on_a_tiny_image():
    target = torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]])
    recon = torch.tensor([[[[0.1, 0.5], [0.9, 0.5]]]])
    # x log r + (1 - x) log(1 - r): log .9 + log .5 + log .9 + (.25 + .75) log .5
    bernoulli = 2 * math.log(0.9) + 2 * math.log(0.5)
    assert bernoulli_log_likelihood(recon, target).item() == pytest.approx(bernoulli, abs=1e-5)
    # sigma .5: z = (-.2, 0, .2, -.5), sum z^2 = .33
    gaussian = -0.5 * 0.33 - 4 * math.log(0.5) - 2 * math.log(2 * math.pi)
    assert gaussian_log_likelihood(recon, target, 0.5).item() == pytest.approx(gaussian, abs=1e-5)


def test_bernoulli_likelihood_is_finite_on_continuous_targets_and_saturated_outputs():
    target = torch.rand(3, 1, 8, 8)
    for recon in (torch.zeros(3, 1, 8, 8), torch.ones(3, 1, 8, 8), torch.rand(3, 1, 8, 8)):
        value = bernoulli_log_likelihood(recon, target)
        assert value.shape == (3,) and torch.isfinite(value).all() and (value <= 0).all()


# -- merge -------------------------------------------------------------------------------------
def test_depth_weights_sum_to_one_per_image_and_a_much_nearer_object_dominates():
    depth = torch.tensor([0.3, -1.0, 2.0, 0.0, 12.0, 0.5])
    image_index = torch.tensor([0, 0, 0, 1, 1, 2])
    weights = depth_weights(depth, image_index, 4)
    sums = torch.zeros(4).index_add(0, image_index, weights)
    torch.testing.assert_close(sums[:3], torch.ones(3))
    torch.testing.assert_close(weights[:3], torch.softmax(depth[:3], 0))
    assert weights[4] > 0.9999 and weights[5] == pytest.approx(1.0)
    # two overlapping objects in image 1: the nearer one's pixels win
    canvases = torch.zeros(6, 1, 4, 4)
    canvases[3] = 0.2
    canvases[4] = 0.9
    merged = merge_objects(canvases, weights, image_index, 4)
    assert torch.allclose(merged[1], torch.full((1, 4, 4), 0.9), atol=1e-4)
    assert merged[3].abs().max() == 0  # no objects: empty


# -- de-duplication ----------------------------------------------------------------------------
def test_select_objects_nms_keeps_one_of_duplicates_and_none_keeps_all():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0.5, 0, 10, 10], [20, 20, 30, 30]]])
    scores = torch.tensor([[0.8, 0.9, 0.7]])
    present = torch.ones(1, 3, dtype=torch.bool)
    _, kept = select_objects(boxes, scores, present, "nms")
    assert kept.tolist() == [1, 2]
    _, kept = select_objects(boxes, scores, present, "none")
    assert kept.tolist() == [1, 0, 2]
    _, kept = select_objects(boxes, scores, present, "none", max_objects=2)
    assert kept.tolist() == [1, 0]
    # several images: NMS never crosses images, the cap is per image, order = image then score
    two = torch.cat([boxes, boxes])
    image, kept = select_objects(
        two,
        torch.tensor([[0.8, 0.9, 0.7], [0.6, 0.5, 0.95]]),
        torch.ones(2, 3, dtype=torch.bool),
        "nms",
        max_objects=1,
    )
    assert image.tolist() == [0, 1] and kept.tolist() == [1, 2]


@pytest.mark.parametrize("dedup", ["nms", "soft", "none"])
def test_dedup_modes_render_duplicated_anchors_once_or_all(dedup):
    detector = tiny_detector()
    box = torch.tensor([[16.0, 16.0, 46.0, 48.0]])
    set_oracle(detector, [box], copies=3)
    model = SSDIR(detector, dedup=dedup, **SMALL).train()
    duplicates = int((model(torch.rand(1, 1, *SIZE))["present_prob"] > 0.5).sum())
    assert duplicates == 3
    out = model(torch.rand(1, 1, *SIZE))
    expected = 1 if dedup == "nms" else duplicates
    assert len(out["image_index"]) == expected
    assert out["object_boxes"].sub(box).abs().max() < 1e-3
    # inference records always use threshold + NMS
    assert len(model.encode(torch.rand(1, 1, *SIZE))[0]["boxes"]) == 1


# -- training ----------------------------------------------------------------------------------
def test_elbo_is_finite_and_improves_on_a_tiny_overfit_run():
    batch = scenes(4)
    images = batch["image"]
    detector = tiny_detector()
    set_oracle(detector, batch["boxes"])
    torch.manual_seed(0)
    model = SSDIR(detector, **SMALL).train()
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=5e-3)
    losses, mses = [], []
    for _ in range(30):
        terms = model.loss(images, model(images))
        assert torch.isfinite(terms["loss"])
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
        mses.append(terms["recon_mse"].item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    # measured with the GroupNorm decoder: loss x0.74, MSE x0.60 after 30 steps
    assert last < 0.8 * first, (first, last)
    assert sum(mses[-5:]) / 5 < 0.7 * sum(mses[:5]) / 5, mses
    assert terms["objects_per_image"].item() == pytest.approx(
        sum(len(b) for b in batch["boxes"]) / 4
    )


def test_losses_stay_float32_and_close_to_float32_ones_under_bf16_autocast():
    batch = scenes(2)
    detector = tiny_detector()
    torch.manual_seed(0)
    ssdir = SSDIRTask(SSDIR(tiny_detector(), **SMALL)).train()
    detector_task = SSDTask(detector).train()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no trainer attached
        for task in (detector_task, ssdir):
            torch.manual_seed(1)
            reference = task.training_step(batch, 0)
            torch.manual_seed(1)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                mixed = task.training_step(batch, 0)
            assert reference.dtype == mixed.dtype == torch.float32
            # bf16 matmuls keep ~3 digits; the sums over pixels stay float32
            assert mixed.item() == pytest.approx(reference.item(), rel=0.02)
            mixed.backward()


def test_detector_stays_frozen_and_outside_the_optimizer():
    batch = scenes(2)
    detector = tiny_detector()
    set_oracle(detector, batch["boxes"])
    task = SSDIRTask(SSDIR(detector, **SMALL))
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    trained_before = [p.clone() for p in task.model.trainable_parameters()]
    optimizer = task.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised and not optimised & {id(p) for p in detector.parameters()}
    assert all(not p.requires_grad for p in detector.parameters())
    task.train()
    assert not detector.training  # batch-norm statistics must not move
    for step in range(3):
        loss = task.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, value in detector.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    trained_after = task.model.trainable_parameters()
    assert any(not torch.equal(p, q) for p, q in zip(trained_before, trained_after, strict=True))


def test_a_bad_batch_raises_with_its_index():
    task = SSDIRTask(SSDIR(tiny_detector(), **SMALL))
    good = torch.rand(2, 1, *SIZE)
    nan = good.clone()
    nan[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"train batch 7: .*NaN"):
        task.training_step({"image": nan}, 7)
    with pytest.raises(ValueError, match=r"val batch 3: .*\[0, 1\]"):
        task.validation_step({"image": good * 255}, 3)
    with pytest.raises(ValueError, match=r"train batch 2: .*shape \(B, 1, 64, 64\)"):
        task.training_step({"image": torch.rand(2, 1, 32, 32)}, 2)


# -- detector checkpoints, records, task -------------------------------------------------------
def test_load_detector_from_state_dict_and_lightning_style_checkpoint(tmp_path):
    detector = tiny_detector(seed=3)
    plain = tmp_path / "detector.pt"
    torch.save(detector.state_dict(), plain)
    args = {"image_size": list(SIZE), "width_mult": 0.125}
    lightning = tmp_path / "detector.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in detector.state_dict().items()},
            "hyper_parameters": {"lr": 0.1, "image_size": list(SIZE), "width_mult": 0.125},
        },
        lightning,
    )
    for path, extra in ((plain, args), (lightning, None)):
        loaded = load_detector(path, extra)
        assert not loaded.training
        for key, value in detector.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value)
    with pytest.raises(ValueError, match="not found"):
        load_detector(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="detector_checkpoint"):
        SSDIR()


def test_encode_returns_one_record_per_object():
    batch = scenes(2)
    detector = tiny_detector()
    set_oracle(detector, batch["boxes"])
    task = SSDIRTask(SSDIR(detector, **SMALL))
    records = task.predict_step(batch, 0)
    for record, truth in zip(records, batch["boxes"], strict=True):
        n = len(truth)
        assert record["boxes"].shape == (n, 4) and record["z_what"].shape == (n, 16)
        assert record["scores"].shape == record["depth"].shape == (n,)
        assert torch.allclose(
            record["boxes"].sort(0).values, truth.clamp(0, 64).sort(0).values, atol=1e-3
        )


def test_task_fits_through_lightning_and_config_names_real_arguments(tmp_path):
    torch.manual_seed(0)
    task = SSDIRTask(SSDIR(tiny_detector(), present_threshold=0.45, **SMALL))
    images = torch.rand(4, 1, *SIZE)
    loader = DataLoader(TensorDataset(images), batch_size=2)
    trainer = pl.Trainer(
        max_steps=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, loader, loader)
    logged = trainer.callback_metrics
    for name in ("val/loss", "val/kl_what", "val/log_lik_objects", "val/recon_mse"):
        assert name in logged and torch.isfinite(logged[name])

    config = yaml.safe_load(CONFIG.read_text())
    assert config["model"]["class_path"] == "wherewhat.methods.ssdir.task.SSDIRTask"
    accepted = set(inspect.signature(SSDIRTask.__init__).parameters)
    assert set(config["model"]["init_args"]) <= accepted
    network = config["model"]["init_args"]["model"]
    assert network["class_path"] == "wherewhat.methods.ssdir.model.SSDIR"
    assert set(network["init_args"]) <= set(inspect.signature(SSDIR).parameters)
    # the checkpoint rebuilds SSDIR and its detector from the stored spec
    trainer.save_checkpoint(tmp_path / "ssdir.ckpt")
    loaded = SSDIRTask.load_from_checkpoint(tmp_path / "ssdir.ckpt")
    assert loaded.model.present_threshold == 0.45
    for key, value in task.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_images_without_objects_show_only_the_background_and_keep_a_finite_loss(likelihood):
    detector = tiny_detector()
    set_oracle(detector, [torch.zeros(0, 4), torch.tensor([[8.0, 8.0, 40.0, 40.0]])])
    model = SSDIR(
        detector, background=True, normalize_output=False, likelihood=likelihood, **SMALL
    ).eval()
    images = torch.rand(2, 1, *SIZE)
    out = model(images)
    assert out["image_index"].tolist() == [1]
    background = model.what_decoder(out["background_what"][:1])  # (1, 1, 16, 16)
    # the empty image is the background glimpse stretched over the whole canvas: glimpse pixel
    # i's centre lies between canvas pixels 4i + 1 and 4i + 2, whose mean is its value up to a
    # 1/16 second difference
    recon = out["reconstruction"][0, 0]
    at_centres = (recon[1::4, 1::4] + recon[2::4, 1::4] + recon[1::4, 2::4] + recon[2::4, 2::4]) / 4
    torch.testing.assert_close(at_centres, background[0, 0], atol=0.03, rtol=0)
    terms = model.loss(images, out)
    assert all(torch.isfinite(v) for v in terms.values())
    # the object term compares the glimpse with the input cropped to its box; the empty image
    # contributes 0 to the batch mean
    crop = extract(images[1:], out["object_boxes"], (16, 16))
    expected = model.log_likelihood(out["glimpses"], crop).item() / 2
    assert terms["log_lik_objects"].item() == pytest.approx(expected, rel=1e-5)


def resolved_config(path: Path, capsys: pytest.CaptureFixture) -> dict:
    """``path`` as the command line resolves it (its ``base`` applied first)."""
    capsys.readouterr()
    with pytest.raises(SystemExit):
        WherewhatCLI(args=expand_config_bases(["fit", "--config", str(path), "--print_config"]))
    return yaml.safe_load(capsys.readouterr().out)


def test_paper_300px_config_builds_ssdir_on_the_paper_detector(capsys):
    """configs/ssdir/paper_300px.yaml on configs/ssd/paper_300px.yaml's detector: 64-px glimpses
    from a 1024-channel decoder, 300 x 300 x 3 reconstructions (the paper's setting)."""
    det_config = resolved_config(CONFIGS / "ssd" / "paper_300px.yaml", capsys)
    det_args = det_config["model"]["init_args"]["model"]["init_args"]
    detector = SSDDetector(**{**det_args, "image_size": tuple(det_args["image_size"])})
    assert detector.grid_sizes == [(18, 18), (9, 9), (5, 5), (3, 3), (1, 1)]
    config = resolved_config(CONFIGS / "ssdir" / "paper_300px.yaml", capsys)
    network = config["model"]["init_args"]["model"]["init_args"]
    args = {k: v for k, v in network.items() if "detector" not in k}
    task = SSDIRTask(SSDIR(detector, **args), lr=config["model"]["init_args"]["lr"])
    assert task.model.what_decoder.glimpse_size == 64
    assert config["data"]["init_args"]["image_size"] == [300, 300]
    with torch.no_grad():
        out = task.model.eval()(torch.rand(1, 3, 300, 300))
    assert out["reconstruction"].shape == (1, 3, 300, 300)
    assert out["glimpses"].shape[1:] == (3, 64, 64)


def _detector_checkpoint(path: Path) -> SSDTask:
    """An SSD task checkpoint as Lightning writes it (hyper-parameters hold the model spec)."""
    task = SSDTask(tiny_detector(seed=4), lr=1e-3)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return task


def test_ssdir_reads_its_detector_from_a_task_checkpoint_and_stores_the_detector_itself(
    tmp_path,
):
    trained = _detector_checkpoint(tmp_path / "ssd.ckpt")
    model = SSDIR(detector_checkpoint=str(tmp_path / "ssd.ckpt"), min_box_size=2.5, **SMALL)
    for key, value in trained.model.state_dict().items():
        torch.testing.assert_close(model.detector.state_dict()[key], value)
    assert model.init_args["detector_checkpoint"] == str(tmp_path / "ssd.ckpt")  # as built
    task = SSDIRTask(model)
    spec = task.hparams["model"]["init_args"]
    assert spec["min_box_size"] == 2.5 and spec["detector_checkpoint"] is None
    assert spec["detector"]["class_path"] == "wherewhat.models.ssd.SSDDetector"
    # rebuilt from the spec alone: the detector checkpoint is no longer read
    (tmp_path / "ssd.ckpt").unlink()
    rebuilt = SSDIRTask(task.hparams["model"])
    assert rebuilt.model.min_box_size == 2.5
    assert module_spec(rebuilt.model.detector) == module_spec(trained.model)
    with pytest.raises(ValueError, match="detector_args only apply"):
        SSDIR(tiny_detector(), detector_args={"width_mult": 0.5})
    with pytest.raises(ValueError, match="one frozen detector"):
        SSDIR(tiny_detector(), detector_checkpoint=str(tmp_path / "other.ckpt"))


def test_config_names_the_detector_checkpoint(tmp_path):
    _detector_checkpoint(tmp_path / "ssd.ckpt")
    args = [
        "--config", str(CONFIG), "--run.root", str(tmp_path / "runs"),
        "--model.init_args.model.init_args.detector_checkpoint", str(tmp_path / "ssd.ckpt"),
        "--model.init_args.model.init_args.min_box_size", "3.0",
        "--model.init_args.model.init_args.glimpse_size", "16",
        "--model.init_args.model.init_args.decoder_width", "32",
    ]  # fmt: skip
    cli = WherewhatCLI(args=expand_config_bases(args), run=False)
    assert isinstance(cli.model, SSDIRTask) and cli.model.hparams.lr == 0.001
    assert cli.model.model.min_box_size == 3.0 and cli.model.model.input_size == SIZE


def test_ssdir_on_a_pyramid_cut_to_fewer_levels_gives_every_level_a_what_head():
    torch.manual_seed(0)
    detector = SSDDetector(image_size=(128, 128), width_mult=0.125, first_stride=8, num_levels=3,
                           min_anchor_size=12, max_anchor_size=48)  # fmt: skip
    assert detector.grid_sizes == [(16, 16), (8, 8), (4, 4)]
    model = SSDIR(detector, **SMALL)
    images = torch.rand(2, 1, 128, 128)
    out = model(images)
    assert out["reconstruction"].shape == images.shape
    assert len(model.what_encoder.heads) == 3  # one per level, sized to its channels
    model.loss(images, out)["loss"].backward()
    for head in model.what_encoder.heads:
        assert all(p.grad is not None for p in head.parameters())
