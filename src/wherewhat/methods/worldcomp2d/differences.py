"""What differs between two settings: a saved run's and now (the benchmark's trained folder), a
checkpoint's model spec and the current model (``init_from``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["setting_differences"]


def setting_differences(
    saved: Any, now: Any, key: str = "", labels: tuple[str, str] = ("saved", "now")
) -> list[str]:
    """``"key: saved (saved) vs now (now)"`` for every leaf of two JSON-like values that
    differs (nested keys joined by dots; a key missing on one side reads ``(absent)``)."""
    if isinstance(saved, Mapping) and isinstance(now, Mapping):
        return [
            line
            for k in sorted(set(saved) | set(now))
            for line in setting_differences(
                saved.get(k, "(absent)"), now.get(k, "(absent)"), f"{key}.{k}" if key else k,
                labels,
            )
        ]  # fmt: skip
    if saved == now:
        return []
    return [f"{key}: {saved!r} ({labels[0]}) vs {now!r} ({labels[1]})"]
