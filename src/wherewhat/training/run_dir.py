"""Run directories: ``<root>/<name>/<YYYYmmdd-HHMMSS>[-N]/``, one per run, never another run's.

Layout written by the CLI::

    runs/<name>/<stamp>/
        config.yaml            the fully resolved config (re-run with --config this file)
        config-1.yaml, ...     the config of each resume (--resume RUN_DIR), when there was one
        csv/metrics.csv        scalar logs (RunCSVLogger), one file for the whole run
        tensorboard/           TensorBoard event files (tensorboard --logdir runs)
        checkpoints/last.ckpt  the state at the last step trained, for --resume / --ckpt_path
        checkpoints/best-*.ckpt  best by the monitored metric (if one is set)

``wherewhat fit --resume RUN_DIR`` continues the run *in* ``RUN_DIR``: checkpoints go on in
``checkpoints/`` (the best-checkpoint bookkeeping included), ``csv/metrics.csv`` is continued
(rows the interrupted process logged after its last checkpoint are replaced by the resumed run's),
TensorBoard adds an event file beside the old ones, and the config of the resumed invocation is
saved as ``config-N.yaml`` beside the untouched ``config.yaml`` (the next ``--resume`` reads the
newest). ``--ckpt_path FILE`` alone trains on from the checkpoint in a new run directory.

Several processes of one run must agree on the directory:

- Lightning-launched DDP on one machine (``--trainer.strategy ddp --trainer.devices N``): the
  first process creates the directory and exports ``WHEREWHAT_RUN_DIR``; the processes Lightning
  starts next inherit it.
- Externally launched jobs (``torchrun``, SLURM ``srun``, several machines with
  ``--trainer.num_nodes M``): all ranks derive the same name from the job id
  (``slurm-<SLURM_JOB_ID>``, ``torchrun-<--rdzv-id>``; a requeued SLURM job continues in its
  folder), or pass ``--run.dir PATH`` on a shared file system.
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from wherewhat.errors import ConfigError
from wherewhat.io import write_atomic

__all__ = [
    "RUN_CONFIG",
    "RUN_DIR_ENV",
    "RunCSVLogger",
    "create_run_dir",
    "is_rank_zero_process",
    "latest_run_config",
    "resolve_run_dir",
]

RUN_CONFIG = "config.yaml"

RUN_DIR_ENV = "WHEREWHAT_RUN_DIR"
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "GROUP_RANK")


def is_rank_zero_process() -> bool:
    """True unless a launcher has marked this process as a non-zero rank."""
    return all(os.environ.get(name, "0") in ("", "0") for name in _RANK_VARIABLES)


def _external_world_size() -> int:
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def _job_id() -> str | None:
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return f"torchrun-{run_id}"
    return None


def create_run_dir(root: str | Path, name: str, stamp: str | None = None) -> Path:
    """Create and return a fresh ``root/name/stamp`` (``stamp-1``, ``stamp-2``... if taken)."""
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"run name must be a plain folder name, got {name!r}")
    parent = Path(root) / name
    parent.mkdir(parents=True, exist_ok=True)
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(10_000):
        candidate = parent / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()  # atomic: two runs started in the same second get different dirs
        except FileExistsError:
            continue
        return candidate
    raise ConfigError(f"{parent}: could not find a free run directory for stamp {stamp}")


def _claim_explicit_dir(path: Path) -> Path:
    if path.exists() and any(path.iterdir()):
        raise ConfigError(
            f"{path}: --run.dir already holds files of another run; choose an empty or new folder"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _continued_dir(path: Path) -> Path:
    if not (path / RUN_CONFIG).is_file():
        raise ConfigError(
            f"{path}: cannot continue this run here, it has no {RUN_CONFIG}; expected a run "
            "directory written by wherewhat fit"
        )
    return path


def latest_run_config(run_dir: str | Path) -> Path:
    """The newest config of a run: ``config-N.yaml`` with the largest N (written by resumes),
    else ``config.yaml``."""
    run_dir = Path(run_dir)
    numbered = []
    for path in run_dir.glob("config-*.yaml"):
        match = re.fullmatch(r"config-(\d+)\.yaml", path.name)
        if match:
            numbered.append((int(match.group(1)), path))
    return max(numbered)[1] if numbered else run_dir / RUN_CONFIG


def resolve_run_dir(
    root: str | Path,
    name: str,
    explicit_dir: str | Path | None = None,
    *,
    continuing: bool = False,
) -> tuple[Path, bool]:
    """Directory of this process's run and whether this process created it (and owns its files).

    ``continuing``: ``explicit_dir`` is the folder of the run being resumed (``--resume``), which
    is reused instead of refused for holding files.

    See the module docstring for how the processes of one distributed run agree on it.
    """
    rank_zero = is_rank_zero_process()
    if explicit_dir is not None:
        path = Path(explicit_dir)
        if continuing:
            return _continued_dir(path), rank_zero
        if rank_zero:
            return _claim_explicit_dir(path), True
        return path, False
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and not rank_zero:
        return Path(inherited), False
    if _external_world_size() > 1:
        job = _job_id()
        if job is None:
            raise ConfigError(
                "this is one rank of a multi-process job started outside wherewhat (WORLD_SIZE > 1) "
                "without a job id: pass --run.dir PATH (the same for every rank) or give torchrun "
                "an --rdzv-id"
            )
        path = Path(root) / name / job
        if rank_zero:
            # Unique per job; an existing one is this job requeued (SLURM keeps the job id), which
            # continues in place (Lightning's SLURM requeue checkpoint lives there).
            path.mkdir(parents=True, exist_ok=True)
        return path, rank_zero
    if not rank_zero:
        raise ConfigError(
            f"non-zero rank without {RUN_DIR_ENV}: start distributed runs through the wherewhat "
            "CLI, torchrun or SLURM, or pass --run.dir PATH"
        )
    path = create_run_dir(root, name)
    os.environ[RUN_DIR_ENV] = str(path.resolve())  # inherited by DDP processes Lightning starts
    return path, True


# -- one metrics.csv for the whole run -----------------------------------------------------------
class _ContinuedCSVWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted.

    Its columns are taken over; before the first rows of this process are written, the rows
    the earlier process logged at the same or later steps (after its last checkpoint, before the
    kill) are dropped, since the resumed run logs those steps again.
    """

    def __init__(self, log_dir: str) -> None:
        self._first_new_step: int | None = None
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(key for key in header if key)

    def _check_log_dir_exists(self) -> None:
        pass  # Lightning's deletes an existing metrics.csv here

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if self._first_new_step is None and step is not None:
            self._first_new_step = int(step)
            self._drop_rows_from(int(step))
        super().log_metrics(metrics_dict, step)

    def _drop_rows_from(self, step: int) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = list(csv.DictReader(file))
        kept = [row for row in rows if _row_step(row) < step]
        if len(kept) == len(rows):
            return
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.metrics_keys)  # "\r\n", as Lightning
        writer.writeheader()
        writer.writerows(kept)
        write_atomic(self.metrics_file_path, text.getvalue())


def _row_step(row: dict[str, Any]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")  # NaN < step is False: a row without a readable step is dropped


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``<run>/csv/metrics.csv``, continued (not replaced) when a resumed run
    writes into the same folder. (Lightning writes the rows out as they are logged, so the file a
    kill leaves behind is complete up to the kill.)"""

    def __init__(self, run_dir: str | Path, **kwargs: Any) -> None:
        kwargs.setdefault("name", "csv")
        kwargs.setdefault("version", "")
        super().__init__(run_dir, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedCSVWriter(log_dir=self.log_dir)
        return self._experiment
