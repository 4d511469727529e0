"""Files written whole or not at all, content fingerprints, and PNG encoding: the leaf module.

Every file wherewhat writes (results, reports, checkpoints, caches, ONNX models) goes through
:func:`atomic_path`: the content is written to a temporary file beside the target (same folder,
so the final rename never crosses a file system) and ``os.replace`` swaps it in, an atomic
rename on POSIX and Windows. A reader sees the old complete file or the new complete file,
never half of one; an exception removes the temporary file, a hard kill can leave a
``.<name>.partial-*`` file that is never read and is safe to delete. Permissions follow the
umask, like a plain ``open(path, "w")``.

Nothing here imports another wherewhat module, so any layer may use it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "PARTIAL_MARKER",
    "PNG_SIGNATURE",
    "array_digest",
    "atomic_path",
    "atomic_torch_save",
    "json_fingerprint",
    "png_bytes",
    "write_atomic",
]

PARTIAL_MARKER = ".partial-"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (e.g. Windows).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """A fresh temporary path beside ``path``: write it inside the block; it replaces ``path``
    when the block ends without an exception and is removed otherwise.

    ``durable``: also fsync the file and the folder, so the new content survives a power cut
    (checkpoints); results and figures skip it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}{PARTIAL_MARKER}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield temporary
        if durable:
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    if durable:
        _fsync_directory(path.parent)


def write_atomic(path: str | Path, data: bytes | str, *, durable: bool = False) -> Path:
    """Write ``data`` (``str`` as UTF-8) to ``path`` through :func:`atomic_path`; returns it."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    path = Path(path)
    with atomic_path(path, durable=durable) as temporary:
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomic and durable (for checkpoints)."""
    with atomic_path(path, durable=True) as temporary, open(temporary, "wb") as handle:
        torch.save(obj, handle)


def json_fingerprint(value: Any, length: int = 16) -> str:
    """``length`` hex digits of the SHA-256 of ``value`` as canonical JSON (sorted keys):
    equal for equal settings, whatever their key order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:length]


def array_digest(
    arrays: Iterable[np.ndarray | torch.Tensor], digest_size: int = 16, separator: bytes = b""
) -> str:
    """BLAKE2b hex digest of the raw bytes of ``arrays`` in order (tensors as float32 on the
    CPU), ``separator`` after each one; a fingerprint of data too large for JSON."""
    digest = hashlib.blake2b(digest_size=digest_size)
    for array in arrays:
        if isinstance(array, torch.Tensor):
            array = array.detach().to(torch.float32).cpu().contiguous().numpy()
        digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(separator)
    return digest.hexdigest()


def png_bytes(figure: Figure | bytes | bytearray) -> bytes:
    """PNG bytes of a matplotlib figure (at its own dpi), or ``figure`` itself if already PNG."""
    if isinstance(figure, bytes | bytearray):
        data = bytes(figure)
        if not data.startswith(PNG_SIGNATURE):
            raise ValueError("figure bytes are not a PNG image (missing PNG signature)")
        return data
    if not hasattr(figure, "savefig"):
        raise TypeError(f"expected a matplotlib Figure or PNG bytes, got {type(figure).__name__}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figure.dpi)
    return buffer.getvalue()
