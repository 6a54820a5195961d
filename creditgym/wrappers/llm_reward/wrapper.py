"""`LLMCodeReward`: adds an LLM-written reward program's output as the `llm_reward` channel (single env)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from creditgym.wrappers.llm_reward.sandbox import RewardSandbox, SandboxLimits


class LLMCodeReward(gym.Wrapper):
    """Adds `compute_dense_reward(state, action, next_state)`'s total to the reward as channel `llm_reward`.

    States come from the declared `env.unwrapped.state()`, read after reset and after every step; the program
    runs in a `RewardSandbox`, one transition per step. It augments the task reward and never replaces it. A
    program that fails static validation raises ValueError here; one that fails at run time is disqualified:
    from then on the channel is 0.0, `self.error` holds the reason and `info["llm_reward_error"]` repeats it,
    so training goes on.

    >>> import gymnasium as gym
    >>> import creditgym
    >>> program = '''
    ... def compute_dense_reward(state, action, next_state):
    ...     return 0.5 * (next_state["boxes_on_target"] - state["boxes_on_target"]) - 0.01, {}
    ... '''
    >>> env = LLMCodeReward(gym.make("creditgym/Sokoban-6x6-1b-v0"), program)
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(0)
    >>> info["reward_components"]["llm_reward"] == 0.5 * (info["boxes_on_target"] - 0) - 0.01
    True
    >>> reward == sum(info["reward_components"].values())
    True
    >>> env.close()
    """

    def __init__(self, env: gym.Env, program: str, *, limits: SandboxLimits | None = None,
                 channel: str = "llm_reward") -> None:
        super().__init__(env)
        if not channel:
            raise ValueError("channel must be a non-empty name, e.g. 'llm_reward'")
        self.channel = channel
        self.sandbox = RewardSandbox(limits=limits)
        error = self.sandbox.load(program)
        if error is not None:
            self.sandbox.close()
            raise ValueError(f"reward program not usable: {error}")
        self._state: Any = None

    @property
    def error(self) -> str | None:
        """Why the program was disqualified during training, or None."""
        return self.sandbox.error

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        next_state = self.env.unwrapped.state()
        result = self.sandbox.evaluate([(self._state, action, next_state)])
        self._state = next_state
        value = result.rewards[0] if result.ok else 0.0
        components = info["reward_components"]
        if self.channel in components:
            raise ValueError(f"reward channel {self.channel!r} is already set by an inner wrapper; pass "
                             "channel='...' with another name")
        info = {**info, "reward_components": {**components, self.channel: value}}
        if not result.ok:
            info["llm_reward_error"] = result.error
        return obs, float(reward) + value, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._state = self.env.unwrapped.state()
        return obs, info

    def close(self) -> None:
        self.sandbox.close()
        super().close()
