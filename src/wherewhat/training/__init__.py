"""wherewhat.training: the harness behind ``wherewhat fit|validate|test|predict``.

- ``harness``: ``WherewhatCLI`` (LightningCLI subclass), ``RunOptions``, ``run_lightning_cli``,
  ``expand_resume_args``; how to scale out with DDP, torchrun and SLURM.
- ``run_dir``: one fresh ``runs/<name>/<YYYYmmdd-HHMMSS>/`` per run, shared by its processes.
- ``checkpoint_io``: ``AtomicCheckpointIO`` (temp file + fsync + ``os.replace``).
- ``callbacks``: ``RandomStateCheckpoint`` (RNG states in checkpoints), ``NonFiniteLossGuard``.
- exact mid-epoch resume needs the train loader to be ``wherewhat.data.loader.ResumableDataLoader``
  (torch only: data modules import it without pulling in Lightning).

Import the submodules directly; this package imports nothing itself.
"""
