"""Silence Lightning's start-up chatter inside benchmark and tour pipelines.

Pipelines build many short-lived Trainers; each would print "GPU available: False", the
model summary and warnings about data loaders that are expected in that pipeline. The
Trainer must be *built* inside the block too: the device lines are logged by its constructor.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

__all__ = ["quiet_lightning"]

_LOGGERS = (
    "lightning.pytorch",
    "lightning.fabric",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)

# Warnings every CPU pipeline here triggers on purpose: few or no loader workers.
_ALWAYS_IGNORED = (r".*does not have many workers.*", r".*LeafSpec.*is deprecated.*")


@contextmanager
def quiet_lightning(ignore: Sequence[str] = ()) -> Iterator[None]:
    """Lightning's loggers at WARNING and these warnings hidden while the block runs.

    Args:
        ignore: regular expressions of further warning messages the caller expects (matched
            from the message's start, as :func:`warnings.filterwarnings` does).
    """
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in (*_ALWAYS_IGNORED, *ignore):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
