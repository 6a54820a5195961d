"""The sanity-check envs: one-step bandit contract and bad actions."""

from __future__ import annotations

import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import creditgym  # noqa: F401  (registers the ids)


def test_bandit_is_one_terminated_step_and_passes_gymnasiums_checker() -> None:
    env = gym.make("creditgym/Sanity-Bandit-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns that `env` is wrapped: the wrappers are what is under test
        check_env(env, skip_render_check=True)  # a 1-step time limit failed here: each step was also truncated
    obs, _ = env.reset(seed=0)
    arm = int(obs.argmax())
    _, reward, terminated, truncated, info = env.step(arm)
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(arm)


@pytest.mark.parametrize("action", [-1, 4, 10**20, "0"])
def test_bandit_refuses_actions_that_are_not_arms(action: object) -> None:
    env = gym.make("creditgym/Sanity-Bandit-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="arm index"):
        env.step(action)


@pytest.mark.parametrize("num_arms", [1, 10**12, 2.0])
def test_bandit_refuses_arm_counts_out_of_range(num_arms: object) -> None:
    # 10**12 arms used to end in a MemoryError building the one-hot observation space.
    with pytest.raises(ValueError, match="num_arms must be"):
        gym.make("creditgym/Sanity-Bandit-v0", num_arms=num_arms)
    with pytest.raises(ValueError, match="from 2 to 10,000"):
        gym.make("creditgym/Sanity-Bandit-v0", num_arms=10_001)


@pytest.mark.parametrize("env_id", ["creditgym/Sanity-Bandit-v0", "creditgym/Sanity-WordBandit-v0"])
def test_render_without_a_render_mode_returns_none(env_id: str) -> None:
    env = gym.make(env_id)
    env.reset(seed=0)
    assert env.render() is None
    assert isinstance(gym.make(env_id, render_mode="ansi").unwrapped.render(), str)


def test_word_bandit_lists_its_doors_while_rounds_remain() -> None:
    env = gym.make("creditgym/Sanity-WordBandit-v0", num_rounds=2)
    _, info = env.reset(seed=0)
    assert info["available_actions"] == ["A", "B"]
    _, _, _, _, info = env.step("A")
    assert info["available_actions"] == ["A", "B"]
    _, _, terminated, _, info = env.step(info["available_actions"][1])
    assert terminated and info["available_actions"] == [] and info["reward_components"]["task"] == 1.0
