"""Vector envs for text observations: exact strings through Sync and Async(shared_memory=False), and a
clear refusal of the mode that corrupts them."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv

import creditgym
from creditgym.vector import UnsafeVectorizationError, has_text

ENV_ID = "creditgym/Dialogue-Gather-v0"
QUESTIONS = ["What is your budget?", "When do you want to travel?", "Where would you like to go?"]


def _reference(seeds: list[int]) -> list[list[str]]:
    """Observations of single envs: the reset, then one per question."""
    runs = []
    for seed in seeds:
        env = gym.make(ENV_ID)
        obs, _ = env.reset(seed=seed)
        runs.append([obs] + [env.step(q)[0] for q in QUESTIONS])
    return runs


def _vector_run(envs: gym.vector.VectorEnv, seeds: list[int]) -> list[tuple[str, ...]]:
    obs, _ = envs.reset(seed=seeds)
    record = [tuple(obs)]
    for question in QUESTIONS:
        obs, *_ = envs.step(np.array([question] * len(seeds), dtype=object))
        record.append(tuple(obs))
    envs.close()
    return record


def test_sync_and_async_without_shared_memory_return_the_exact_strings() -> None:
    seeds = [3, 4]
    expected = [tuple(step) for step in zip(*_reference(seeds), strict=True)]
    assert len({s for step in expected for s in step}) > len(QUESTIONS)  # varied strings, so a mix-up shows
    sync = _vector_run(SyncVectorEnv([lambda: gym.make(ENV_ID)] * 2), seeds)
    unshared = _vector_run(AsyncVectorEnv([lambda: gym.make(ENV_ID)] * 2, shared_memory=False), seeds)
    assert sync == expected
    assert unshared == expected


class _PlainText(gym.Wrapper):
    """The env under gymnasium's own Text space, which has no shared-memory guard."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        text = env.observation_space
        self.observation_space = gym.spaces.Text(max_length=text.max_length, min_length=text.min_length,
                                                 charset=text.character_set)


def test_gymnasium_shared_memory_corrupts_text() -> None:
    """Why creditgym refuses: if gymnasium fixes this, this test fails and the refusals can be relaxed."""
    envs = AsyncVectorEnv([lambda: _PlainText(gym.make(ENV_ID))] * 2, shared_memory=True)
    try:
        obs, _ = envs.reset(seed=[3, 4])
    finally:
        envs.close()
    assert list(obs) != [run[0] for run in _reference([3, 4])]


@pytest.mark.parametrize("env_id", ["creditgym/ToolUse-v1", "creditgym/Shop-v1", "creditgym/Dialogue-Gather-v0",
                                    "creditgym/MiniGridText-DoorKey-5x5-v0", "creditgym/Sanity-WordBandit-v0"])
def test_plain_gymnasium_async_refuses_creditgym_text_envs_before_any_worker_starts(env_id: str) -> None:
    # gymnasium.make_vec's "async" uses shared memory unless told otherwise; before, it returned all-'0' strings.
    import multiprocessing

    with pytest.raises(UnsafeVectorizationError, match="shared_memory': False"):
        gym.make_vec(env_id, num_envs=2, vectorization_mode="async")
    assert not multiprocessing.active_children()
    envs = gym.make_vec(env_id, num_envs=2, vectorization_mode="async", vector_kwargs={"shared_memory": False})
    try:
        obs, _ = envs.reset(seed=0)
    finally:
        envs.close()
    assert all(isinstance(o, str) and o.strip("0") for o in obs)


def test_make_vec_picks_safe_modes() -> None:
    envs = creditgym.make_vec(ENV_ID, 2)
    assert isinstance(envs, SyncVectorEnv)
    envs.close()
    envs = creditgym.make_vec(ENV_ID, 2, vectorization_mode="async")
    assert isinstance(envs, AsyncVectorEnv) and envs.shared_memory is False
    obs, _ = envs.reset(seed=[3, 4])
    envs.close()
    assert list(obs) == [run[0] for run in _reference([3, 4])]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vectorization_mode": "async", "shared_memory": True},
        {"vectorization_mode": "async", "vector_kwargs": {"shared_memory": True}},
        {"shared_memory": True},
    ],
)
def test_make_vec_refuses_shared_memory_for_text(kwargs: dict) -> None:
    with pytest.raises(UnsafeVectorizationError, match="shared_memory=False"):
        creditgym.make_vec(ENV_ID, 2, **kwargs)


def test_make_vec_checks_the_text_view_of_grid_envs() -> None:
    with pytest.raises(UnsafeVectorizationError, match="Text observations"):
        creditgym.make_vec("creditgym/Sokoban-6x6-1b-v0", 2, obs_mode="text", vectorization_mode="async",
                           shared_memory=True)
    envs = creditgym.make_vec("creditgym/Sokoban-6x6-1b-v0", 2, obs_mode="text")
    assert isinstance(envs, SyncVectorEnv)
    envs.close()
    arrays = creditgym.make_vec("creditgym/Sokoban-6x6-1b-v0", 2)  # arrays keep gymnasium's default
    assert not has_text(arrays.single_observation_space)
    arrays.close()


@pytest.mark.parametrize(
    "kwargs",
    [{"obs_mode": "rgb"}, {"render_mode": "rgb_array"}, {"wrappers": [gym.wrappers.RecordEpisodeStatistics]}],
)
def test_make_vec_falls_back_to_sync_where_the_batched_env_cannot_honour_the_request(kwargs: dict) -> None:
    with pytest.warns(UserWarning, match="using SyncVectorEnv"):
        envs = creditgym.make_vec("creditgym/Sokoban-6x6-1b-v0", 2, **kwargs)
    assert isinstance(envs, SyncVectorEnv)
    obs, _ = envs.reset(seed=0)
    assert envs.single_observation_space.contains(obs[0])
    envs.close()
    batched = creditgym.make_vec("creditgym/Sokoban-6x6-1b-v0", 2, obs_mode="egocentric", action_mask=True)
    assert type(batched.unwrapped).__name__ == "SokobanVectorEnv"
    batched.close()


def test_has_text_looks_inside_composite_spaces() -> None:
    text = gym.spaces.Text(8)
    assert has_text(gym.spaces.Dict({"a": gym.spaces.Discrete(2), "b": gym.spaces.Tuple([text])}))
    assert not has_text(gym.spaces.Dict({"a": gym.spaces.Box(0, 1, (2,))}))


def test_module_prefixed_ids_build_in_spawned_workers() -> None:
    # Spawned workers never run the parent's `import creditgym`, so they only know the ids it registers when the
    # id names the module (README, "Use"). A `python -c` parent, as there the workers cannot import __main__.
    script = """
import gymnasium as gym
envs = gym.vector.AsyncVectorEnv([lambda: gym.make("creditgym:creditgym/ToolUse-v1")] * 2, context="spawn",
                                 shared_memory=False)
print(repr(list(envs.reset(seed=3)[0])))
envs.close()
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    local = [gym.make("creditgym/ToolUse-v1").reset(seed=seed)[0] for seed in (3, 4)]
    assert result.stdout.strip() == repr(local)
