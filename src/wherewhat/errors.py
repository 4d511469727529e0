"""Errors that name the offending file (and line) and say what was expected."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataFormatError", "ConfigError"]


class DataFormatError(ValueError):
    """Input data that does not have the expected format.

    The message always starts with the file (and line, when known), then what was expected and
    what was found, so a user can open the file and fix it.
    """

    def __init__(self, path: str | Path | None, message: str, *, line: int | None = None):
        self.path = None if path is None else Path(path)
        self.line = line
        where = "" if path is None else f"{path}"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(ValueError):
    """A configuration value that cannot work, with the key and the accepted values."""
