"""wherewhat.training: the harness behind ``wherewhat fit|validate|test|predict``, and the one
way pipelines train.

- ``harness``: ``WherewhatCLI`` (LightningCLI subclass), ``RunOptions``, ``run_lightning_cli``,
  ``expand_resume_args``; how to scale out with DDP, torchrun and SLURM.
- ``config_files``: layered configs (``expand_config_bases``, ``load_layered_config``) and
  config-file checks that name the file and line.
- ``checkpoint_file`` / ``checkpoint_checks``: reading a checkpoint safely, and checking it
  against the config (model class, contradicting options, weight shapes).
- ``fit``: ``fit(task, data, ...) -> FitRecord``, the Trainer every pipeline (benchmark, tour)
  trains with.
- ``schedules``: ``warmup_cosine``, ``step_decay``, ``adamw_warmup_cosine``.
- ``run_dir``: one ``runs/<name>/<YYYYmmdd-HHMMSS>/`` per run, shared by its processes and
  continued by ``--resume``; ``RunCSVLogger`` (one ``metrics.csv`` per run).
- ``checkpoint_io``: ``AtomicCheckpointIO`` (through ``wherewhat.io.atomic_torch_save``).
- ``callbacks``: ``RandomStateCheckpoint`` (exact resume: RNG states, loader position),
  ``LastCheckpoints`` (``last.ckpt`` follows the run), ``NonFiniteLossGuard``.
- ``progress``: run-level progress (step / total, elapsed, ETA): ``ProgressLines`` (plain lines
  for log files and CI), ``RunRichProgressBar`` / ``RunTQDMProgressBar``.
- ``plot``: ``read_metrics_csv``, ``plot_curves``, ``write_curves`` (a run's ``curves.png``,
  ``wherewhat plot RUN_DIR``).
- exact mid-epoch resume needs the train loader to be ``wherewhat.data.loader.ResumableDataLoader``
  (torch only: data modules import it without pulling in Lightning).

Import the submodules directly; this package imports nothing itself.
"""
