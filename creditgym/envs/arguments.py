"""Constructor arguments checked the same way in every env.

Env arguments arrive from `--env-kwargs` JSON and YAML configs as well as from Python, so a wrong type must stop
the constructor with a ValueError that names the argument, not fail later inside a comparison or a reset.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

Rewards = TypeVar("Rewards")


def positive_int(name: str, value: Any, *, optional: bool = False, maximum: int | None = None) -> int | None:
    """`value` as an int of at least 1 and at most `maximum` (or None where `optional`); booleans and floats such as
    1.5 are refused. A `maximum` keeps a huge value (10**12 from a typo) from failing later as a MemoryError."""
    if value is None and optional:
        return None
    if (isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral) or value < 1
            or (maximum is not None and value > maximum)):
        allowed = "a positive integer" if maximum is None else f"an integer from 1 to {maximum:,}"
        raise ValueError(f"{name} must be {allowed}{' or None' if optional else ''}, got {value!r}")
    return int(value)


def flag(name: str, value: Any) -> bool:
    """`value` as a bool; anything else is refused, as the string "false" would otherwise switch the flag on."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


class FiniteRewards:
    """Base of every env's reward-size dataclass: each field must be a finite number, however it was built (a NaN
    reward would pass through returns and advantages into the loss)."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{type(self).__name__}.{field.name} must be a finite number, got {value!r}")


def reward_sizes(cls: type[Rewards], rewards: Rewards | Mapping[str, Any] | None) -> Rewards:
    """An env's reward dataclass from an instance, a mapping of its fields (as JSON gives), or None (defaults)."""
    if rewards is None:
        return cls()
    if isinstance(rewards, cls):
        return rewards
    names = [field.name for field in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if not isinstance(rewards, Mapping):
        raise ValueError(f"rewards must be a {cls.__name__}, a mapping of its fields such as {{{names[0]!r}: 1.0}} "
                         f"or None, got {type(rewards).__name__}")
    unknown = [key for key in rewards if key not in names]
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; the fields are {names}")
    for key, value in rewards.items():
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{cls.__name__}.{key} must be a finite number, got {value!r}")
    return cls(**{key: float(value) for key, value in rewards.items()})
