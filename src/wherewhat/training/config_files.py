"""Config files: layered configs (a ``base:`` chain) and checks that name the file and line.

A delta config says ``base: default.yaml`` (relative to its own folder) and holds only what
differs; :func:`expand_config_bases` puts its bases before it on the command line (jsonargparse
applies config files in order), :func:`load_layered_config` merges the chain for scripts that
read settings without the CLI, and :func:`check_config_files` reports a missing or broken YAML
file by name and line before jsonargparse would (it names ``<unicode string>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from wherewhat.errors import ConfigError, DataFormatError, yaml_error

__all__ = ["BASE_KEY", "check_config_files", "expand_config_bases", "load_layered_config"]

BASE_KEY = "base"


def _config_base(path: Path) -> Path | None:
    """The file named by ``path``'s top-level ``base`` key (relative to ``path``'s folder)."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None  # the parser reports an unreadable config with its own message
    base = document.get(BASE_KEY) if isinstance(document, dict) else None
    if base is None:
        return None
    if not isinstance(base, str):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a path to a YAML file, got {base!r}")
    target = (path.parent / base).resolve()
    if not target.is_file():
        raise ConfigError(f"{path}: '{BASE_KEY}: {base}' names {target}, which does not exist")
    return target


def _merge_config(base: Any, delta: Any) -> Any:
    # As jsonargparse applies a later config file: mappings merge key by key, a block whose
    # class_path changes is replaced whole, anything else (lists included) is replaced.
    if not isinstance(base, dict) or not isinstance(delta, dict):
        return delta
    if "class_path" in delta and delta["class_path"] != base.get("class_path"):
        return delta
    return {**base, **{key: _merge_config(base.get(key), value) for key, value in delta.items()}}


def load_layered_config(path: str | Path) -> dict[str, Any]:
    """The YAML at ``path`` as a plain mapping, with the files its ``base:`` chain names merged
    under it (for scripts that read a config's settings without running the CLI)."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read the config ({error})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level of the config")
    document.pop(BASE_KEY, None)
    base = _config_base(path)
    return document if base is None else _merge_config(load_layered_config(base), document)


def expand_config_bases(args: Sequence[str]) -> list[str]:
    """Put each ``--config FILE``'s base files before it: a delta config says ``base:
    default.yaml`` (relative to its own folder) and holds only what differs.

    ``--config configs/worldcomp2d/localizer.yaml`` becomes ``--config
    .../worldcomp2d/default.yaml --config configs/worldcomp2d/localizer.yaml``: jsonargparse
    applies config files in order, so the delta's keys win, and later command-line options win
    over both. Bases may have bases; a loop is an error.
    """
    expanded: list[str] = []
    index = 0
    while index < len(args):
        arg, value = args[index], None
        if arg == "--config" and index + 1 < len(args):
            value, index = args[index + 1], index + 2
        elif arg.startswith("--config="):
            value, index = arg.split("=", 1)[1], index + 1
        else:
            expanded.append(arg)
            index += 1
            continue
        chain = [Path(value)]
        while (base := _config_base(chain[0])) is not None:
            if base in [p.resolve() for p in chain]:
                raise ConfigError(f"{value}: its '{BASE_KEY}' files form a loop at {base}")
            chain.insert(0, base)
        for path in chain[:-1]:
            expanded += ["--config", str(path)]
        expanded += ["--config", value]
    return expanded


def check_config_files(args: Sequence[str]) -> None:
    """Every ``--config FILE`` exists and is a YAML mapping; errors name the file and line
    (jsonargparse names ``<unicode string>``, after a usage dump)."""
    for index, arg in enumerate(args):
        if arg == "--config" and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        else:
            continue
        path = Path(value)
        if not path.is_file():
            raise ConfigError(
                f"--config {value}: no such file",
                hint="give the path of a YAML config or a shipped config's name, e.g. "
                "digits/default (`wherewhat configs` lists them)",
            )
        try:
            document = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise yaml_error(path, error) from None
        except (OSError, UnicodeDecodeError) as error:
            raise DataFormatError(path, f"cannot read the config ({error})") from None
        if document is not None and not isinstance(document, dict):
            raise DataFormatError(
                path,
                f"expected a mapping of options (key: value) at the top level, found "
                f"{type(document).__name__}",
            )
