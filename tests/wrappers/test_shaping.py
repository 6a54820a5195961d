"""PotentialShaping and VectorPotentialShaping: the properties of reward-methods.md, channels, names, batching."""

from __future__ import annotations

import doctest

import gymnasium as gym
import numpy as np
import pytest
import torch

import creditgym  # noqa: F401
import creditgym.wrappers.shaping as shaping_module
from creditgym.agents.vec import TorchVecEnv
from creditgym.envs.shop.expert import ShopExpert
from creditgym.envs.sokoban.bank import load_bank
from creditgym.envs.sokoban.env import SokobanEnv
from creditgym.envs.sokoban.solver import solve
from creditgym.envs.sokoban.vector import SokobanVectorEnv
from creditgym.envs.testing import check_conformance
from creditgym.envs.tooluse.expert import ToolUseExpert
from creditgym.wrappers.potentials import potential_names
from creditgym.wrappers.shaping import PotentialShaping, VectorPotentialShaping, make_shaped_vec_env

SOKOBAN = "creditgym/Sokoban-6x6-2b-v0"
SOKOBAN_POTENTIALS = ["boxes_on_target", "box_distance", "solver_distance", "solver_distance_tight"]


def test_doctest() -> None:
    assert doctest.testmod(shaping_module).failed == 0


def _solving_policy(env: gym.Env, detours: int, rng: np.random.Generator):
    """`detours` random moves, then the solver's plan from wherever that left the board (re-planned when stuck)."""
    plan: list[int] = []
    moves = [0]

    def policy() -> int:
        moves[0] += 1
        if moves[0] <= detours:
            return int(rng.integers(4))
        if not plan:
            plan.extend(solve(env.unwrapped.level) or [int(rng.integers(4))])
        return int(plan.pop(0))

    return policy


def _phi(env: gym.Env, name: str) -> float:
    """The potential computed here, independently of the wrapper."""
    if name.startswith("solver_distance"):  # start boards are solvable, so both dead-lock values agree here
        return -float(len(solve(env.unwrapped.level)))
    return env.unwrapped.potential(name)


@pytest.mark.parametrize("name", SOKOBAN_POTENTIALS)
def test_gamma_one_terminated_return_shifts_by_minus_initial_potential(name: str) -> None:
    env = PotentialShaping(gym.make(SOKOBAN, max_episode_steps=60), name, gamma=1.0)
    rng = np.random.default_rng(0)
    terminations = 0
    for seed in range(6):
        env.reset(seed=seed)
        phi0 = _phi(env, name)
        policy = _solving_policy(env, detours=3, rng=rng)
        shaped = unshaped = 0.0
        terminated = truncated = False
        while not (terminated or truncated):
            _, reward, terminated, truncated, info = env.step(policy())
            shaped += reward
            unshaped += info["reward_components"]["task"] + info["reward_components"]["format"]
        if terminated:  # detours can deadlock a level; those episodes truncate
            terminations += 1
            assert shaped - unshaped == pytest.approx(-phi0, abs=1e-9)
    assert terminations >= 3


def test_gamma_one_shaping_channel_sums_to_minus_initial_potential_exactly() -> None:
    env = PotentialShaping(gym.make(SOKOBAN, max_episode_steps=500), "box_distance", gamma=1.0)
    env.reset(seed=3)
    phi0 = env.unwrapped.potential("box_distance")
    assert phi0 < 0
    policy = _solving_policy(env, detours=5, rng=np.random.default_rng(1))
    total, terminated = 0.0, False
    while not terminated:
        _, _, terminated, _, info = env.step(policy())
        total += info["reward_components"]["shaping"]
    assert total == -phi0


