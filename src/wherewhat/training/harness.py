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
- exact resume with ``--ckpt_path .../last.ckpt`` or ``--resume RUN_DIR``: RNG states
  (:class:`~wherewhat.training.callbacks.RandomStateCheckpoint`) and the position inside the
  epoch (:class:`~wherewhat.data.loader.ResumableDataLoader`) are restored;
- a stop with step / batch / value on a non-finite loss (``--run.skip_nonfinite_loss true`` to
  skip and count such batches instead);
- a rich progress bar on a terminal (``--run.progress auto|rich|tqdm|none``; ``auto`` shows none
  when output is not a terminal or ``CI=true``).

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jsonargparse
import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import (
    Callback,
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO

from wherewhat.errors import ConfigError
from wherewhat.io import atomic_torch_save
from wherewhat.training.callbacks import NonFiniteLossGuard, RandomStateCheckpoint
from wherewhat.training.checkpoint_io import AtomicCheckpointIO
from wherewhat.training.run_dir import is_rank_zero_process, resolve_run_dir

__all__ = [
    "SUBCOMMANDS",
    "RunOptions",
    "WherewhatCLI",
    "expand_config_bases",
    "expand_resume_args",
    "load_layered_config",
    "run_lightning_cli",
]

SUBCOMMANDS = ("fit", "validate", "test", "predict")
BASE_KEY = "base"
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
        progress: progress bar: ``auto`` (rich on a terminal, none otherwise or when CI=true),
            ``rich``, ``tqdm`` or ``none``.
        skip_nonfinite_loss: skip (and count and report) batches whose loss is NaN/inf instead of
            stopping with an error.
    """

    name: str | None = None
    root: str = "runs"
    dir: str | None = None
    progress: Literal["auto", "rich", "tqdm", "none"] = "auto"
    skip_nonfinite_loss: bool = False


_FIT_DESCRIPTION = (
    "Runs the full optimization routine. Writes runs/<name>/<time>/ (config.yaml, csv/, "
    "tensorboard/, checkpoints/last.ckpt and best). Continue a run with --resume RUN_DIR "
    "(its config and last checkpoint; later options still override) or --ckpt_path FILE."
)


def expand_resume_args(args: Sequence[str]) -> list[str]:
    """Replace ``--resume RUN_DIR`` by that run's config and last checkpoint.

    ``--resume runs/digits/20250101-120000`` becomes ``--config <run>/config.yaml --ckpt_path
    <run>/checkpoints/last.ckpt --run.name digits --run.dir null`` (put before the other
    arguments, so later overrides still win); ``--resume FILE.ckpt`` becomes ``--ckpt_path FILE.ckpt``. The resumed
    run writes to a new run directory; the old one is left as it was.
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
    config, checkpoint = path / "config.yaml", path / LAST_CHECKPOINT
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
        "--run.dir",  # a fresh run directory, even if the old run had an explicit one
        "null",
    ]
    return head + resume + subcommand_args


