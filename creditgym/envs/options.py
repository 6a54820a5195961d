"""Reading `reset(options=...)`, the same way in every env."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def reset_options(options: Mapping[str, Any] | None, example_key: str | None = None) -> Mapping[str, Any]:
    """`options`, or {} for None; anything but a mapping or None is refused with a TypeError (an env that reads no
    option checks them too, so that a mistaken call is not taken silently)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        example = f" such as {{'{example_key}': ...}}" if example_key else ""
        raise TypeError(f"reset options must be a dict{example} or None, got {type(options).__name__}")
    return options


def reset_option(options: Mapping[str, Any] | None, key: str) -> Any:
    """`options[key]`, or None when it is absent; anything but a mapping or None is refused with a TypeError."""
    return reset_options(options, key).get(key)
