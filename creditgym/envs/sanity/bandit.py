"""A contextual bandit whose optimal return is exactly 1."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from creditgym.envs.arguments import positive_int
from creditgym.envs.options import reset_options

#: The most arms: each observation is a one-hot float32 vector over them.
MAX_ARMS = 10_000


class ContextBanditEnv(gym.Env):
    """Pick the arm named by the observation.

    ## Description
    Each episode is one step. The observation is a one-hot vector naming one of `num_arms` arms; pulling that
    arm pays 1, any other arm pays 0. A random policy earns 1/num_arms; the optimal policy earns exactly 1.

    ## Action Space
    `Discrete(num_arms)`.

    ## Observation Space
    `Box(0, 1, (num_arms,), float32)`, one-hot.

    ## Starting State
    The arm is drawn uniformly with `self.np_random`.

    ## Reward / Reward components
    `task`: 1 for the named arm, else 0.

    ## Episode End
    Terminated after one step; `info["success"]` when the named arm was pulled. The final observation is all
    zeros; stepping again before `reset()` raises.

    ## Arguments
    `num_arms`: 2 to `MAX_ARMS` (10,000); `render_mode` ("ansi").

    ## Registered IDs
    `creditgym/Sanity-Bandit-v0` (4 arms).

    ## Version History
    - v0: initial release.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, *, num_arms: int = 4, render_mode: str | None = None) -> None:
        if not 2 <= positive_int("num_arms", num_arms) <= MAX_ARMS:
            raise ValueError(f"num_arms must be from 2 to {MAX_ARMS:,}, got {num_arms}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        self.num_arms = num_arms
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0.0, 1.0, (num_arms,), np.float32)
        self.action_space = spaces.Discrete(num_arms)
        self._arm: int | None = None  # the named arm; None outside an episode

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._arm is None:
            raise RuntimeError("each episode is one pull; call reset() before stepping again")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an arm index in [0, {self.num_arms}), got {action!r}")
        success = int(action) == self._arm
        reward = float(success)
        self._arm = None
        obs = np.zeros(self.num_arms, np.float32)
        return obs, reward, True, False, {"reward_components": {"task": reward}, "success": success}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        reset_options(options)
        self._arm = int(self.np_random.integers(self.num_arms))
        instructions = f"Pull the arm whose index is set in the observation (one of {self.num_arms})."
        info = {"reward_components": {"task": 0.0}, "instructions": instructions}
        return self._observation(), info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return "episode over" if self._arm is None else f"arm {self._arm}"

    def _observation(self) -> np.ndarray:
        obs = np.zeros(self.num_arms, np.float32)
        obs[self._arm] = 1.0
        return obs