def _config_base(path: Path) -> Path | None:
    """The file named by ``path``'s top-level ``base`` key (relative to ``path``'s folder)."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None  # the parser reports an unreadable config with its own message
    base = document.get(BASE_KEY) if isinstance(document, dict) else None
    if base is None:
        return None
    if not isinstance(base, str):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a path to a YAML file, got {base!r}")
    target = (path.parent / base).resolve()
    if not target.is_file():
        raise ConfigError(f"{path}: '{BASE_KEY}: {base}' names {target}, which does not exist")
    return target


def _merge_config(base: Any, delta: Any) -> Any:
    # As jsonargparse applies a later config file: mappings merge key by key, a block whose
    # class_path changes is replaced whole, anything else (lists included) is replaced.
    if not isinstance(base, dict) or not isinstance(delta, dict):
        return delta
    if "class_path" in delta and delta["class_path"] != base.get("class_path"):
        return delta
    return {**base, **{key: _merge_config(base.get(key), value) for key, value in delta.items()}}


def load_layered_config(path: str | Path) -> dict[str, Any]:
    """The YAML at ``path`` as a plain mapping, with the files its ``base:`` chain names merged
    under it (for scripts that read a config's settings without running the CLI)."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read the config ({error})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level of the config")
    document.pop(BASE_KEY, None)
    base = _config_base(path)
    return document if base is None else _merge_config(load_layered_config(base), document)


def expand_config_bases(args: Sequence[str]) -> list[str]:
    """Put each ``--config FILE``'s base files before it: a delta config says ``base:
    default.yaml`` (relative to its own folder) and holds only what differs.

    ``--config configs/worldcomp2d/localizer.yaml`` becomes ``--config
    .../worldcomp2d/default.yaml --config configs/worldcomp2d/localizer.yaml``: jsonargparse
    applies config files in order, so the delta's keys win, and later command-line options win
    over both. Bases may have bases; a loop is an error.
    """
    expanded: list[str] = []
    index = 0
    while index < len(args):
        arg, value = args[index], None
        if arg == "--config" and index + 1 < len(args):
            value, index = args[index + 1], index + 2
        elif arg.startswith("--config="):
            value, index = arg.split("=", 1)[1], index + 1
        else:
            expanded.append(arg)
            index += 1
            continue
        chain = [Path(value)]
        while (base := _config_base(chain[0])) is not None:
            if base in [p.resolve() for p in chain]:
                raise ConfigError(f"{value}: its '{BASE_KEY}' files form a loop at {base}")
            chain.insert(0, base)
        for path in chain[:-1]:
            expanded += ["--config", str(path)]
        expanded += ["--config", value]
    return expanded


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
        # passes args explicitly (after expanding --resume).
        self.config = (
            parser.parse_object(args) if isinstance(args, dict) else parser.parse_args(args)
        )

    # -- run directory -------------------------------------------------------------------------
    def _subconfig(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        config = self._subconfig()
        run = config["run"]
        name = run.name or _config_stem(config) or self._model_name(config)
        run.name = name
        self.run_dir, self.owns_run_dir = resolve_run_dir(run.root, name, run.dir)
        # The saved config is complete (bases merged in), so it must not name a base again.
        config[BASE_KEY] = None
        if self.owns_run_dir:
            self._parser(self.subcommand).save(
                config, _free_name(self.run_dir / "config.yaml"), multifile=False, **_KEEP_NONE
            )
            _say(f"wherewhat: run directory {self.run_dir}")

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
            NonFiniteLossGuard(skip=run.skip_nonfinite_loss),
        ]
        progress = self._progress_bar(run.progress, trainer_config, user_callbacks + extra)
        if progress is None:
            if not any(isinstance(c, ProgressBar) for c in user_callbacks + extra):
                trainer_config["enable_progress_bar"] = False
        else:
            harness.append(progress)
        trainer_config["callbacks"] = user_callbacks + harness

        if trainer_config.get("logger") in (None, True):
            trainer_config["logger"] = [
                CSVLogger(self.run_dir, name="csv", version=""),
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
        choice: str, trainer_config: dict[str, Any], callbacks: list[Callback]
    ) -> ProgressBar | None:
        if trainer_config.get("enable_progress_bar") is False:
            return None
        if any(isinstance(c, ProgressBar) for c in callbacks):
            return None
        if choice == "auto":
            choice = "none" if _on_ci_or_not_a_terminal() else "rich"
        if choice == "rich":
            return RichProgressBar()
        if choice == "tqdm":
            return TQDMProgressBar()
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
                lines.append(f"  last checkpoint: {checkpoint.last_model_path}")
            if checkpoint.best_model_path:
                lines.append(f"  best checkpoint: {checkpoint.best_model_path}")
            _say("\n".join(lines))


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
    return WherewhatCLI(args=expand_config_bases(expand_resume_args(args)))