@pytest.mark.parametrize("name", ["box_distance", "boxes_on_target"])
def test_discounted_truncated_return_shifts_by_gamma_t_final_minus_initial(name: str) -> None:
    gamma, limit = 0.9, 15
    env = PotentialShaping(gym.make(SOKOBAN, max_episode_steps=limit), name, gamma=gamma)
    rng = np.random.default_rng(2)
    seen_change = False
    for seed in range(6):
        env.reset(seed=seed)
        phi0 = env.unwrapped.potential(name)
        shaped = unshaped = 0.0
        t, terminated, truncated = 0, False, False
        while not (terminated or truncated):
            _, reward, terminated, truncated, info = env.step(int(rng.integers(4)))
            components = info["reward_components"]
            shaped += gamma**t * reward
            unshaped += gamma**t * (components["task"] + components["format"])
            t += 1
        if terminated:
            continue
        phi_t = env.unwrapped.potential(name)
        seen_change = seen_change or phi_t != phi0
        assert t == limit
        assert shaped - unshaped == pytest.approx(gamma**limit * phi_t - phi0, abs=1e-9)
    assert seen_change


def test_terminated_with_discount_drops_final_potential() -> None:
    gamma = 0.95
    env = PotentialShaping(gym.make(SOKOBAN, max_episode_steps=500), "boxes_on_target", gamma=gamma)
    env.reset(seed=5)
    phi0 = env.unwrapped.potential("boxes_on_target")
    policy = _solving_policy(env, detours=0, rng=np.random.default_rng(0))
    shaped = unshaped = 0.0
    t, terminated = 0, False
    while not terminated:
        boxes_before = env.unwrapped.potential("boxes_on_target")
        _, reward, terminated, _, info = env.step(policy())
        shaped += gamma**t * reward
        unshaped += gamma**t * (info["reward_components"]["task"] + info["reward_components"]["format"])
        t += 1
    # Both boxes are placed at the end, yet Φ(s_T) counts as 0 on termination.
    assert env.unwrapped.potential("boxes_on_target") == 2
    assert info["reward_components"]["shaping"] == -boxes_before
    assert shaped - unshaped == pytest.approx(-phi0, abs=1e-9)


def test_other_channels_and_observations_untouched() -> None:
    plain = gym.make(SOKOBAN, obs_mode="text")
    shaped = PotentialShaping(gym.make(SOKOBAN, obs_mode="text"), "box_distance", gamma=0.99)
    obs_a, info_a = plain.reset(seed=11)
    obs_b, info_b = shaped.reset(seed=11)
    assert obs_a == obs_b and info_b["reward_components"] == {**info_a["reward_components"], "shaping": 0.0}
    rng = np.random.default_rng(3)
    for _ in range(40):
        action = ["Up", "Down", "Left", "Right", "jump"][int(rng.integers(5))]
        obs_a, reward_a, term_a, trunc_a, info_a = plain.step(action)
        obs_b, reward_b, term_b, trunc_b, info_b = shaped.step(action)
        assert (obs_a, term_a, trunc_a) == (obs_b, term_b, trunc_b)
        components = dict(info_b["reward_components"])
        assert components.pop("shaping") == pytest.approx(reward_b - reward_a, abs=1e-12)
        assert components == info_a["reward_components"]
        assert reward_b == sum(info_b["reward_components"].values())
        assert {k: v for k, v in info_b.items() if k != "reward_components"} == {
            k: v for k, v in info_a.items() if k != "reward_components"}
        if term_a or trunc_a:
            break


def test_custom_callable_and_second_channel() -> None:
    def boxes_times_ten(env: gym.Env) -> float:
        return 10.0 * env.unwrapped.state()["boxes_on_target"]

    env = PotentialShaping(gym.make(SOKOBAN), boxes_times_ten, gamma=0.5)
    env = PotentialShaping(env, "box_distance", gamma=1.0, channel="distance")
    _, info = env.reset(seed=5)
    boxes = info["boxes_on_target"]
    distance = env.unwrapped.potential("box_distance")
    policy = _solving_policy(env, detours=4, rng=np.random.default_rng(0))
    terminated = truncated = False
    while not (terminated or truncated):
        _, reward, terminated, truncated, info = env.step(policy())
        new_boxes = 0 if terminated else info["boxes_on_target"]
        new_distance = 0.0 if terminated else env.unwrapped.potential("box_distance")
        assert info["reward_components"]["shaping"] == 0.5 * 10.0 * new_boxes - 10.0 * boxes
        assert info["reward_components"]["distance"] == new_distance - distance
        assert reward == pytest.approx(sum(info["reward_components"].values()), abs=1e-12)
        boxes, distance = new_boxes, new_distance
    assert terminated
    with pytest.raises(ValueError, match="already set"):
        PotentialShaping(env, "boxes_on_target", gamma=1.0, channel="distance").reset(seed=0)


