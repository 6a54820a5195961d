"""Reward wrappers at episode boundaries and under vectorisation: every reset and step reports the same channels,
summing to the reward, also through PPO's vector adapter, and bad envs or potentials are refused up front.
(Found by an audit of the wrappers in real use; the formulas themselves are tested beside each wrapper.)"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import creditgym  # noqa: F401
from creditgym.agents.vec import NonFiniteError, TorchVecEnv
from creditgym.envs.sokoban.solver import solve
from creditgym.envs.sokoban.text import ACTION_NAMES
from creditgym.wrappers.llm_reward import LLMCodeReward
from creditgym.wrappers.llm_reward.wrapper import VectorLLMCodeReward
from creditgym.wrappers.shaping import PotentialShaping, VectorPotentialShaping

MOVED = '''
def compute_dense_reward(state, action, next_state):
    return (1.0 if next_state["player"] != state["player"] else 0.0), {}
'''
ENV = "creditgym/Sokoban-6x6-1b-v0"


def test_a_program_reward_channel_is_reported_at_reset_and_a_clash_is_found_there() -> None:
    env = LLMCodeReward(gym.make(ENV), MOVED)
    try:
        assert env.reset(seed=0)[1]["reward_components"]["llm_reward"] == 0.0
        twice = LLMCodeReward(env, MOVED)
        with pytest.raises(ValueError, match="'llm_reward' is already set by an inner wrapper"):
            twice.reset(seed=0)
        twice.sandbox.close()
    finally:
        env.close()


def test_torch_vec_env_keeps_a_channel_that_only_the_ended_steps_report() -> None:
    """When every env ends on the same step, the top level holds only reset infos; the channels of the steps are
    in final_info, and were dropped where the reset info lacked them."""
    class StepOnlyBonus(gym.Wrapper):  # a third-party wrapper that adds its channel at steps only
        def step(self, action):
            obs, reward, terminated, truncated, info = self.env.step(action)
            components = {**info["reward_components"], "bonus": 0.01}
            return obs, reward + 0.01, terminated, truncated, {**info, "reward_components": components}

    def make() -> gym.Env:
        return StepOnlyBonus(gym.make(ENV, max_episode_steps=3))

    vec = TorchVecEnv(SyncVectorEnv([make, make], autoreset_mode=AutoresetMode.SAME_STEP), torch.device("cpu"))
    vec.reset(seed=0)
    for _ in range(3):  # both envs are cut by the time limit on the third step
        _, reward, _, truncated, info = vec.step(torch.tensor([0, 1]))
    assert truncated.all()
    assert set(info["reward_components"]) == {"task", "format", "bonus"}
    torch.testing.assert_close(sum(info["reward_components"].values()), reward)
    vec.close()


def test_a_restored_batched_program_reward_sees_the_boards_it_restored() -> None:
    env = VectorLLMCodeReward(gym.make_vec(ENV, num_envs=4), MOVED)
    try:
        env.reset(seed=0)
        generator = torch.Generator().manual_seed(0)
        for _ in range(3):
            env.step(torch.randint(0, 4, (4,), generator=generator))
        snapshot = env.get_state()
        actions = [torch.randint(0, 4, (4,), generator=generator) for _ in range(9)]
        first = [env.step(a)[4]["reward_components"]["llm_reward"] for a in actions]
        env.set_state(snapshot)
        again = [env.step(a)[4]["reward_components"]["llm_reward"] for a in actions]
        for a, b in zip(first, again, strict=True):
            torch.testing.assert_close(a, b)
    finally:
        env.close()


def test_a_batched_potential_that_is_not_finite_raises_as_the_single_env_one_does() -> None:
    def broken(obs: torch.Tensor) -> torch.Tensor:
        values = torch.zeros(len(obs), dtype=torch.float64)
        values[1] = math.nan
        return values

    env = VectorPotentialShaping(gym.make_vec(ENV, num_envs=3), broken, 0.9)
    with pytest.raises(NonFiniteError, match=r"is not finite for envs \[1\]"):
        env.reset(seed=0)


def test_batched_shaping_refuses_a_gymnasium_vector_env_with_the_wrapper_that_fits() -> None:
    vec = SyncVectorEnv([lambda: gym.make(ENV)] * 2, autoreset_mode=AutoresetMode.SAME_STEP)
    with pytest.raises(ValueError, match="wrap each env in PotentialShaping instead") as refused:
        VectorPotentialShaping(vec, "box_distance", 0.9)
    vec.close()
    # The fix the message suggests runs as written (without the sync mode, gymnasium refuses wrappers for an id with
    # its own batched entry point).
    suggestion = str(refused.value).split("e.g. ", 1)[1]
    assert suggestion.startswith("gymnasium.make_vec(id, n, vectorization_mode='sync', wrappers=[")
    shaped = eval(suggestion, {"gymnasium": gym, "PotentialShaping": PotentialShaping, "id": ENV, "n": 2,  # noqa: S307
                               "name": "box_distance", "gamma": 0.9})
    shaped.reset(seed=0)
    _, _, _, _, info = shaped.step(np.zeros(2, dtype=np.int64))
    assert "shaping" in info["reward_components"]
    shaped.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: on the CPU every tensor is on the env's device")
def test_batched_shaping_keeps_a_numpy_potential_on_the_envs_device() -> None:
    env = VectorPotentialShaping(gym.make_vec(ENV, num_envs=2, vectorization_mode="vector_entry_point", device="cuda"),
                                 lambda obs: np.ones(obs.shape[0]), 0.9)
    obs, _ = env.reset(seed=0)
    _, reward, _, _, info = env.step(torch.zeros(2, dtype=torch.long, device=obs.device))
    assert env._last_potential.device == obs.device and reward.device == obs.device


def test_envs_without_the_declared_hooks_are_refused_with_what_they_lack() -> None:
    with pytest.raises(ValueError, match=r"info\['reward_components'\], which this env does not report"):
        PotentialShaping(gym.make("CartPole-v1"), lambda env: 0.0, 0.9).reset(seed=0)
    with pytest.raises(ValueError, match=r"declares no state\(\)"):
        LLMCodeReward(gym.make("creditgym/Sanity-Bandit-v0"), MOVED)


def test_shaping_stops_when_the_episode_ends_even_if_the_env_takes_more_steps() -> None:
    """creditgym's text envs answer a step after the end as an invalid action; shaping paid γΦ(s) for it."""
    env = PotentialShaping(gym.make(ENV, obs_mode="text"), "boxes_on_target", 0.9)
    env.reset(seed=0)
    plan = solve(env.unwrapped.level)
    assert plan is not None
    for move in plan:
        *_, terminated, _, info = env.step(f"<answer>{ACTION_NAMES[move]}</answer>")
    assert terminated  # Φ(solved) is 1 box on target: the old wrapper paid 0.9 for the next step
    _, reward, _, _, info = env.step("<answer>Up</answer>")
    assert info["reward_components"]["shaping"] == 0.0
    assert reward == pytest.approx(sum(info["reward_components"].values()))
    assert np.isclose(reward, info["reward_components"]["format"])
