"""Timing loops shared by the scripts in benchmarks/: env steps and resets per second through gymnasium."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym


def steps_per_second(env: gym.Env, actions: Sequence[Any], seconds: float) -> float:
    """Replay `actions` in a loop for at least `seconds`, resetting on episode end; the env must be reset already."""
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        steps += len(actions)
    return steps / (time.perf_counter() - start)


def resets_per_second(env_id: str, seconds: float, *, batch: int = 256) -> float:
    """`env.reset()` calls per second through `gymnasium.make(env_id)`."""
    env = gym.make(env_id)
    env.reset(seed=0)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(batch):
            env.reset()
        count += batch
    return count / (time.perf_counter() - start)


def target_report(figures: dict[str, Any], targets: dict[str, float]) -> dict[str, dict[str, Any]]:
    """`{name: {"target", "measured", "met"}}` for each figure that has a target (higher is better)."""
    return {name: {"target": target, "measured": figures[name], "met": figures[name] >= target}
            for name, target in targets.items()}
