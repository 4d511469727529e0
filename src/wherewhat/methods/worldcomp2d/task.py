"""Three-stage training of :class:`~wherewhat.methods.worldcomp2d.model.WorldComp2D` (face landmarks).

One task, three stages, chosen by ``stage``; each stage trains one part and starts from the
previous stage's checkpoint (``init_from``):

=========== =================================================== ============ ===============
stage       loss                                                trains       frozen (eval)
=========== =================================================== ============ ===============
encoder     PWConLoss (tau 0.05) on proximity-weighted views    encoder      (nothing used)
localizer   MSE on normalised crop coordinates, fixations       localizer    encoder
            jittered (``jitter_mode``: the reference's walk)
refiner     heatmap MSE on native views around the coarse       refiner      encoder,
            prediction plus up to ``refiner_noise`` px noise                 localizer
=========== =================================================== ============ ===============

``init_from`` (a checkpoint of this task) loads, before the first training step, the parts
trained by the checkpoint's stage and the stages before it, limited to the parts up to the
current stage: stage ``localizer`` from an ``encoder`` checkpoint loads the encoder; stage
``refiner`` from a ``localizer`` checkpoint loads encoder + localizer (with its mean shape).
The model (the ``model`` argument, a :class:`WorldComp2D` or its spec) must equal the previous
stage's: the checkpoint's model spec is compared before any weight is loaded. Frozen parts have
``requires_grad=False`` and stay in eval mode (their BatchNorm statistics do not move;
Lightning's warning "Found N module(s) in eval mode at the start of training" is about them).
On a resume (``--ckpt_path`` / ``--resume``) the resumed checkpoint overrides whatever
``init_from`` loaded.

The localizer's mean-shape prior is computed from the *training split* at ``setup`` (the data
module's ``train_crop_points()``), unless ``init_from`` brings a trained localizer.

The configs: ``configs/worldcomp2d/default.yaml`` (the model, the data, stage encoder) and the
deltas ``localizer.yaml`` and ``refiner.yaml`` (``base: default.yaml``). The command sequence
(each stage reads the previous stage's last checkpoint)::

    wherewhat fit --config configs/worldcomp2d/default.yaml
    wherewhat fit --config configs/worldcomp2d/localizer.yaml \\
        --model.init_args.init_from runs/worldcomp2d/<time>/checkpoints/last.ckpt
    wherewhat fit --config configs/worldcomp2d/refiner.yaml \\
        --model.init_args.init_from runs/worldcomp2d_localizer/<time>/checkpoints/last.ckpt
    wherewhat validate --config configs/worldcomp2d/refiner.yaml \\
        --ckpt_path runs/worldcomp2d_refiner/<time>/checkpoints/last.ckpt
    wherewhat export onnx runs/worldcomp2d_refiner/<time>/checkpoints/last.ckpt \\
        --out worldcomp2d.onnx

Batches: dicts of :class:`~wherewhat.data.face_datamodule.FaceLandmarkDataModule` (``image``
``(B, C, S, S)`` in [0, 1], ``points`` ``(B, K, 2)`` crop px, ``affine`` ``(B, 3, 3)`` original
-> crop, optionally ``original_points`` ``(B, K, 2)``). Training batches of the fast data path
(``data.batched_views: true``, :mod:`wherewhat.data.face_batches`) carry ``canvas`` +
``crop_from_canvas`` instead of ``image``: the views are then cut from the canvases with one
``grid_sample`` per batch and no crop is built (the refiner stage builds its crops the same
way). ``code_bank`` (stage localizer, fast path only) encodes the training faces once and
trains the localizer on looked-up codes. Evaluation maps predictions back to
original-image pixels with :func:`~wherewhat.data.face_crops.uncrop_points` and accumulates
inter-ocular NME over every face. Logged (fractions, 0.05 = 5 %): ``train/loss``,
``val/loss``, and for stages localizer / refiner ``val/nme``, ``val/fr10``, ``val/auc10``,
``val/num_faces`` (refiner: also ``val/nme_coarse``, the localizer alone); same under ``test/``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer

from wherewhat.data.face_batches import (
    FaceCanvasItems,
    canvas_batch,
    crops_from_canvas,
    sample_crop_views,
)
from wherewhat.data.face_crops import (
    batch_images_and_points,
    prediction_record,
    uncrop_points,
)
from wherewhat.errors import ConfigError
from wherewhat.geometry import pixel_to_normalized
from wherewhat.methods.worldcomp2d.differences import setting_differences
from wherewhat.methods.worldcomp2d.model import (
    CodeBank,
    FixationWalk,
    PWConLoss,
    WorldComp2D,
    build_code_bank,
    jitter_fixations,
    sample_contrastive_views,
)
from wherewhat.methods.worldcomp2d.parts import walk_offsets
from wherewhat.metrics.landmarks import LandmarkNME
from wherewhat.models.spec import build_module, module_spec
from wherewhat.training.schedules import step_decay

__all__ = ["STAGES", "WorldComp2DTask", "parts_loaded_from"]

Stage = Literal["encoder", "localizer", "refiner"]
STAGES: tuple[str, ...] = ("encoder", "localizer", "refiner")
# Reference learning rates (Adam): encoder 1e-2, localizer and refiner 5e-4.
_DEFAULT_LR = {"encoder": 1e-2, "localizer": 5e-4, "refiner": 5e-4}
_FAILURE_THRESHOLD = 0.10  # FR@10 and AUC@10


def parts_loaded_from(checkpoint_stage: str, stage: str) -> tuple[str, ...]:
    """Model parts that ``init_from`` loads: trained by ``checkpoint_stage`` (or earlier) and
    used up to ``stage``. Raises ``ConfigError`` when a part ``stage`` freezes is untrained
    in the checkpoint (e.g. stage refiner from an encoder checkpoint)."""
    for name in (checkpoint_stage, stage):
        if name not in STAGES:
            raise ConfigError(f"unknown WorldComp2D stage {name!r}; expected one of {STAGES}")
    trained = STAGES.index(checkpoint_stage)
    current = STAGES.index(stage)
    if trained < current - 1:
        raise ConfigError(
            f"stage {stage!r} needs a checkpoint of stage {STAGES[current - 1]!r} or later "
            f"(it freezes {', '.join(STAGES[:current])}); got one of stage {checkpoint_stage!r}"
        )
    return STAGES[: min(trained, current) + 1]


class WorldComp2DTask(pl.LightningModule):
    """Trains one stage of WorldComp2D (see the module docstring) and evaluates NME.

    Args:
        model: the network, a :class:`WorldComp2D` or its spec (see
            :mod:`wherewhat.models.spec`); default ``WorldComp2D()``. Identical across the three
            stages (``init_from`` checks it).
        stage: ``"encoder"``, ``"localizer"`` or ``"refiner"``.
        init_from: checkpoint of a previous stage (see :func:`parts_loaded_from`), or ``None``.
        lr: Adam learning rate; ``None``: the reference's (1e-2 encoder, 5e-4 otherwise).
        lr_decay, lr_decay_at: multiply the learning rate by ``lr_decay`` once, after the
            fraction ``lr_decay_at`` of the planned optimizer steps (the reference: x0.1 at
            half-way); ``None`` keeps it constant. A resumed run must keep
            ``max_epochs`` / ``max_steps``.
        temperature, positive_radius, proximity_decay: PWConLoss (tau) and its positives: a view
            is positive when the anchor's landmark is within +-``positive_radius`` px of its
            centre, weight ``1 + exp(-proximity_decay * distance)``.
        views_per_image: contrastive pairs (anchor on a landmark, random view) drawn per image
            and step (the reference: 1). More pairs per decoded image is cheap on a CPU, where
            loading faces costs more than encoding 27 x 27 views.
        fixation_jitter: stages localizer / refiner: the jitter's step in whole pixels (5).
        jitter_mode: ``"walk"`` (default, the reference): one fixation grid per batch slot
            random-walks by +-``fixation_jitter`` px per step and is reset to the nominal grid
            at every epoch start (:class:`~wherewhat.methods.worldcomp2d.parts.FixationWalk`,
            bounded by ``steps_per_epoch * fixation_jitter`` px); views are cut at the walked
            points and the localizer is given the *nominal* grid. ``"iid"``: each image's
            fixations move by i.i.d. offsets in +-``fixation_jitter`` around the grid, drawn
            afresh per step, and the localizer is given the jittered positions.
        code_bank: stage localizer: encode every training face once in this many augmentations
            (the data's draws of epochs 0 .. K-1) at the nominal fixations before training
            (:func:`~wherewhat.methods.worldcomp2d.model.build_code_bank`), then train the
            localizer on ``codes[index, epoch % K]``: an epoch costs the MLP only. Needs the
            fast data path (``data.batched_views: true``). With the walk jitter each face and
            augmentation is cut at the grid plus an offset drawn from the walk's marginal
            (:func:`~wherewhat.methods.worldcomp2d.parts.walk_offsets`, seeded by
            ``bank_seed``) and the localizer is told the nominal grid; with ``iid`` at the grid
            plus i.i.d. offsets in +-``fixation_jitter`` px (one draw per face and
            augmentation), and the localizer is told those positions. ``None`` (default):
            encode every step.
        bank_seed: seed of the bank's walk offsets.
        channels_last: run the encoder on ``channels_last`` observations and weights (faster on
            CPU: 1 thread, 1,024 views, about 15 % off an encoder step); numerics equal up to
            float round-off.
        refiner_noise: stage refiner: views are centred on the coarse prediction plus uniform
            noise in +-``refiner_noise`` px per axis (the reference: integer offsets in +-5).
        refiner_landmarks_per_step: stage refiner: train on this many randomly chosen landmarks
            per face and step (global torch RNG, so seeded and restored on resume) instead of
            all K; the refiner is one net shared by all landmarks, so this cuts a step's cost by
            about K / this without biasing the loss. ``None``: all. Validation, test and
            inference always use every landmark.
    """

    model: WorldComp2D

    def __init__(
        self,
        model: WorldComp2D | None = None,
        stage: Stage = "encoder",
        init_from: str | None = None,
        lr: float | None = None,
        lr_decay: float = 0.1,
        lr_decay_at: float | None = 0.5,
        temperature: float = 0.05,
        positive_radius: float = 53.0,
        proximity_decay: float = 0.025,
        views_per_image: int = 1,
        fixation_jitter: int = 5,
        jitter_mode: Literal["walk", "iid"] = "walk",
        code_bank: int | None = None,
        bank_seed: int = 0,
        channels_last: bool = False,
        refiner_noise: float = 5.0,
        refiner_landmarks_per_step: int | None = None,
    ):
        super().__init__()
        self.model = build_module(model if model is not None else WorldComp2D(), WorldComp2D)
        num_landmarks = self.model.num_landmarks
        if stage not in STAGES:
            raise ConfigError(f"model.stage must be one of {STAGES}, got {stage!r}")
        if stage == "refiner" and self.model.refiner is None:
            raise ConfigError("stage 'refiner' needs a WorldComp2D built with refiner: true")
        if views_per_image < 1:
            raise ConfigError(f"model.views_per_image must be >= 1, got {views_per_image}")
        if lr_decay_at is not None and not 0.0 < lr_decay_at <= 1.0:
            raise ConfigError(f"model.lr_decay_at must be in (0, 1] or null, got {lr_decay_at}")
        if jitter_mode not in ("walk", "iid"):
            raise ConfigError(f"model.jitter_mode must be 'walk' or 'iid', got {jitter_mode!r}")
        if code_bank is not None and code_bank < 1:
            raise ConfigError(f"model.code_bank must be >= 1 or null, got {code_bank}")
        if refiner_noise < 0:
            raise ConfigError(f"model.refiner_noise must be >= 0, got {refiner_noise}")
        if refiner_landmarks_per_step is not None and not (
            1 <= refiner_landmarks_per_step <= num_landmarks
        ):
            raise ConfigError(
                f"model.refiner_landmarks_per_step must be in [1, {num_landmarks}] or null, got "
                f"{refiner_landmarks_per_step}"
            )
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model"] = module_spec(self.model)
        # The refiner is used only once it has been trained (stage refiner).
        self.model.use_refiner = stage == "refiner"
        if channels_last:
            self.model.channels_last = True
            self.model.encoder.to(memory_format=torch.channels_last)
        self.stage = stage
        self.contrastive = PWConLoss(temperature)
        for part in self.frozen_parts():
            part.requires_grad_(False)
        self.val_nme = LandmarkNME(threshold=_FAILURE_THRESHOLD)
        self.val_nme_coarse = LandmarkNME(threshold=_FAILURE_THRESHOLD)
        self.test_nme = LandmarkNME(threshold=_FAILURE_THRESHOLD)
        self.test_nme_coarse = LandmarkNME(threshold=_FAILURE_THRESHOLD)
        self.loaded_parts: tuple[str, ...] = ()
        self.walk: FixationWalk | None = None
        self.bank: CodeBank | None = None
        self._resumed = False
        self._saved_walk: dict[str, Any] | None = None
        self.example_input_array = torch.zeros(
            1, self.model.image_channels, self.model.crop_size, self.model.crop_size
        )
        self.train()  # puts the frozen parts in eval mode

    # -- parts ---------------------------------------------------------------------------------
    def part(self, name: str) -> nn.Module | None:
        """``"encoder"``, ``"localizer"`` or ``"refiner"`` of the model (``None`` if absent)."""
        return getattr(self.model, name)

    def trained_part(self) -> nn.Module:
        part = self.part(self.stage)
        assert part is not None
        return part

    def frozen_parts(self) -> list[nn.Module]:
        """Every model part except the one this stage trains (earlier stages' and unused ones)."""
        parts = (self.part(name) for name in STAGES if name != self.stage)
        return [part for part in parts if part is not None]

    def train(self, mode: bool = True) -> WorldComp2DTask:
        super().train(mode)
        for part in self.frozen_parts():
            part.eval()  # frozen BatchNorm keeps its statistics
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning restores per-module modes itself (it does not call train()); re-assert.
        if self.training:
            self.train()
        saved, self._saved_walk = self._saved_walk, None
        if saved is not None and saved["epoch"] == self.current_epoch:
            # Resumed in the middle of this epoch: the walk goes on from where it was.
            self.reset_walk()
            assert self.walk is not None
            self.walk.offset = saved["offset"].to(self.model.fixations)
            self.walk.steps = int(saved["steps"])
        else:
            self.reset_walk()

    def reset_walk(self) -> None:
        """Put the fixation walk back on the nominal grid (every epoch start, as the reference)."""
        self.walk = FixationWalk(self.model.fixations, self.hparams.fixation_jitter)

    def load_stage_weights(self, path: str | Path) -> tuple[str, ...]:
        """Load the parts :func:`parts_loaded_from` names from checkpoint ``path``; returns them.

        Only trusted files: a Lightning checkpoint is a pickle.
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: model.init_from checkpoint not found")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        hyper_parameters = checkpoint.get("hyper_parameters", {})
        checkpoint_stage = hyper_parameters.get("stage")
        if checkpoint_stage is None or "state_dict" not in checkpoint:
            raise ConfigError(
                f"{path}: not a WorldComp2DTask checkpoint (expected hyper_parameters.stage and "
                "a state_dict)"
            )
        names = parts_loaded_from(checkpoint_stage, self.stage)
        # No model spec: a checkpoint from before tasks took their model; its weights are
        # checked when loaded below.
        saved_model = hyper_parameters.get("model")
        differences = setting_differences(
            saved_model, module_spec(self.model), labels=("checkpoint", "now")
        )
        if saved_model is not None and differences:
            raise ConfigError(
                f"{path}: stage {checkpoint_stage!r} was trained with another model; use the same "
                f"model options as stage {checkpoint_stage!r}: {'; '.join(differences)}"
            )
        state = checkpoint["state_dict"]
        for name in names:
            part = self.part(name)
            prefix = f"model.{name}."
            weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if part is None or not weights:
                raise ConfigError(f"{path}: has no {name} weights (or this model has no {name})")
            try:
                part.load_state_dict(weights)
            except RuntimeError as error:
                raise ConfigError(
                    f"{path}: the {name} weights do not fit this model; use the same model "
                    f"options as stage {checkpoint_stage!r}.\n{error}"
                ) from None
        self.loaded_parts = names
        return names

    # -- Lightning hooks -----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit" or self.stage != "localizer":
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        points_of = getattr(datamodule, "train_crop_points", None)
        if callable(points_of):
            self.model.localizer.set_mean_shape(points_of())
        elif not self.model.localizer.mean_shape.abs().sum() > 0:
            raise ConfigError(
                "stage 'localizer' needs the mean training shape: use a data module with "
                "train_crop_points() (FaceLandmarkDataModule) or call "
                "model.localizer.set_mean_shape(points) before fitting"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.walk is not None:  # so that a run resumed mid-epoch walks on exactly
            checkpoint["fixation_walk"] = {
                "epoch": self.current_epoch,
                "offset": self.walk.offset.detach().cpu().clone(),
                "steps": self.walk.steps,
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resumed = True  # the resumed weights win over init_from
        self._saved_walk = checkpoint.get("fixation_walk")

    def on_fit_start(self) -> None:
        # After the resume restore and before the first step: init_from only for a fresh run.
        if self.hparams.init_from and not self._resumed and not self.loaded_parts:
            self.load_stage_weights(self.hparams.init_from)
        if self.stage != "encoder" and not self._resumed and "encoder" not in self.loaded_parts:
            rank_zero_warn(
                f"WorldComp2D stage {self.stage!r} without model.init_from: the frozen encoder "
                "is untrained (random)"
            )
        if self.stage == "localizer" and self.hparams.code_bank:
            train_set = getattr(getattr(self.trainer, "datamodule", None), "train_set", None)
            if not isinstance(train_set, FaceCanvasItems):
                raise ConfigError(
                    "model.code_bank needs the fast data path: set data.init_args.batched_views "
                    "true (FaceLandmarkDataModule)"
                )
            if self.bank is None or self.bank.num_augmentations != self.hparams.code_bank:
                self.build_bank(train_set)  # (a bank handed over already holds these codes)

    def build_bank(self, items: FaceCanvasItems, batch_size: int | None = None) -> CodeBank:
        """Encode ``items`` once in ``code_bank`` augmentations (see ``code_bank``); with the
        walk jitter each face and augmentation is cut at a grid drawn from the walk's marginal
        over an epoch of ``len(items) // batch_size`` steps (``batch_size``: the data module's)."""
        offsets = None
        jitter = self.hparams.fixation_jitter
        shape = (len(items), self.hparams.code_bank, len(self.model.fixations))
        generator = torch.Generator().manual_seed(int(self.hparams.bank_seed))
        iid = self.hparams.jitter_mode == "iid"
        if jitter > 0 and iid:
            offsets = torch.randint(-jitter, jitter + 1, (*shape, 2), generator=generator).float()
        elif jitter > 0:
            datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
            batch = batch_size or getattr(datamodule, "batch_size", None) or 1
            offsets = walk_offsets(shape, jitter, max(1, len(items) // batch), generator)
        self.bank = build_code_bank(
            self.model, items, self.hparams.code_bank, offsets=offsets, tell_offsets=iid
        )
        return self.bank

    # -- inference -----------------------------------------------------------------------------
    def forward(self, crops: Tensor) -> Tensor:
        """Face crops ``(B, C, S, S)`` in [0, 1] -> landmarks ``(B, K, 2)`` in crop pixels."""
        return self.model(crops)

    def export_model(self) -> nn.Module:
        """The whole inference path (crop -> fixations -> encoder -> localizer [-> refiner])
        as a copy in eval mode; the refiner is on after the refiner stage."""
        return copy.deepcopy(self.model).eval()

    # -- losses --------------------------------------------------------------------------------
    def _observer(self, batch: dict[str, Tensor], image: Tensor | None):
        """``centres (B, N, 2) -> observations``: of the normalised crops ``image``, or, for a
        fast-path batch (``canvas``), sampled from the canvases in one ``grid_sample``."""
        canvas = canvas_batch(batch)
        if canvas is None or image is not None:
            assert image is not None
            return lambda centres: self.model.observe(image, centres)
        model = self.model

        def observe(centres: Tensor) -> Tensor:
            return sample_crop_views(
                canvas[0],
                canvas[1],
                centres,
                model.view_sides,
                model.view_size,
                model.crop_size,
                model.mean,
                model.std,
            )

        return observe

    def _contrastive_loss(
        self, image, points: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """PWConLoss of ``views_per_image`` (anchor, random) pairs per image; ``image`` is the
        normalised crops or an observer (:meth:`_observer`)."""
        observe = image if callable(image) else (lambda c: self.model.observe(image, c))
        repeats = self.hparams.views_per_image
        batch = points.shape[0]
        repeated = points.repeat_interleave(repeats, dim=0)  # pair r of image b is row b*R + r
        views = sample_contrastive_views(
            repeated,
            (self.model.crop_size, self.model.crop_size),
            generator,
            radius=self.hparams.positive_radius,
            decay=self.hparams.proximity_decay,
        )
        centres = views.centres.reshape(batch, repeats * 2, 2)
        codes = self.model.encode(observe(centres))  # (B, 2R, D)
        return self.contrastive(codes.reshape(batch * repeats, 2, -1), views.weights)

    def _jittered_fixations(self, batch: int) -> tuple[Tensor, Tensor]:
        """(where the views are cut, what the localizer is told), both ``(B, F, 2)``."""
        if self.hparams.jitter_mode == "iid":
            seen = jitter_fixations(self.model.fixations, batch, self.hparams.fixation_jitter)
            return seen, seen
        if self.walk is None or self.walk.nominal.device != self.model.fixations.device:
            self.reset_walk()
        assert self.walk is not None
        seen = self.walk.step(batch)
        return seen, self.model.fixations.expand(batch, -1, -1)

    def _localizer_loss(
        self, image, points: Tensor, fixations: Tensor, told: Tensor | None = None
    ) -> Tensor:
        """MSE of the localizer on codes cut at ``fixations``, told ``told`` (default the same
        positions); ``image``: normalised crops or an observer (:meth:`_observer`)."""
        observe = image if callable(image) else (lambda c: self.model.observe(image, c))
        with torch.no_grad():  # frozen encoder
            codes = self.model.encode(observe(fixations))
        told = fixations if told is None else told
        predicted = self.model.localizer.forward_normalized(codes, told)
        target = pixel_to_normalized(points.to(predicted.dtype), self.model.crop_hw)
        return F.mse_loss(predicted, target)

    def _refiner_loss(
        self,
        image: Tensor,
        points: Tensor,
        coarse: Tensor,
        noise: float,
        landmarks_per_image: int | None = None,
    ) -> Tensor:
        centres = coarse
        if noise > 0:
            centres = coarse + (torch.rand_like(coarse) * 2 - 1) * noise
        return self.model.refiner.loss(image, centres, points, landmarks_per_image)

    # -- steps ---------------------------------------------------------------------------------
    def _banked_localizer_loss(self, index: Tensor) -> Tensor:
        """Localizer MSE on the bank's codes of faces ``index`` in this epoch's augmentation."""
        assert self.bank is not None
        codes, points = self.bank.lookup(index, self.current_epoch)
        told = self.bank.told_positions(index, self.current_epoch)
        predicted = self.model.localizer.forward_normalized(codes, told)
        target = pixel_to_normalized(points.to(predicted.dtype), self.model.crop_hw)
        return F.mse_loss(predicted, target)

    def training_loss(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """This stage's training loss on ``batch`` (no logging)."""
        if self.stage == "localizer" and self.bank is not None:
            return self._banked_localizer_loss(batch["index"])
        canvas = canvas_batch(batch)
        if canvas is not None:  # fast path: no crop unless the stage needs a whole one
            points = batch["points"]
            image = None
            if self.stage == "refiner":
                crops = crops_from_canvas(canvas[0], canvas[1], self.model.crop_size)
                image = self.model.normalize(crops)
        else:
            images, points = batch_images_and_points(batch, batch_idx)
            image = self.model.normalize(images)
        observe = self._observer(batch, image)
        if self.stage == "encoder":
            return self._contrastive_loss(observe, points)
        if self.stage == "localizer":
            seen, told = self._jittered_fixations(len(points))
            return self._localizer_loss(observe, points, seen, told)
        assert image is not None
        with torch.no_grad():
            seen, told = self._jittered_fixations(len(points))
            codes = self.model.encode(observe(seen))
            coarse = self.model.localizer(codes, told)
        return self._refiner_loss(
            image,
            points,
            coarse,
            self.hparams.refiner_noise,
            self.hparams.refiner_landmarks_per_step,
        )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.training_loss(batch, batch_idx)
        size = len(batch["index"]) if "index" in batch else len(batch["points"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        return loss

    def _evaluate(self, batch: dict[str, Tensor], batch_idx: int, split: str) -> None:
        images, points = batch_images_and_points(batch, batch_idx)
        image = self.model.normalize(images)
        if self.stage == "encoder":
            # Fixed draws per batch index: comparable from one validation to the next. The
            # generator lives where the draws are made (a CUDA op needs a CUDA generator).
            generator = torch.Generator(device=image.device).manual_seed(batch_idx)
            loss = self._contrastive_loss(image, points, generator)
        else:
            coarse = self.model.localize(image)
            if self.stage == "localizer":
                grid = self.model.fixations.expand(len(image), -1, -1)
                loss = self._localizer_loss(image, points, grid)
                refined = coarse
            else:
                loss = self._refiner_loss(image, points, coarse, noise=0.0)
                refined = self.model.refiner(image, coarse, self.model.crop_hw)
            affine = batch["affine"]
            target = batch.get("original_points")
            if target is None:
                target = uncrop_points(points, affine)
            metrics = {
                "val": (self.val_nme, self.val_nme_coarse),
                "test": (self.test_nme, self.test_nme_coarse),
            }[split]
            metrics[0].update(uncrop_points(refined, affine), target)
            if self.stage == "refiner":
                metrics[1].update(uncrop_points(coarse, affine), target)
        self.log(
            f"{split}/loss",
            loss,
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            batch_size=len(images),
            sync_dist=True,
        )

    def _log_nme(self, split: str, metric: LandmarkNME, coarse: LandmarkNME) -> None:
        if self.stage == "encoder":
            return
        result = metric.compute()
        count = len(metric.per_face())
        self.log(f"{split}/nme", result["nme"], prog_bar=True)
        self.log_dict(
            {
                f"{split}/fr10": result["fr"],
                f"{split}/auc10": result["auc"],
                f"{split}/num_faces": float(count),
            }
        )
        metric.reset()
        if self.stage == "refiner":
            self.log(f"{split}/nme_coarse", coarse.compute()["nme"])
            coarse.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_nme("val", self.val_nme, self.val_nme_coarse)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._log_nme("test", self.test_nme, self.test_nme_coarse)

    def predict_step(self, batch: dict[str, Tensor] | Tensor, batch_idx: int) -> dict[str, Tensor]:
        """:func:`~wherewhat.data.face_crops.prediction_record` of the batch's crops."""
        images = batch["image"] if isinstance(batch, dict) else batch
        return prediction_record(self.model(images), batch)

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> Optimizer | dict[str, Any]:
        lr = self.hparams.lr if self.hparams.lr is not None else _DEFAULT_LR[self.stage]
        optimizer = torch.optim.Adam(self.trained_part().parameters(), lr=lr)
        return step_decay(
            optimizer,
            self.hparams.lr_decay,
            self.hparams.lr_decay_at,
            self.trainer.estimated_stepping_batches,
        )
