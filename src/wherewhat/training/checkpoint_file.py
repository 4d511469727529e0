"""Read a Lightning checkpoint safely: ``weights_only=True``, and errors that say what is wrong.

``torch.load`` on a damaged file raises an unpickling or zip error whose text advises to retry
with ``weights_only=False``, which runs arbitrary code from the file: bad advice for a file that
is merely corrupt, and unsafe for one you do not trust. :func:`read_checkpoint` says instead
whether the file is missing, damaged, holds Python objects beyond tensors and plain data, or is
not a Lightning checkpoint, as a :class:`~wherewhat.errors.CheckpointError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from wherewhat.errors import CheckpointError

__all__ = ["read_checkpoint"]

_DAMAGED_HINT = (
    "the file is damaged (cut short or overwritten): use another checkpoint, e.g. an earlier one "
    "in the same checkpoints/ folder, or train again"
)


def _short_reason(error: BaseException) -> str:
    """The informative line of ``torch.load``'s error, without its retry advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            following = lines[index + 1] if index + 1 < len(lines) else ""
            return f"unpickling stopped: {rest or following}"
    detail = lines[0] if lines else ""
    if "weights_only" in detail:  # never repeat torch's advice to load unsafely
        detail = ""
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def read_checkpoint(
    path: str | Path, *, weights_only: bool = True, map_location: Any = "cpu"
) -> dict[str, Any]:
    """The checkpoint at ``path`` as a mapping with at least ``state_dict``.

    Loads with ``weights_only=True`` unless told otherwise (only for a file you trust). Raises
    :class:`CheckpointError` for a missing, damaged or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        found = "a folder, not a file" if path.is_dir() else "no such file"
        raise CheckpointError(
            path,
            f"expected a checkpoint file (.ckpt); {found}",
            hint="give a checkpoint file, e.g. runs/<name>/<time>/checkpoints/last.ckpt, or "
            "--resume runs/<name>/<time> for a run folder",
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, OSError, EOFError...
        reason = _short_reason(error)
        if "Unsupported global" in str(error):
            raise CheckpointError(
                path,
                "holds Python objects besides tensors and plain data "
                f"({reason}); wherewhat loads checkpoints with weights_only=True, which refuses "
                "them because unpickling them can run code from the file",
                hint="use a checkpoint written by wherewhat (Lightning's state_dict, "
                "hyper-parameters and plain values)",
            ) from None
        raise CheckpointError(
            path,
            f"not a readable checkpoint: corrupt or truncated ({reason})",
            hint=_DAMAGED_HINT,
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        found = (
            f"a mapping with keys {sorted(map(str, checkpoint))[:8]}"
            if isinstance(checkpoint, dict)
            else f"a {type(checkpoint).__name__}"
        )
        raise CheckpointError(
            path,
            f"not a Lightning checkpoint: expected a mapping with 'state_dict', found {found}",
            hint="give a .ckpt written by `wherewhat fit` (runs/<name>/<time>/checkpoints/)",
        )
    return checkpoint
