"""`LLMCodeReward`: adds an LLM-written reward program's output as the `llm_reward` channel (single env)."""

from __future__ import annotations

import math
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv, VectorWrapper

from creditgym.envs.sokoban.vector import SokobanVectorEnv
from creditgym.wrappers.channels import with_channel
from creditgym.wrappers.llm_reward.describe import SokobanBatchStates
from creditgym.wrappers.llm_reward.sandbox import RewardSandbox, SandboxLimits


class LLMCodeReward(gym.Wrapper):
    """Adds `compute_dense_reward(state, action, next_state)`'s total to the reward as channel `llm_reward`.

    States come from the declared `env.unwrapped.state()`, read after reset and after every step; the program
    runs in a `RewardSandbox`, one transition per step. It augments the task reward and never replaces it. A
    program that fails static validation raises ValueError here; one that fails at run time is disqualified:
    from then on the channel is 0.0, `self.error` holds the reason and `info["llm_reward_error"]` repeats it,
    so training goes on. The episode under way then mixes two rewards (the program's before, 0 after). In a
    gymnasium vector env every copy has its own sandbox and is disqualified on its own, so a program that fails on
    some envs' states keeps paying in the others; `VectorLLMCodeReward` (batched Sokoban) disqualifies the batch.

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
        if not callable(getattr(env.unwrapped, "state", None)):
            raise ValueError(f"{type(env.unwrapped).__name__} declares no state(), the plain-data state a reward "
                             "program reads; LLMCodeReward needs an env that does (every creditgym env but the "
                             "Sanity bandits)")
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
        info = with_channel(info, self.channel, value)
        if not result.ok:
            info["llm_reward_error"] = result.error
        return obs, float(reward) + value, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._state = self.env.unwrapped.state()
        return obs, with_channel(info, self.channel, 0.0)

    def close(self) -> None:
        self.sandbox.close()
        super().close()


class ComponentStats:
    """Running count, mean, std, min, max and non-zero fraction of each reward component (Eureka's reflection)."""

    def __init__(self) -> None:
        self.columns: dict[str, list[float]] = {}

    def add(self, name: str, values: np.ndarray) -> None:
        column = self.columns.setdefault(name, [0.0, 0.0, 0.0, math.inf, -math.inf, 0.0])
        column[0] += len(values)
        column[1] += float(values.sum())
        column[2] += float((values ** 2).sum())
        column[3] = min(column[3], float(values.min()))
        column[4] = max(column[4], float(values.max()))
        column[5] += float((values != 0).sum())

    def extremes(self) -> dict[str, tuple[float, float]]:
        """(min, max) of each component: cheap, and safe where the summary's squares would overflow."""
        return {name: (column[3], column[4]) for name, column in self.columns.items()}

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, (n, total, squares, low, high, nonzero) in self.columns.items():
            mean = total / n
            out[name] = {"mean": mean, "std": math.sqrt(max(squares / n - mean ** 2, 0.0)), "min": low, "max": high,
                         "nonzero": nonzero / n, "count": n}
        return out


class VectorLLMCodeReward(VectorWrapper):
    """Adds a reward program's total to a batched Sokoban env's reward, as the `llm_reward` channel.

    States are `SokobanEnv.state()` plain data built from the boards (`SokobanBatchStates`); the sandbox is called
    once per step with every env's transition. A program disqualified during training pays 0.0 from then on and
    `self.error` says why. With `replace_task_reward` the reward is the program's alone, and a `task_removed`
    channel (minus the task channel) keeps the reward equal to the sum of the channels.
    """

    def __init__(self, env: VectorEnv, program: str, *, limits: SandboxLimits | None = None,
                 replace_task_reward: bool = False, channel: str = "llm_reward") -> None:
        super().__init__(env)
        if not isinstance(env.unwrapped, SokobanVectorEnv):
            raise ValueError(f"VectorLLMCodeReward needs creditgym's SokobanVectorEnv, got {type(env.unwrapped)}; "
                             "wrap single envs in LLMCodeReward instead")
        self.sandbox = RewardSandbox(limits=limits)
        error = self.sandbox.load(program)
        if error is not None:
            self.sandbox.close()
            raise ValueError(f"reward program not usable: {error}")
        self.channel = channel
        self.replace_task_reward = replace_task_reward
        self.states = SokobanBatchStates(env.unwrapped)
        self.stats = ComponentStats()
        self.sandbox_seconds = 0.0
        self.transitions = 0
        self._current: list[dict[str, Any]] = []

    @property
    def error(self) -> str | None:
        """Why the program was disqualified during training, or None."""
        return self.sandbox.error

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        acts = torch.as_tensor(actions).cpu().numpy()
        done = (terminated | truncated).cpu().numpy()
        next_states, current = self.states.step(acts, done)
        start = time.perf_counter()
        result = self.sandbox.evaluate(list(zip(self._current, acts.tolist(), next_states, strict=True)))
        self.sandbox_seconds += time.perf_counter() - start
        self.transitions += len(acts)
        self._current = current
        if result.ok:
            value = torch.tensor(result.rewards, dtype=reward.dtype, device=reward.device)
            self.stats.add("total", np.asarray(result.rewards))
            for name, column in result.components.items():
                self.stats.add(name, np.asarray(column))
        else:
            value = torch.zeros_like(reward)
        info = with_channel(info, self.channel, value)
        if self.replace_task_reward:
            info = with_channel(info, "task_removed", -info["reward_components"]["task"])
            reward = reward - info["reward_components"]["task"]
        return obs, reward + value, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._current = self.states.observe()
        zeros = torch.zeros_like(info["reward_components"]["task"])
        info = with_channel(info, self.channel, zeros)
        return obs, with_channel(info, "task_removed", zeros) if self.replace_task_reward else info

    def get_state(self) -> dict[str, Any]:
        """The wrapped env's state (PPO's final checkpoint asks; the sandbox itself is not checkpointed)."""
        return self.env.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.env.set_state(state)
        self._current = self.states.observe()  # the boards' states before the next step, as after a reset

    def close_extras(self, **kwargs: Any) -> None:
        self.sandbox.close()
