"""The iBUG ``.pts`` landmark file format: a strict reader and a writer.

A ``.pts`` file (300-W, AFW, HELEN, LFPW, iBUG, Menpo) looks like::

    version: 1
    n_points: 68
    {
    x y
    ...   (n_points lines of two numbers)
    }

Its coordinates are 1-based pixel centres: the centre of the top-left pixel is (1, 1). Our frame
puts that centre at (0.5, 0.5), so :func:`read_pts` subtracts 0.5 and :func:`write_pts` adds it.

What the reader tolerates: a UTF-8 byte-order mark, ``\\r\\n`` line ends, spaces or tabs around
and between tokens, blank lines and whole-line ``//`` or ``#`` comments *outside* the ``{ ... }``
block (before, between and after the header lines). Everything else (a blank line among the points,
a third token, ``nan``, a wrong count, a missing brace) is a :class:`DataFormatError` naming the
file, the line and what was expected.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import Tensor

from wherewhat.errors import DataFormatError

__all__ = ["read_pts", "parse_pts", "write_pts", "parse_decimal", "PTS_PIXEL_OFFSET"]

# iBUG pixel centres are 1-based; ours sit at index + 0.5.
PTS_PIXEL_OFFSET = 0.5

# A plain ASCII decimal number; Python's float() would also take "nan", "inf" and "1_000".
_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_COUNT = re.compile(r"[0-9]{1,9}")
_FIELD_SEPARATOR = re.compile(r"[ \t]+")
_HEADER = re.compile(r"(version|n_points)[ \t]*:[ \t]*(.*)")


def parse_decimal(token: str) -> float | None:
    """``token`` as a finite float if it is a plain ASCII decimal number, else ``None``."""
    if _NUMBER.fullmatch(token) is None:
        return None
    value = float(token)
    return value if math.isfinite(value) else None  # e.g. 1e999 overflows to inf


def _is_skippable(line: str) -> bool:
    return not line or line.startswith("//") or line.startswith("#")


def _describe(line: str, limit: int = 40) -> str:
    if not line:
        return "a blank line"
    shown = line if len(line) <= limit else line[:limit] + "..."
    return repr(shown)


def _header_value(path, lines: list[str], start: int, key: str) -> tuple[str, int]:
    """Find ``key: value`` at the next non-skippable line; returns (value, index after it)."""
    index = start
    while index < len(lines) and _is_skippable(lines[index]):
        index += 1
    if index == len(lines):
        raise DataFormatError(
            path, f"file ends before the header line '{key}: ...'", line=max(len(lines), 1)
        )
    match = _HEADER.fullmatch(lines[index])
    if match is None or match.group(1) != key:
        raise DataFormatError(
            path,
            f"expected the header line '{key}: ...', found {_describe(lines[index])}",
            line=index + 1,
        )
    return match.group(2), index + 1


def _decode(raw: bytes, path) -> list[str]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataFormatError(
            path,
            f"not a text file: byte 0x{raw[exc.start]:02x} is not valid UTF-8/ASCII",
            line=line,
        ) from None
    # Split on "\n" only (str.splitlines also splits on \x0b, \x1c, \u2028...), so that our line
    # numbers are the ones an editor shows; a stray "\r" inside a line is then a bad token.
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    return [line.removesuffix("\r").strip(" \t") for line in lines]


def parse_pts(raw: bytes, path: str | Path = "<bytes>") -> Tensor:
    """Parse the bytes of a ``.pts`` file; ``path`` is only used in error messages.

    Returns ``(N, 2)`` float32 (x, y) points in our pixel frame (0.5 subtracted).
    """
    if not raw.strip():
        raise DataFormatError(path, "empty file: expected an iBUG .pts file starting 'version: 1'")
    lines = _decode(raw, path)

    version, index = _header_value(path, lines, 0, "version")
    if version != "1":
        raise DataFormatError(path, f"expected 'version: 1', found version {version!r}", line=index)
    count_text, index = _header_value(path, lines, index, "n_points")
    if _COUNT.fullmatch(count_text) is None or int(count_text) == 0:
        raise DataFormatError(
            path,
            f"expected a positive integer after 'n_points:', found {count_text!r}",
            line=index,
        )
    n_points = int(count_text)

    while index < len(lines) and _is_skippable(lines[index]):
        index += 1
    if index == len(lines) or lines[index] != "{":
        found = "end of file" if index == len(lines) else _describe(lines[index])
        raise DataFormatError(
            path,
            f"expected '{{' to open the point block, found {found}",
            line=min(index + 1, len(lines)),
        )
    index += 1

    values: list[float] = []
    for k in range(n_points):
        if index == len(lines):
            raise DataFormatError(
                path,
                f"file ends after {k} of n_points={n_points} points (no closing '}}')",
                line=len(lines),
            )
        line, line_no = lines[index], index + 1
        if line == "}":
            raise DataFormatError(
                path,
                f"found '}}' after {k} points, but the header says n_points={n_points}",
                line=line_no,
            )
        tokens = _FIELD_SEPARATOR.split(line) if line else []
        if len(tokens) != 2:
            found = f"{len(tokens)} fields in {_describe(line)}" if line else "a blank line"
            raise DataFormatError(
                path,
                f"expected point {k + 1} of {n_points} as two numbers 'x y', found {found}",
                line=line_no,
            )
        for token in tokens:
            value = parse_decimal(token)
            if value is None:
                raise DataFormatError(
                    path,
                    f"point {k + 1}: {_describe(token)} is not a finite decimal number",
                    line=line_no,
                )
            values.append(value)
        index += 1

    if index == len(lines) or lines[index] != "}":
        found = "end of file" if index == len(lines) else _describe(lines[index])
        raise DataFormatError(
            path,
            f"expected '}}' after the {n_points} points (n_points={n_points}), found {found}",
            line=min(index + 1, len(lines)),
        )
    for trailing in range(index + 1, len(lines)):
        if not _is_skippable(lines[trailing]):
            raise DataFormatError(
                path,
                f"unexpected content after the closing '}}': {_describe(lines[trailing])}",
                line=trailing + 1,
            )

    points = torch.tensor(values, dtype=torch.float64).reshape(n_points, 2) - PTS_PIXEL_OFFSET
    return points.to(torch.float32)


def read_pts(path: str | Path) -> Tensor:
    """Read an iBUG ``.pts`` file into ``(N, 2)`` float32 points in our pixel frame.

    Raises :class:`DataFormatError` (naming the file and line) for any malformation and for a
    file that cannot be read.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataFormatError(path, f"cannot read the .pts file: {reason}") from exc
    return parse_pts(raw, path)


def write_pts(path: str | Path, points: Tensor) -> None:
    """Write ``(N, 2)`` points in our pixel frame as an iBUG ``.pts`` file (0.5 added).

    Six decimals keep a float32 round trip within 1e-5 px for images up to ~10k px.
    """
    path = Path(path)
    points = torch.as_tensor(points)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] == 0:
        raise ValueError(
            f"write_pts({path}): expected points of shape (N, 2), N > 0, got {tuple(points.shape)}"
        )
    if not torch.isfinite(points).all():
        raise ValueError(f"write_pts({path}): points contain NaN or infinity")
    shifted = points.to(torch.float64) + PTS_PIXEL_OFFSET
    body = "\n".join(f"{x:.6f} {y:.6f}" for x, y in shifted.tolist())
    path.write_text(f"version: 1\nn_points: {len(shifted)}\n{{\n{body}\n}}\n", encoding="ascii")