def test_bad_potential_names_list_valid_ones() -> None:
    with pytest.raises(ValueError) as error:
        PotentialShaping(gym.make(SOKOBAN), "box_distnace", gamma=0.99)
    for name in potential_names():
        assert name in str(error.value)
    with pytest.raises(ValueError, match="is for ShopEnv.*box_distance"):
        PotentialShaping(gym.make(SOKOBAN), "shop_progress", gamma=0.99)
    with pytest.raises(ValueError, match="has no batched form.*box_distance"):
        VectorPotentialShaping(SokobanVectorEnv(2), "shop_progress", gamma=0.99)
    with pytest.raises(ValueError, match="gamma"):
        PotentialShaping(gym.make(SOKOBAN), "box_distance", gamma=1.5)
    with pytest.raises(ValueError, match="no batched torch env"):
        make_shaped_vec_env("creditgym/Sanity-Bandit-v0", 2, "cpu", potential="box_distance")


@pytest.mark.parametrize(("env_id", "name", "expert"), [
    ("creditgym/ToolUse-Hard-v1", "plan_progress", ToolUseExpert()),
    ("creditgym/Shop-v1", "shop_progress", ShopExpert()),
])
def test_env_hook_potentials(env_id: str, name: str, expert) -> None:
    env = PotentialShaping(gym.make(env_id), name, gamma=1.0)
    env.reset(seed=0)
    last, progress, terminated, truncated = env.unwrapped.potential(), [], False, False
    while not (terminated or truncated):
        _, _, terminated, truncated, info = env.step(expert(env))
        current = 0.0 if terminated else env.unwrapped.potential()
        assert info["reward_components"]["shaping"] == current - last
        progress.append(current - last)
        last = current
    assert max(progress) > 0


# -- batched ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SOKOBAN_POTENTIALS)
def test_batched_matches_single_wrapper(name: str) -> None:
    variant, num_envs, limit, gamma = "6x6-2b", 8, 12, 0.9
    bank = load_bank(variant)
    vec = VectorPotentialShaping(SokobanVectorEnv(num_envs, levels=variant, max_episode_steps=limit), name, gamma)
    _, info = vec.reset(seed=4)
    assert torch.equal(info["reward_components"]["shaping"], torch.zeros(num_envs))
    singles = [PotentialShaping(SokobanEnv(levels=variant), name, gamma) for _ in range(num_envs)]
    for i, env in enumerate(singles):
        env.reset(options={"level": bank[int(info["level_index"][i])]})
    rng = np.random.default_rng(5)
    plans: dict[int, list[int]] = {}
    ends = {"terminated": 0, "truncated": 0}
    for _ in range(40):
        actions = []
        for i, env in enumerate(singles):
            if i % 2 == 0 and not plans.get(i):
                plans[i] = list(solve(env.unwrapped.level) or [0])
            actions.append(plans[i].pop(0) if i % 2 == 0 else int(rng.integers(4)))
        _, reward, terminated, truncated, info = vec.step(torch.tensor(actions))
        for i, env in enumerate(singles):
            _, single_reward, single_term, _, single_info = env.step(actions[i])
            assert info["reward_components"]["shaping"][i].item() == np.float32(
                single_info["reward_components"]["shaping"])
            assert reward[i].item() == pytest.approx(single_reward, abs=1e-5)
            assert bool(terminated[i]) == single_term
            if terminated[i] or truncated[i]:
                ends["terminated" if terminated[i] else "truncated"] += 1
                env.reset(options={"level": bank[int(info["level_index"][i])]})
                plans[i] = []
    assert ends["terminated"] > 3 and ends["truncated"] > 3


