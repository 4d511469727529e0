"""Errors a user causes, and how the command line shows them.

Every such error names the file (and line) or the config key, says what was expected and what
was found, and may carry a ``hint``: how to fix it. The ``wherewhat`` command prints one
:func:`error_block` for it and exits with code 2; the traceback only with ``--debug`` or
``WHEREWHAT_DEBUG=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "UserError",
    "DataFormatError",
    "ConfigError",
    "CheckpointError",
    "DEBUG_ENV",
    "debug_requested",
    "error_block",
    "yaml_error",
]

DEBUG_ENV = "WHEREWHAT_DEBUG"


class UserError(ValueError):
    """A problem with what the user gave (data, config, checkpoint, option), not a bug.

    ``hint`` (optional) says how to fix it; the command line prints it under the message.
    """

    def __init__(self, message: str, *, hint: str | None = None):
        self.hint = hint
        super().__init__(message)


def _located(path: str | Path | None, message: str, line: int | None) -> str:
    where = "" if path is None else f"{path}"
    if line is not None:
        where += f":{line}"
    return f"{where}: {message}" if where else message


class DataFormatError(UserError):
    """Input data that does not have the expected format.

    The message always starts with the file (and line, when known), then what was expected and
    what was found, so a user can open the file and fix it. ``DataFormatError(text)`` with a
    single argument takes ``text`` as the whole message (how PyTorch re-raises an error from a
    DataLoader worker).
    """

    def __init__(
        self,
        path: str | Path | None,
        message: str | None = None,
        *,
        line: int | None = None,
        hint: str | None = None,
    ):
        if message is None:  # a single argument: the whole message
            path, message = None, str(path)
        self.path = None if path is None else Path(path)
        self.line = line
        super().__init__(_located(path, message, line), hint=hint)


class ConfigError(UserError):
    """A configuration value that cannot work, with the key and the accepted values."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or that does not fit the model or options given."""

    def __init__(
        self, path: str | Path | None, message: str | None = None, *, hint: str | None = None
    ):
        if message is None:
            path, message = None, str(path)
        self.path = None if path is None else Path(path)
        super().__init__(_located(path, message, None), hint=hint)


def yaml_error(path: str | Path, error: Exception) -> DataFormatError:
    """A YAML parser error as a :class:`DataFormatError` naming ``path``, the line and column
    (PyYAML itself names ``<unicode string>`` when it parsed text)."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    message = f"not valid YAML: {problem}"
    if mark is not None:
        message += f" (column {mark.column + 1})"
    if context:
        message += f", {context}"
        context_mark = getattr(error, "context_mark", None)
        if context_mark is not None and mark is not None and context_mark.line != mark.line:
            message += f" on line {context_mark.line + 1}"
    return DataFormatError(
        path,
        message,
        line=None if mark is None else mark.line + 1,
        hint="fix the YAML syntax at that line (indentation, a missing ':', ']' or quote)",
    )


def debug_requested(argv: list[str] | None = None) -> bool:
    """``--debug`` among ``argv`` or ``WHEREWHAT_DEBUG`` set to a true value."""
    if argv is not None and "--debug" in argv:
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _worker_message(text: str) -> tuple[str, bool]:
    """PyTorch re-raises an error from a DataLoader worker with the worker's traceback as the
    message; keep its last line (the original message)."""
    if "Original Traceback" not in text:
        return text, False
    last = [line for line in text.splitlines() if line.strip()][-1]
    _, separator, message = last.partition(": ")
    return (message if separator else last), True


def error_block(command: str, error: BaseException, *, debug: bool = False) -> str:
    """The one block the command line prints for a user error: what and where (the message),
    ``fix:`` how (the hint, if any), and how to see the traceback."""
    message, in_worker = _worker_message(str(error))
    if in_worker:
        message += " (raised in a DataLoader worker)"
    lines = [f"wherewhat {command}: error: {message.rstrip()}"]
    hint = getattr(error, "hint", None)
    if hint:
        lines.append(f"  fix: {hint}")
    if not debug:
        lines.append(f"  (the traceback: run again with --debug or {DEBUG_ENV}=1)")
    return "\n".join(lines)
