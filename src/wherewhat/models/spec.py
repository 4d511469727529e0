"""A network as data: ``{"class_path": ..., "init_args": {...}}``, so a task can take its model.

Every LightningModule here receives its network already built (``Task(model=Net(...), lr=...)``)
instead of re-declaring the network's constructor arguments. Three pieces make that work
without Lightning's help:

- :func:`configurable`, a class decorator: the network records the arguments it was built with
  (``init_args``; defaults filled in), so nothing has to repeat them;
- :func:`module_spec`: a built network -> its spec (nested networks become nested specs);
- :func:`build_module`: a spec (or an already built network) -> the network, checked against
  the type the task expects.

A task stores ``module_spec(model)`` in its hyper-parameters; ``Task.load_from_checkpoint``
then hands that spec back to ``__init__``, which builds it. In a YAML config the same spec is
the nested ``class_path`` / ``init_args`` block LightningCLI already understands::

    model:
      class_path: wherewhat.tasks.digits.DigitClassifierTask
      init_args:
        model:
          class_path: wherewhat.models.digits.DigitCNN
          init_args: {width: 16}
        lr: 0.002
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

from torch import nn

from wherewhat.errors import ConfigError

__all__ = ["build_module", "configurable", "module_spec"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)
INIT_ARGS = "init_args"


def configurable(cls: type[ModuleT]) -> type[ModuleT]:
    """Make instances of ``cls`` remember their constructor arguments in ``init_args``.

    The signature seen by ``inspect`` (and so by LightningCLI) is unchanged. A subclass that
    should record its own arguments needs the decorator too.
    """
    original = cls.__init__
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        original(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(signature.parameters)))  # self
        # Outermost __init__ finishes last, so the most derived class's arguments win.
        object.__setattr__(self, INIT_ARGS, arguments)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def _plain(value: Any) -> Any:
    """A spec value as plain YAML / JSON data (tuples -> lists, networks -> specs, dataclass
    options -> mappings): what ``torch.load(weights_only=True)`` accepts in a checkpoint."""
    if isinstance(value, nn.Module):
        return module_spec(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def module_spec(module: nn.Module) -> dict[str, Any]:
    """``{"class_path": "pkg.mod.Class", "init_args": {...}}`` of a :func:`configurable`
    network. Raises ``TypeError`` for a network that does not record its arguments."""
    arguments = getattr(module, INIT_ARGS, None)
    if not isinstance(arguments, dict):
        raise TypeError(
            f"{type(module).__qualname__} does not record its constructor arguments; decorate "
            "the class with wherewhat.models.spec.configurable"
        )
    cls = type(module)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", INIT_ARGS: _plain(arguments)}


def _import_class(class_path: str) -> type:
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"class_path {class_path!r}: cannot import it ({error})") from None


def _built(value: Any) -> Any:
    if isinstance(value, Mapping) and "class_path" in value:
        return build_module(value, nn.Module)
    return value


def build_module(value: nn.Module | Mapping[str, Any], expected: type[ModuleT]) -> ModuleT:
    """``value`` if it is already an ``expected`` network, else the network its spec describes
    (nested specs among its ``init_args`` are built first).

    Raises ``ConfigError`` when the spec names a class that cannot be imported or that is not
    an ``expected``.
    """
    if isinstance(value, Mapping):
        class_path = value.get("class_path")
        if not isinstance(class_path, str):
            raise ConfigError(f"a model spec needs a 'class_path' string, got {dict(value)!r}")
        cls = _import_class(class_path)
        arguments = {k: _built(v) for k, v in (value.get(INIT_ARGS) or {}).items()}
        value = cls(**arguments)
    if not isinstance(value, expected):
        raise ConfigError(
            f"expected a {expected.__module__}.{expected.__qualname__} as model, got "
            f"{type(value).__module__}.{type(value).__qualname__}"
        )
    return value