def test_vector_state_round_trip_and_torch_vec_env() -> None:
    envs = make_shaped_vec_env(SOKOBAN, 6, "cpu", {"max_episode_steps": 10}, potential="box_distance", gamma=0.99)
    assert isinstance(envs, TorchVecEnv) and envs.native
    assert envs.single_observation_space.shape == (7, 6, 6) and envs.num_envs == 6
    envs.reset(seed=0)
    shaped = envs.env
    assert isinstance(shaped, VectorPotentialShaping)
    generator = torch.Generator().manual_seed(0)
    actions = [torch.randint(4, (6,), generator=generator) for _ in range(25)]
    for action in actions[:7]:
        envs.step(action)
    state = shaped.get_state()
    first = [envs.step(a)[4]["reward_components"]["shaping"].clone() for a in actions[7:]]
    shaped.set_state(state)
    second = [envs.step(a)[4]["reward_components"]["shaping"].clone() for a in actions[7:]]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert any(bool(a.ne(0).any()) for a in first)


def test_scale_multiplies_the_potential_in_both_wrappers() -> None:
    single = {scale: PotentialShaping(gym.make(SOKOBAN), "box_distance", 0.9, scale=scale) for scale in (1.0, 0.1)}
    batched = {scale: make_shaped_vec_env(SOKOBAN, 4, "cpu", potential="solver_distance", gamma=0.9, scale=scale)
               for scale in (1.0, 0.1)}
    for scale in (1.0, 0.1):
        single[scale].reset(seed=3)
        batched[scale].reset(seed=3)
    rng = np.random.default_rng(0)
    nonzero = {"single": 0, "batched": 0}
    for _ in range(30):
        action = int(rng.integers(4))
        shaping = {s: env.step(action)[4]["reward_components"]["shaping"] for s, env in single.items()}
        assert shaping[0.1] == pytest.approx(0.1 * shaping[1.0])
        nonzero["single"] += shaping[1.0] != 0
        actions = torch.as_tensor(rng.integers(4, size=4))
        shaping = {s: env.step(actions)[4]["reward_components"]["shaping"] for s, env in batched.items()}
        assert torch.allclose(shaping[0.1], 0.1 * shaping[1.0])
        nonzero["batched"] += int(shaping[1.0].ne(0).sum())
    assert min(nonzero.values()) > 5  # so the comparisons above were not all 0 == 0
    with pytest.raises(ValueError, match="scale must be a positive number"):
        PotentialShaping(gym.make(SOKOBAN), "box_distance", 0.9, scale=0.0)


def test_vector_needs_same_step_autoreset() -> None:
    sync = gym.vector.SyncVectorEnv([lambda: gym.make(SOKOBAN)], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    with pytest.raises(ValueError, match="same-step"):
        VectorPotentialShaping(sync, "box_distance", gamma=0.99)


@pytest.mark.parametrize(("env_id", "name", "kwargs"), [
    ("creditgym/Sokoban-6x6-1b-v0", "box_distance", {}),
    ("creditgym/Sokoban-6x6-1b-v0", "solver_distance", {"obs_mode": "text"}),
    ("creditgym/Shop-v1", "shop_progress", {}),
])
def test_shaped_envs_pass_the_conformance_suite(env_id: str, name: str, kwargs: dict) -> None:
    """Its copy check pickles the env mid-episode: built-in potentials are closures, so they pickle by name."""
    check_conformance(lambda **extra: PotentialShaping(gym.make(env_id, **kwargs, **extra), name, gamma=0.99),
                      num_steps=60)
