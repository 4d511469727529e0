"""Checkpoint files that are either the old complete file or the new complete file, never half.

``torch.save`` goes through :func:`wherewhat.io.atomic_torch_save` (a temporary file beside the
target, fsync'ed, then renamed over it): a crash or a kill during the write leaves the previous
checkpoint untouched. A hard kill can leave a ``.<name>.partial-*`` file behind, which is never
read and is safe to delete.

Remote paths (``s3://`` and other fsspec URLs) fall back to Lightning's own transactional save.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from wherewhat.io import atomic_torch_save

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` plugin whose saves are atomic (see the module docstring).

    The ``wherewhat`` CLI installs it on every Trainer unless the config names another
    ``CheckpointIO`` plugin. Standalone: ``Trainer(plugins=[AtomicCheckpointIO()])``.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        if not _is_local_file_protocol(str(path)):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)
