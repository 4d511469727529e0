"""``wherewhat fit|validate|test|predict``: LightningCLI with run directories and safe training.

Any ``LightningModule`` / ``LightningDataModule`` is named by ``class_path`` in the YAML::

    model:
      class_path: wherewhat.tasks.digits.DigitClassifierTask
      init_args: {lr: 0.002}
    data:
      class_path: wherewhat.data.digits.DigitsDataModule

On top of plain LightningCLI every run gets:

- its own directory ``runs/<name>/<YYYYmmdd-HHMMSS>/`` (see :mod:`wherewhat.training.run_dir`)
  with the resolved ``config.yaml``, CSV + TensorBoard logs and ``checkpoints/`` (``last.ckpt``
  plus the best by ``--checkpoint.monitor``); ``--run.name`` / ``--run.root`` / ``--run.dir``;
- ``seed_everything`` (default 0; ``--seed_everything N``);
- atomic checkpoint files (:class:`~wherewhat.training.checkpoint_io.AtomicCheckpointIO`);
- exact resume with ``--resume RUN_DIR`` (continues in ``RUN_DIR``: one ``csv/metrics.csv``,
  the resume's config saved as ``config-N.yaml``) or ``--ckpt_path FILE`` (a new run folder):
  RNG states (:class:`~wherewhat.training.callbacks.RandomStateCheckpoint`) and the position
  inside the epoch (:class:`~wherewhat.data.loader.ResumableDataLoader`) are restored, and
  ``last.ckpt`` always holds the final step (:class:`~wherewhat.training.callbacks.LastCheckpoints`);
- a stop with step / batch / value on a non-finite loss (``--run.skip_nonfinite_loss true`` to
  skip and count such batches instead);
- progress for the whole run (``--run.progress auto|rich|tqdm|lines|none``): on a terminal a
  rich bar with the run's step / total and ETA; when output is a file or ``CI=true`` plain lines
  (step / total, elapsed, ETA, loss, latest validation metric) every ``--run.progress_every``
  seconds and at every 10 % (:mod:`wherewhat.training.progress`);
- ``curves.png`` in the run directory at the end of ``fit``: loss and validation metrics against
  step from ``csv/metrics.csv`` (:mod:`wherewhat.training.plot`; ``wherewhat plot RUN_DIR``
  redraws it).

Scaling out: ``--trainer.strategy ddp --trainer.accelerator cpu --trainer.devices N`` runs N
processes on one machine (gloo on CPU, nccl on GPUs); Lightning starts them itself. Across
machines start one process per device with ``torchrun --nnodes M --nproc-per-node N
--rdzv-id JOB --rdzv-endpoint HOST:PORT -m wherewhat fit ... --trainer.num_nodes M
--trainer.devices N`` or under SLURM with ``srun`` (``--ntasks-per-node N``); Lightning reads the
ranks from the environment (``TorchElasticEnvironment`` / ``SLURMEnvironment``) and all ranks
write to the same run directory (``slurm-<job>`` / ``torchrun-<rdzv id>`` or ``--run.dir``),
which must be on a shared file system.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jsonargparse
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import (
    Callback,
    ModelCheckpoint,
    ProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO

from wherewhat.errors import CheckpointError, ConfigError, DataFormatError
from wherewhat.io import atomic_torch_save
from wherewhat.training.callbacks import (
    LastCheckpoints,
    NonFiniteLossGuard,
    RandomStateCheckpoint,
)
from wherewhat.training.checkpoint_checks import (
    LIGHTNING_CKPT_NAMES,
    check_checkpoint_model,
    model_options,
    state_dict_mismatch,
)
from wherewhat.training.checkpoint_file import read_checkpoint
from wherewhat.training.checkpoint_io import AtomicCheckpointIO
from wherewhat.training.config_catalog import resolve_config_names
from wherewhat.training.config_files import BASE_KEY, check_config_files, expand_config_bases
from wherewhat.training.plot import METRICS_CSV, write_curves
from wherewhat.training.progress import ProgressLines, RunRichProgressBar, RunTQDMProgressBar
from wherewhat.training.run_dir import (
    RunCSVLogger,
    is_rank_zero_process,
    latest_run_config,
    resolve_run_dir,
)

__all__ = [
    "SUBCOMMANDS",
    "RunOptions",
    "WherewhatCLI",
    "expand_resume_args",
    "run_lightning_cli",
]

SUBCOMMANDS = ("fit", "validate", "test", "predict")
DEFAULT_SEED = 0
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
# Write null values too, so the saved config is complete (jsonargparse renamed the option in 4.49).
_KEEP_NONE = (
    {"skip_unset": False}
    if tuple(int(p) for p in jsonargparse.__version__.split(".")[:2]) >= (4, 49)
    else {"skip_none": False}
)


@dataclass
class RunOptions:
    """Where a run writes and how it reacts to trouble.

    Args:
        name: folder under ``root`` (default: the config file's stem).
        root: parent folder of all runs.
        dir: exact run directory instead of ``root/name/<time>`` (must be new or empty); use it
            for multi-node jobs whose ranks cannot agree on a time stamp.
        progress: ``auto`` (a rich bar on a terminal; plain ``lines`` when output is not a
            terminal or CI=true), ``rich``, ``tqdm``, ``lines`` or ``none``. The bars show the
            current epoch plus the run's step / total and ETA; the lines step / total,
            elapsed, ETA, loss and the latest validation metric.
        progress_every: seconds between two plain progress lines (a line is also printed at
            every 10 % of the run).
        skip_nonfinite_loss: skip (and count and report) batches whose loss is NaN/inf instead of
            stopping with an error.
    """

    name: str | None = None
    root: str = "runs"
    dir: str | None = None
    progress: Literal["auto", "rich", "tqdm", "lines", "none"] = "auto"
    progress_every: float = 30.0
    skip_nonfinite_loss: bool = False


_FIT_DESCRIPTION = (
    "Runs the full optimization routine. Writes runs/<name>/<time>/ (config.yaml, csv/, "
    "tensorboard/, checkpoints/last.ckpt and best). Continue a run in its folder with --resume "
    "RUN_DIR (its newest config and last checkpoint; later options still override), or from a "
    "checkpoint in a new folder with --ckpt_path FILE."
)


def expand_resume_args(args: Sequence[str]) -> list[str]:
    """Replace ``--resume RUN_DIR`` by that run's config and last checkpoint.

    ``wherewhat fit --resume runs/digits/20250101-120000`` becomes ``fit --config <run>/config.yaml
    --ckpt_path <run>/checkpoints/last.ckpt --run.name digits --run.dir <run>`` (put before the
    other arguments, so later overrides still win): the run continues in its own folder (see
    :mod:`wherewhat.training.run_dir`). The config is the run's newest (``config-N.yaml`` of an
    earlier resume, else ``config.yaml``). With another subcommand the run folder's config and
    checkpoint are used in a new run folder (``--run.dir null``). ``--resume FILE.ckpt`` becomes
    ``--ckpt_path FILE.ckpt``.
    """
    args = list(args)
    target: str | None = None
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--resume":
            if index + 1 >= len(args):
                raise ConfigError("--resume needs a run directory or a checkpoint file")
            target = args[index + 1]
            index += 2
            continue
        if arg.startswith("--resume="):
            target = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        index += 1
    if target is None:
        return args
    path = Path(target)
    if path.is_file():
        return rest + ["--ckpt_path", str(path)]
    if not path.is_dir():
        raise ConfigError(f"{path}: --resume expects a run directory or a .ckpt file; not found")
    config, checkpoint = latest_run_config(path), path / LAST_CHECKPOINT
    for needed in (config, checkpoint):
        if not needed.is_file():
            raise ConfigError(
                f"{needed}: missing; --resume needs a run directory written by wherewhat"
            )
    head, subcommand_args = (rest[:1], rest[1:]) if rest and rest[0] in SUBCOMMANDS else ([], rest)
    resume = [
        "--config",
        str(config),
        "--ckpt_path",
        str(checkpoint),
        "--run.name",
        path.parent.name,
        "--run.dir",  # fit continues in the run's folder; the others write a new one
        str(path) if head in ([], ["fit"]) else "null",
    ]
    return head + resume + subcommand_args


def _config_stem(config: Any) -> str | None:
    """Run name from the last config file: its stem, or for a method's layered configs
    (a folder holding ``default.yaml``) ``<folder>`` / ``<folder>_<stem>``."""
    paths = config.get("config") if hasattr(config, "get") else None
    if not paths:
        return None
    last = paths[-1] if isinstance(paths, list) else paths
    text = str(getattr(last, "relative", None) or getattr(last, "absolute", None) or last)
    path = Path(text)
    if (path.parent / "default.yaml").is_file() and path.parent.name:
        return path.parent.name if path.stem == "default" else f"{path.parent.name}_{path.stem}"
    return path.stem or None


def _on_ci_or_not_a_terminal() -> bool:
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return ci or not sys.stdout.isatty()


class WherewhatCLI(LightningCLI):
    """LightningCLI for every wherewhat task; see the module docstring for what it adds."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any):
        self.run_dir: Path | None = None
        self.owns_run_dir = False
        kwargs.setdefault("model_class", LightningModule)
        # No datamodule class: `data` is then optional (a task may bring its own dataloaders)
        # and may be any LightningDataModule subclass.
        kwargs.setdefault("datamodule_class", None)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault(
            "parser_kwargs",
            {
                "prog": "wherewhat",
                "fit": {"description": _FIT_DESCRIPTION},
            },
        )
        kwargs.setdefault("seed_everything_default", DEFAULT_SEED)
        kwargs.setdefault("save_config_callback", None)  # written by this class into the run dir
        super().__init__(args=list(args) if args is not None else None, run=run, **kwargs)

    # -- parser --------------------------------------------------------------------------------
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunOptions, "run")
        # Read by expand_config_bases before parsing; declared so that a delta config parses.
        parser.add_argument(
            f"--{BASE_KEY}", type=str | None, default=None,
            help="(in a config file) the config this one changes, relative to its folder",
        )  # fmt: skip
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:03d}-{step:06d}",
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # Same as LightningCLI's minus the warning about args + sys.argv: `wherewhat` always
        # passes args explicitly (after expanding --resume). A bad option is a ConfigError (one
        # block from the `wherewhat` command), not jsonargparse's 70-line usage dump.
        self._model_options = model_options(args)
        for each in (parser, *getattr(parser._subcommands_action, "_name_parser_map", {}).values()):
            each.exit_on_error = False
        try:
            self.config = (
                parser.parse_object(args) if isinstance(args, dict) else parser.parse_args(args)
            )
        except jsonargparse.ArgumentError as error:
            subcommand = args[0] if isinstance(args, list) and args else "fit"
            raise ConfigError(
                str(error).strip(),
                hint=f"`wherewhat {subcommand} --help` lists every option and its type",
            ) from error

    # -- checkpoints ---------------------------------------------------------------------------
    def _parse_ckpt_path(self) -> None:
        """LightningCLI's: the checkpoint's hyper-parameters replace the config's model settings.
        Before that, the file is read safely (``weights_only=True``, errors that say what is
        wrong) and must be of the config's model class, and no ``--model...`` option may
        contradict it (the checkpoint would silently win)."""
        self._checkpoint: dict[str, Any] | None = None
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if config.get("weights_only") is None and "weights_only" in config:
            config["weights_only"] = True  # what torch does by default, stated
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or str(ckpt_path) in LIGHTNING_CKPT_NAMES:
            return
        path = Path(ckpt_path)
        checkpoint = read_checkpoint(path, weights_only=config.get("weights_only") is not False)
        self._checkpoint = checkpoint
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        check_checkpoint_model(path, config.get("model"), hparams, self._model_options)
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def after_instantiate_classes(self) -> None:
        """The checkpoint's weights must fit the model built from the config (same names and
        shapes), checked here so a mismatch is one error instead of Lightning's traceback."""
        checkpoint, self._checkpoint = getattr(self, "_checkpoint", None), None
        if checkpoint is None or not getattr(self.model, "strict_loading", True):
            return
        problems = state_dict_mismatch(self.model.state_dict(), checkpoint["state_dict"])
        if problems:
            path = self._subconfig().get("ckpt_path")
            raise CheckpointError(
                path,
                "its weights do not fit the model built from the config: " + "; ".join(problems),
                hint="use the config the checkpoint was trained with (its run folder's "
                "config.yaml) or a checkpoint of this model",
            )

    # -- run directory -------------------------------------------------------------------------
    def _subconfig(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        config = self._subconfig()
        run = config["run"]
        name = run.name or _config_stem(config) or self._model_name(config)
        run.name = name
        continuing = self.subcommand == "fit" and _continues_run(run.dir, config.get("ckpt_path"))
        self.run_dir, self.owns_run_dir = resolve_run_dir(
            run.root, name, run.dir, continuing=continuing
        )
        # The saved config is complete (bases merged in), so it must not name a base again.
        config[BASE_KEY] = None
        if self.owns_run_dir:
            saved = config
            if continuing:  # config-N.yaml: this resume's settings, re-runnable from scratch
                saved = config.clone()
                saved["ckpt_path"], saved["run"].dir = None, None
            self._parser(self.subcommand).save(
                saved, _free_name(self.run_dir / "config.yaml"), multifile=False, **_KEEP_NONE
            )
            verb = "continuing in" if continuing else "run directory"
            _say(f"wherewhat: {verb} {self.run_dir}")
        if continuing:  # its checkpoints/ holds the run's own earlier checkpoints
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")

    @staticmethod
    def _model_name(config: Any) -> str:
        model = config.get("model")
        class_path = getattr(model, "class_path", None) if model is not None else None
        return class_path.rsplit(".", 1)[-1].lower() if class_path else "run"

    # -- trainer -------------------------------------------------------------------------------
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        assert self.run_dir is not None
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        run: RunOptions = self._get(self.config_init, "run")

        extra = [
            self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys
        ]
        if trainer_config.get("enable_checkpointing") is False:
            extra = [c for c in extra if not isinstance(c, ModelCheckpoint)]
        for callback in extra:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = os.path.realpath(self.run_dir / "checkpoints")

        user_callbacks = _as_list(trainer_config.get("callbacks"))
        harness: list[Callback] = [
            RandomStateCheckpoint(),
            LastCheckpoints(),
            NonFiniteLossGuard(skip=run.skip_nonfinite_loss),
        ]
        progress = self._progress_bar(run, trainer_config, user_callbacks + extra)
        if not isinstance(progress, ProgressBar):  # none, or plain lines (not a Lightning bar)
            if not any(isinstance(c, ProgressBar) for c in user_callbacks + extra):
                trainer_config["enable_progress_bar"] = False
        if progress is not None:
            harness.append(progress)
        trainer_config["callbacks"] = user_callbacks + harness

        if trainer_config.get("logger") in (None, True):
            trainer_config["logger"] = [
                RunCSVLogger(self.run_dir),  # csv/metrics.csv, continued by --resume
                TensorBoardLogger(
                    self.run_dir, name="tensorboard", version="", default_hp_metric=False
                ),
            ]
        if trainer_config.get("default_root_dir") is None:
            trainer_config["default_root_dir"] = str(self.run_dir)
        plugins = _as_list(trainer_config.get("plugins"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        trainer_config["plugins"] = plugins
        return self._instantiate_trainer(trainer_config, extra)

    @staticmethod
    def _progress_bar(
        run: RunOptions, trainer_config: dict[str, Any], callbacks: list[Callback]
    ) -> Callback | None:
        if trainer_config.get("enable_progress_bar") is False:
            return None
        if any(isinstance(c, ProgressBar) for c in callbacks):
            return None
        choice = run.progress
        if choice == "auto":
            choice = "lines" if _on_ci_or_not_a_terminal() else "rich"
        if choice == "rich":
            return RunRichProgressBar()
        if choice == "tqdm":
            return RunTQDMProgressBar()
        if choice == "lines":
            if not run.progress_every > 0:
                raise ConfigError(
                    f"run.progress_every: expected a positive number of seconds, "
                    f"got {run.progress_every}"
                )
            return ProgressLines(every_seconds=run.progress_every)
        return None

    # -- subcommands ---------------------------------------------------------------------------
    def predict(self, **kwargs: Any) -> Any:
        """``trainer.predict`` that also saves the predictions to ``<run>/predictions.pt``."""
        predictions = self.trainer.predict(**kwargs)
        if predictions is not None and self.owns_run_dir and self.trainer.is_global_zero:
            target = self.run_dir / "predictions.pt"
            atomic_torch_save(predictions, target)
            _say(f"wherewhat: predictions saved to {target}")
        return predictions

    def after_fit(self) -> None:
        checkpoint = self.trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint):
            lines = [f"wherewhat: run directory {self.run_dir}"]
            if checkpoint.last_model_path:
                step = self.trainer.global_step  # LastCheckpoints: last is the final step
                lines.append(f"  last checkpoint (step {step}): {checkpoint.last_model_path}")
            if checkpoint.best_model_path:
                lines.append(f"  best checkpoint: {checkpoint.best_model_path}")
            _say("\n".join(lines))
        self._write_curves()

    def _write_curves(self) -> None:
        """``curves.png`` from the run's ``csv/metrics.csv`` (when the CSV logger wrote one); a
        plot that fails is reported, never fails the finished run."""
        if not (self.owns_run_dir and self.trainer.is_global_zero):
            return
        if not (self.run_dir / METRICS_CSV).is_file():
            return
        try:
            path = write_curves(self.run_dir)
        except (DataFormatError, OSError, ValueError) as error:
            _say(f"  curves: not drawn ({error})")
        else:
            _say(f"  curves: {path}")


def _continues_run(run_dir: str | None, ckpt_path: Any) -> bool:
    """``--run.dir D --ckpt_path D/...``: resuming run ``D`` in its own folder (what ``--resume D``
    expands to)."""
    if run_dir is None or not isinstance(ckpt_path, str | os.PathLike):
        return False
    folder, checkpoint = Path(run_dir).resolve(), Path(ckpt_path).resolve()
    return folder in checkpoint.parents


def _free_name(path: Path) -> Path:
    """``path``, or ``stem-1.suffix``, ``stem-2.suffix``... if taken (a requeued job's dir)."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate


def _say(message: str) -> None:
    if is_rank_zero_process():
        print(message, file=sys.stderr, flush=True)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def run_lightning_cli(args: Sequence[str]) -> WherewhatCLI:
    """Run ``wherewhat <subcommand> ...`` (args include the subcommand) and return the CLI."""
    expanded = expand_config_bases(resolve_config_names(expand_resume_args(args)))
    check_config_files(expanded)
    return WherewhatCLI(args=expanded)
