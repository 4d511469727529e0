"""A checkpoint against the config it is resumed or evaluated with: same model class, no
contradicting ``--model...`` option, weights of the right names and shapes.

LightningCLI lets a checkpoint's hyper-parameters replace the config's model settings silently;
these checks turn each mismatch into one error that names both sides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonargparse
import torch

from wherewhat.errors import CheckpointError

__all__ = [
    "LIGHTNING_CKPT_NAMES",
    "check_checkpoint_model",
    "model_options",
    "state_dict_mismatch",
]

# ckpt_path values Lightning resolves itself (not files).
# ckpt_path values Lightning resolves itself (not files).
LIGHTNING_CKPT_NAMES = ("best", "last", "hpc", "registry")


def model_options(args: Any) -> dict[str, str]:
    """``--model.KEY VALUE`` / ``--model.KEY=VALUE`` (and ``--model``) given on the command
    line, as ``{"model.KEY": "VALUE"}``."""
    if not isinstance(args, list | tuple):
        return {}
    options: dict[str, str] = {}
    for index, arg in enumerate(args):
        if not isinstance(arg, str) or not (
            arg.startswith("--model.") or arg.split("=")[0] == "--model"
        ):
            continue
        key, equals, value = arg[2:].partition("=")
        if not equals:
            value = str(args[index + 1]) if index + 1 < len(args) else ""
        options[key] = value
    return options


def _plain(value: Any) -> Any:
    if isinstance(value, jsonargparse.Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _leaves(value: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Leaf values of nested specs by path, ``init_args`` levels left out (so a checkpoint's
    hyper-parameters and a parsed config line up)."""
    if not isinstance(value, dict):
        return {prefix: value}
    leaves: dict[tuple[str, ...], Any] = {}
    for key, item in value.items():
        if key in ("init_args", "dict_kwargs"):
            leaves.update(_leaves(item, prefix))
        elif key not in ("_instantiator", "__path__"):
            leaves.update(_leaves(item, prefix + ("class_path" if key == "_class_path" else key,)))
    return leaves


def _dotted(path: tuple[str, ...]) -> str:
    """``("model", "channels")`` -> ``model.init_args.model.init_args.channels``: the option."""
    key = "model"
    for part in path:
        key += f".{part}" if part == "class_path" else f".init_args.{part}"
    return key


def check_checkpoint_model(
    path: Path, model_config: Any, hparams: dict[str, Any], options: dict[str, str]
) -> None:
    """Raise if the checkpoint holds another model class than the config, or if a command-line
    ``--model...`` option contradicts a hyper-parameter stored in it."""
    configured = _leaves(_plain(model_config))
    stored = _leaves(_plain(hparams))
    for key, value in configured.items():
        if key and key[-1] == "class_path" and key in stored and stored[key] != value:
            raise CheckpointError(
                path,
                f"a checkpoint of {stored[key]}, but the config's {_dotted(key)} is {value}; "
                "expected a checkpoint of the config's model",
                hint="use the config the checkpoint was trained with (its run folder's "
                f"config.yaml) or a checkpoint of {value}",
            )
    contradictions = []
    for option, text in options.items():
        wanted = tuple(
            part for part in option.split(".")[1:] if part not in ("init_args", "dict_kwargs")
        )
        for key, value in configured.items():
            if key[: len(wanted)] == wanted and key in stored and stored[key] != value:
                given = f"--{option} {text}"
                if key != wanted:  # a whole block given: name the value inside it
                    given += f" (sets {_dotted(key)} = {value!r})"
                contradictions.append(
                    f"{given}, but the checkpoint has {_dotted(key)} = {stored[key]!r}"
                )
    if contradictions:
        raise CheckpointError(
            path,
            "command-line options contradict the checkpoint: " + "; ".join(contradictions),
            hint="drop those options: with --ckpt_path (or --resume) the model keeps its "
            "checkpoint's settings; to train a changed model, start a new run without --ckpt_path",
        )


def state_dict_mismatch(
    model: dict[str, Any], checkpoint: dict[str, Any], limit: int = 5
) -> list[str]:
    def listing(keys: list[str]) -> str:
        shown = ", ".join(keys[:limit])
        return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")

    missing = sorted(set(model) - set(checkpoint))
    unexpected = sorted(set(checkpoint) - set(model))
    shapes = [
        f"{key}: checkpoint {tuple(checkpoint[key].shape)} vs model {tuple(model[key].shape)}"
        for key in sorted(set(model) & set(checkpoint))
        if hasattr(model[key], "shape")
        and hasattr(checkpoint[key], "shape")
        and not isinstance(model[key], torch.nn.parameter.UninitializedParameter)
        and tuple(model[key].shape) != tuple(checkpoint[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} model weights are not in it ({listing(missing)})")
    if unexpected:
        problems.append(
            f"{len(unexpected)} of its weights are not in the model ({listing(unexpected)})"
        )
    if shapes:
        problems.append(f"{len(shapes)} shapes differ ({listing(shapes)})")
    return problems
