"""Ray pools and vector envs in the life of a run: LLM rollouts step a pool one call per worker, dropped pools give
their CPUs back, a replacement that cannot build its envs closes the pool, errors name their env, and ids registered
only in the driver reach the workers."""

from __future__ import annotations

import functools
import gc
import time
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import ray

import creditgym  # noqa: F401
from creditgym.agents.llm.policy import Generation
from creditgym.agents.llm.rollout import RolloutCollector
from creditgym.distributed import RayEnvPool, RayVecEnv

BANDIT = "creditgym/Sanity-Bandit-v0"


def _free_cpus_within(seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while ray.available_resources().get("CPU", 0) < 2:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class _EchoPolicy:
    incremental = False

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        return [1, 2, 3]

    def generate(self, prompts: list[list[int]], **_: Any) -> list[Generation]:
        return [Generation([5], [0.0], "turn left", True) for _ in prompts]


def test_collector_steps_a_ray_pool_with_one_call_per_worker_per_turn(local_ray: None) -> None:
    # The LLM trainers stepped the pool one env at a time, each a blocking remote call: workers never ran at once
    pool = RayEnvPool(functools.partial(gym.make, "creditgym/MiniGridText-DoorKey-5x5-v0"), 4, 2)
    calls: list[str] = []
    call = pool.workers.call
    pool.workers.call = lambda method, args, **kw: (calls.append(method), call(method, args, **kw))[1]
    try:
        RolloutCollector(pool, _EchoPolicy(), group_size=2, max_turns=3, history_turns=1,
                         max_prompt_tokens=100).collect([0, 1])
        assert calls.count("reset") == 1 and calls.count("step") <= 3, calls
    finally:
        pool.close()


def test_a_ray_pool_of_array_envs_is_refused_with_the_local_message(local_ray: None) -> None:
    pool = RayEnvPool(functools.partial(gym.make, BANDIT), 2, 2)
    try:
        with pytest.raises(ValueError, match="LLM policies need text envs"):
            RolloutCollector(pool, _EchoPolicy(), group_size=2, max_turns=1, history_turns=None,
                             max_prompt_tokens=100).collect([0])
    finally:
        pool.close()


def test_dropping_a_pool_without_close_frees_its_cpus(local_ray: None) -> None:
    # A bound method kept a cycle pool -> workers -> pool: the actors kept their CPUs until the cycle collector ran,
    # and the next run of a seed sweep waited for them, then failed blaming "other jobs"
    gc.disable()
    try:
        envs = RayVecEnv(BANDIT, 2, 2)
        del envs
        assert _free_cpus_within(10), "a dropped RayVecEnv still holds its workers' CPUs"
        pool = RayEnvPool(functools.partial(gym.make, BANDIT), 2, 2)
        del pool
        assert _free_cpus_within(10), "a dropped RayEnvPool still holds its workers' CPUs"
    finally:
        gc.enable()
        gc.collect()


def test_a_replacement_whose_envs_cannot_be_built_closes_the_pool(local_ray: None, tmp_path: Any) -> None:
    broken = tmp_path / "broken"

    def make_env() -> gym.Env:
        if broken.exists():
            raise OSError("level bank is unreadable")
        return gym.make(BANDIT)

    pool = RayEnvPool(make_env, 2, 2)
    try:
        pool.reset_many([0, 1], [1, 2])
        broken.touch()
        ray.kill(pool.workers.actors[0])
        time.sleep(1)
        with pytest.raises(RuntimeError, match="could not build its envs.*closed"):
            pool.step_many([0, 1], [0, 0])
        assert pool.workers.closed
    finally:
        pool.close()


def test_an_env_id_registered_only_in_the_driver_works(local_ray: None) -> None:
    class Mine(gym.Env):
        observation_space = gym.spaces.Box(0, 1, (2,))
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
            super().reset(seed=seed)
            return np.zeros(2, np.float32), {}

        def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:
            return np.zeros(2, np.float32), 1.0, True, False, {}

    gym.register("DriverOnly-v0", entry_point=Mine)
    try:
        envs = RayVecEnv("DriverOnly-v0", 2, 1)
        envs.close()
    finally:
        gym.registry.pop("DriverOnly-v0")


def test_an_env_error_names_the_env(local_ray: None) -> None:
    class Fragile(gym.Env):
        observation_space = gym.spaces.Discrete(3)
        action_space = gym.spaces.Discrete(3)

        def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[int, dict]:
            super().reset(seed=seed)
            return 0, {}

        def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
            if action == 2:
                raise ValueError("action 2 breaks this env")
            return 0, 0.0, False, False, {}

    pool = RayEnvPool(Fragile, 4, 2)
    try:
        pool.reset_many(range(4), range(4))
        with pytest.raises(ValueError, match=r"(?s)breaks this env.*env 3\b"):
            pool.step_many(range(4), [0, 0, 0, 2])
    finally:
        pool.close()


def test_llm_ray_options_without_ray_are_refused() -> None:
    from creditgym.agents.llm import LLMTrainConfig

    with pytest.raises(ValueError, match="only used with rollout_backend='ray'"):
        LLMTrainConfig(ray_address="auto")
    with pytest.raises(ValueError, match="num_workers must be at least 1"):
        LLMTrainConfig(num_workers=0)
