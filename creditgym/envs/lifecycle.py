"""The refusal of a call that needs an episode before the first `reset()`, the same in every env.

`gym.make` puts gymnasium's `OrderEnforcing` in front of every registered env, but `env.unwrapped`, direct
construction and the batched Sokoban env have no such guard: without this check they played an empty board (and paid
Sokoban's solve bonus), divided by zero, or failed deep inside minigrid or torch.
"""

from __future__ import annotations

import gymnasium


class ResetNeeded(gymnasium.error.ResetNeeded, RuntimeError):
    """A step or render before the first reset. It is gymnasium's `ResetNeeded`, which `OrderEnforcing` raises for
    the same mistake, and a `RuntimeError`, which the envs raise for other calls out of order."""


def require_reset(has_reset: bool, method: str) -> None:
    """Raise `ResetNeeded` naming `method` unless `reset()` has run."""
    if not has_reset:
        raise ResetNeeded(f"{method}() was called before reset(); call reset() first")
