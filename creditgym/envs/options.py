"""Reading `reset(options=...)`, the same way in every env."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def reset_option(options: Mapping[str, Any] | None, key: str) -> Any:
    """`options[key]`, or None when it is absent; anything but a mapping or None is refused with a TypeError."""
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise TypeError(f"reset options must be a dict such as {{'{key}': ...}} or None, got {type(options).__name__}")
    return options.get(key)
