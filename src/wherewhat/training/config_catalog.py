"""The configs shipped inside the package, found by name.

They live in ``wherewhat/configs/<method>/<name>.yaml`` (the repository's ``configs/`` folder
points there), so an installed wheel has them too. ``--config ssdir/default`` (or
``ssdir/default.yaml``, or ``configs/ssdir/default.yaml`` away from the repository) names the
shipped file whenever no such file exists where the command runs; a file that exists always wins.
``wherewhat configs`` lists them with the first line of their header comment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PACKAGED_CONFIGS",
    "ShippedConfig",
    "shipped_configs",
    "resolve_config",
    "resolve_config_names",
]

PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class ShippedConfig:
    name: str  # "<method>/<stem>", how --config names it
    path: Path
    summary: str  # the first line of the header comment


def _summary(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def shipped_configs(root: Path = PACKAGED_CONFIGS) -> list[ShippedConfig]:
    """Every shipped config, sorted by name (``default`` first within a method)."""
    paths = sorted(
        root.glob("*/*.yaml"), key=lambda p: (p.parent.name, p.stem != "default", p.stem)
    )
    return [ShippedConfig(f"{p.parent.name}/{p.stem}", p, _summary(p)) for p in paths]


def resolve_config(value: str, root: Path = PACKAGED_CONFIGS) -> Path | None:
    """The shipped file that ``value`` names, or None when it names none (or a file exists at
    ``value`` itself, which then wins)."""
    if Path(value).is_file():
        return None
    name = value.removeprefix("configs/").removesuffix(".yaml")
    parts = Path(name).parts
    if len(parts) != 2:
        return None
    candidate = root / parts[0] / f"{parts[1]}.yaml"
    return candidate if candidate.is_file() else None


def resolve_config_names(args: Sequence[str], root: Path = PACKAGED_CONFIGS) -> list[str]:
    """``args`` with every ``--config NAME`` that names a shipped config replaced by its path."""
    resolved: list[str] = []
    expect_value = False
    for arg in args:
        if expect_value:
            found = resolve_config(arg, root)
            resolved.append(str(found) if found else arg)
            expect_value = False
        elif arg == "--config":
            resolved.append(arg)
            expect_value = True
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
            found = resolve_config(value, root)
            resolved.append(f"--config={found}" if found else arg)
        else:
            resolved.append(arg)
    return resolved
