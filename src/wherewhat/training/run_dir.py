"""Run directories: ``<root>/<name>/<YYYYmmdd-HHMMSS>[-N]/``, one per run, never reused.

Layout written by the CLI::

    runs/<name>/<stamp>/
        config.yaml            the fully resolved config (re-run with --config this file)
        csv/metrics.csv        scalar logs (CSVLogger)
        tensorboard/           TensorBoard event files (tensorboard --logdir runs)
        checkpoints/last.ckpt  latest state, for --ckpt_path / --resume
        checkpoints/best-*.ckpt  best by the monitored metric (if one is set)

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

import os
import time
from pathlib import Path

from wherewhat.errors import ConfigError

__all__ = ["RUN_DIR_ENV", "create_run_dir", "resolve_run_dir", "is_rank_zero_process"]

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


def resolve_run_dir(
    root: str | Path, name: str, explicit_dir: str | Path | None = None
) -> tuple[Path, bool]:
    """Directory of this process's run and whether this process created it (and owns its files).

    See the module docstring for how the processes of one distributed run agree on it.
    """
    rank_zero = is_rank_zero_process()
    if explicit_dir is not None:
        path = Path(explicit_dir)
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
