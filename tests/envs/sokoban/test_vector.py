"""SokobanVectorEnv matches SokobanEnv exactly, autoresets, seeds and checkpoints."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch

import creditgym  # noqa: F401
from creditgym.envs.lifecycle import ResetNeeded
from creditgym.envs.sokoban.bank import load_bank
from creditgym.envs.sokoban.env import SokobanEnv
from creditgym.envs.sokoban.solver import solve
from creditgym.envs.sokoban.vector import SokobanVectorEnv

NUM_ENVS = 16
MAX_STEPS = 25


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


class _Driver:
    """Half the boards follow the solver's plan (so episodes terminate), half move at random (so they truncate)."""

    def __init__(self, bank, rng: np.random.Generator) -> None:
        self.bank, self.rng, self.plans = bank, rng, {}

    def start(self, env_index: int, level_index: int) -> None:
        self.plans[env_index] = list(solve(self.bank[level_index]) or []) if env_index % 2 == 0 else []

    def action(self, env_index: int) -> int:
        plan = self.plans[env_index]
        return int(plan.pop(0)) if plan else int(self.rng.integers(4))


@pytest.mark.parametrize(("variant", "obs_mode"), [("6x6-1b", "array"), ("8x8-2b", "array"), ("6x6-2b", "egocentric"),
                                                   ("10x10-3b", "egocentric")])
def test_batched_env_matches_single_env_exactly(variant: str, obs_mode: str) -> None:
    bank = load_bank(variant)
    vec = SokobanVectorEnv(NUM_ENVS, levels=variant, max_episode_steps=MAX_STEPS, action_mask=True, obs_mode=obs_mode)
    obs, info = vec.reset(seed=7)
    singles = [SokobanEnv(levels=variant, action_mask=True, obs_mode=obs_mode) for _ in range(NUM_ENVS)]
    driver = _Driver(bank, np.random.default_rng(0))
    elapsed = [0] * NUM_ENVS
    for i, env in enumerate(singles):
        single_obs, single_info = env.reset(options={"level": bank[int(info["level_index"][i])]})
        assert np.array_equal(obs[i].numpy(), single_obs)
        assert np.array_equal(info["action_mask"][i].numpy(), single_info["action_mask"])
        driver.start(i, int(info["level_index"][i]))
    terminations = truncations = 0
    for _ in range(150):
        actions = [driver.action(i) for i in range(NUM_ENVS)]
        obs, reward, terminated, truncated, info = vec.step(torch.tensor(actions))
        final_rows = iter(info["final_obs"]) if "final_obs" in info else iter(())
        for i, env in enumerate(singles):
            single_obs, single_reward, single_term, _, single_info = env.step(actions[i])
            elapsed[i] += 1
            single_trunc = elapsed[i] >= MAX_STEPS and not single_term
            assert reward[i].item() == np.float32(single_reward)
            assert info["reward_components"]["task"][i].item() == np.float32(single_reward)
            assert (terminated[i].item(), truncated[i].item()) == (single_term, single_trunc)
            assert info["boxes_on_target"][i].item() == single_info["boxes_on_target"]
            assert info["success"][i].item() == single_info["success"]
            if single_term or single_trunc:
                assert info["_final_obs"][i]
                assert np.array_equal(next(final_rows).numpy(), single_obs)
                terminations += single_term
                truncations += single_trunc
                level_index = int(info["level_index"][i])
                single_obs, single_info = env.reset(options={"level": bank[level_index]})
                driver.start(i, level_index)
                elapsed[i] = 0
            assert np.array_equal(obs[i].numpy(), single_obs)
            assert np.array_equal(info["action_mask"][i].numpy(), single_info["action_mask"])
    assert terminations > 5 and truncations > 5


def test_spaces_and_dtypes() -> None:
    vec = SokobanVectorEnv(8)
    obs, info = vec.reset(seed=0)
    assert obs.shape == (8, 7, 6, 6) and obs.dtype == torch.uint8
    assert vec.single_observation_space.shape == (7, 6, 6) and vec.action_space.shape == (8,)
    _, reward, terminated, truncated, info = vec.step(torch.zeros(8, dtype=torch.int64))
    assert reward.dtype == torch.float32 and terminated.dtype == torch.bool and truncated.dtype == torch.bool
    assert torch.equal(info["reward_components"]["task"] + info["reward_components"]["format"], reward)


def test_same_seed_same_levels_and_different_seed_differs() -> None:
    def run(seed: int) -> list[torch.Tensor]:
        vec = SokobanVectorEnv(32, max_episode_steps=5)
        vec.reset(seed=seed)
        actions = torch.Generator().manual_seed(1)
        return [vec.step(torch.randint(4, (32,), generator=actions))[4]["level_index"] for _ in range(12)]

    assert all(torch.equal(a, b) for a, b in zip(run(3), run(3), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(run(3), run(4), strict=True))


def test_checkpoint_state_continues_exactly() -> None:
    vec = SokobanVectorEnv(32, max_episode_steps=10)
    vec.reset(seed=0)
    actions = torch.randint(4, (40, 32), generator=torch.Generator().manual_seed(0))
    for t in range(15):
        vec.step(actions[t])
    state = vec.get_state()
    expected = [vec.step(actions[t]) for t in range(15, 40)]
    restored = SokobanVectorEnv(32, max_episode_steps=10)
    restored.set_state(state)
    for t, (obs, reward, *_ ) in zip(range(15, 40), expected, strict=True):
        got_obs, got_reward, *_ = restored.step(actions[t])
        assert torch.equal(got_obs, obs) and torch.equal(got_reward, reward)


def test_make_vec_uses_the_batched_env_and_rejects_text() -> None:
    vec = gym.make_vec("creditgym/Sokoban-6x6-1b-v0", num_envs=4)
    assert isinstance(vec.unwrapped, SokobanVectorEnv) and vec.unwrapped.max_episode_steps == 120
    with pytest.raises(ValueError, match="vectorization_mode='sync'"):
        gym.make_vec("creditgym/Sokoban-6x6-1b-v0", num_envs=4, obs_mode="text")


def test_reset_with_explicit_levels_and_bad_index() -> None:
    vec = SokobanVectorEnv(4)
    _, info = vec.reset(options={"level_index": [0, 1, 2, 3]})
    assert info["level_index"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="level_index"):
        vec.reset(options={"level_index": [0, 1, 2, 10**9]})


def test_step_refuses_actions_of_the_wrong_shape_or_range() -> None:
    vec = SokobanVectorEnv(2)
    vec.reset(seed=0)
    before = vec._flat.clone()
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        vec.step(np.array([0]))  # this used to broadcast one move to every board
    with pytest.raises(ValueError, match=r"the moves 0-3 .*got \[0, 4\]"):
        vec.step(np.array([0, 4]))
    assert torch.equal(vec._flat, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_runs_on_cuda_and_keeps_tensors_there() -> None:
    vec = SokobanVectorEnv(64, device="cuda")
    obs, _ = vec.reset(seed=0)
    obs, reward, *_ = vec.step(torch.zeros(64, dtype=torch.int64, device="cuda"))
    assert obs.is_cuda and reward.is_cuda


@pytest.mark.parametrize("actions", [torch.tensor([0.5, 1.7]), None, "up", ["up", "down"],
                                     torch.tensor([float("nan"), 0.0]), torch.tensor([True, False]),
                                     torch.tensor([5, 0]), np.array([0.5, 1.0])])
def test_actions_that_are_not_moves_say_what_step_takes(actions: object) -> None:
    # Floats were truncated to moves, None and "up" gave bare TypeErrors, and NaN showed as -9223372036854775808.
    vec = gym.make_vec("creditgym/Sokoban-6x6-1b-v0", num_envs=2, vectorization_mode="vector_entry_point")
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions must be the moves 0-3 \(up, down, left, right\) as whole numbers, "
                                         r"one per board; got"):
        vec.step(actions)


@pytest.mark.parametrize("actions", [[1, 2], np.array([1, 2]), torch.tensor([1.0, 2.0]),
                                     torch.tensor([1, 2], dtype=torch.int32)])
def test_whole_number_actions_of_any_type_move_like_int64(actions: object) -> None:
    vec, reference = (SokobanVectorEnv(2) for _ in range(2))
    vec.reset(seed=0)
    reference.reset(seed=0)
    obs, reward, *_ = vec.step(actions)
    expected_obs, expected_reward, *_ = reference.step(torch.tensor([1, 2]))
    assert torch.equal(obs, expected_obs) and torch.equal(reward, expected_reward)


def test_a_device_torch_does_not_know_is_refused() -> None:
    with pytest.raises(ValueError, match="device must be a torch device such as 'cpu'.*got 'bogus'"):
        gym.make_vec("creditgym/Sokoban-6x6-1b-v0", num_envs=2, device="bogus")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_cuda_device_says_so() -> None:
    with pytest.raises(ValueError, match="torch sees no CUDA device .*use device='cpu'"):
        gym.make_vec("creditgym/Sokoban-6x6-1b-v0", num_envs=2, device="cuda")


def test_step_before_reset_says_to_call_reset() -> None:
    vec = gym.make_vec("creditgym/Sokoban-6x6-1b-v0", num_envs=3)  # no OrderEnforcing in front of the batched env
    with pytest.raises(ResetNeeded, match=r"call reset\(\) first"):  # was torch's "IndexError: index out of range"
        vec.step(np.array([0, 1, 2]))


def test_a_refused_reset_leaves_the_level_stream_unchanged() -> None:
    kept, refused = SokobanVectorEnv(3), SokobanVectorEnv(3)
    kept.reset(seed=1)
    refused.reset(seed=1)
    # A NumPy seed was a raw torch TypeError; -1 reseeded the level generator before gymnasium refused it.
    for bad_seed in (np.int64(3), -1):
        with pytest.raises(gym.error.Error, match="Seed must be"):
            refused.reset(seed=bad_seed)
    with pytest.raises(ValueError, match="level_index"):
        refused.reset(seed=5, options={"level_index": [0, 1, 10**9]})
    assert refused.reset()[1]["level_index"].tolist() == kept.reset()[1]["level_index"].tolist()
    refused.reset(seed=2**64)  # seeds past torch's 64 bits, which gymnasium's single envs take too


def test_reset_mask_resets_only_the_chosen_boards() -> None:
    vec = SokobanVectorEnv(3)
    vec.reset(seed=0)
    played, *_ = vec.step(torch.tensor([1, 2, 3]))
    levels = vec.level_index.clone()
    obs, info = vec.reset(options={"reset_mask": np.array([False, True, False])})  # all three were reset before
    assert torch.equal(obs[[0, 2]], played[[0, 2]]) and torch.equal(info["level_index"][[0, 2]], levels[[0, 2]])
    fresh, _ = SokobanVectorEnv(3).reset(options={"level_index": info["level_index"]})
    assert torch.equal(obs[1], fresh[1])
    for bad in ([False, True, False], np.array([0, 1, 0]), np.zeros(3, bool), np.ones(4, bool)):
        with pytest.raises(ValueError, match=r"options\['reset_mask'\] must be a bool"):
            vec.reset(options={"reset_mask": bad})
    with pytest.raises(ValueError, match="the first reset"):
        SokobanVectorEnv(3).reset(options={"reset_mask": np.array([True, False, True])})


def test_render_mode_is_refused_with_the_way_to_render() -> None:
    # Was "TypeError: __init__() got an unexpected keyword argument 'render_mode'".
    with pytest.raises(ValueError, match="does not render.*vectorization_mode='sync'"):
        gym.make_vec("creditgym/Sokoban-6x6-1b-v0", num_envs=2, render_mode="rgb_array")


def test_a_pickled_batched_env_plays_on_like_the_original() -> None:
    # pickle (Ray, multiprocessing) gave the copy boards apart from the buffer its rules update: its observations
    # drifted from the first step, and an autoreset crashed
    vec = SokobanVectorEnv(8, levels="6x6-1b", max_episode_steps=10)
    vec.reset(seed=3)
    copy = pickle.loads(pickle.dumps(vec))
    rng = np.random.default_rng(0)
    for _ in range(60):
        actions = torch.as_tensor(rng.integers(4, size=8))
        first, second = vec.step(actions), copy.step(actions.clone())
        for a, b in zip(first[:4], second[:4], strict=True):
            assert torch.equal(a, b)


def _reference_run(variant: str, obs_mode: str, seed: int, steps: int, num_envs: int, first_env: int,
                   total_envs: int, rewards: dict[str, float] | None = None) -> tuple[list[list[int]], list[tuple]]:
    """The actions and every output the batched env must give, built from single `SokobanEnv`s and the documented
    level stream: one `torch.randint` over the whole batch at reset and at every step, from a generator seeded with
    the reset seed, whose entry for a board is its next level when its episode ends."""
    bank = load_bank(variant)
    generator = torch.Generator().manual_seed(seed)

    def draw() -> list[int]:
        return torch.randint(len(bank), (total_envs,), generator=generator)[first_env:first_env + num_envs].tolist()

    singles = [SokobanEnv(levels=variant, action_mask=True, obs_mode=obs_mode, rewards=rewards)
               for _ in range(num_envs)]
    driver = _Driver(bank, np.random.default_rng(seed))
    levels, elapsed = draw(), [0] * num_envs
    first = [env.reset(options={"level": bank[level]}) for env, level in zip(singles, levels, strict=True)]
    for i, level in enumerate(levels):
        driver.start(i, level)
    records = [(np.stack([obs for obs, _ in first]), {
        "task": np.zeros(num_envs, np.float32), "success": np.zeros(num_envs, bool),
        "boxes_on_target": np.array([info["boxes_on_target"] for _, info in first]),
        "level_index": np.array(levels), "action_mask": np.stack([info["action_mask"] for _, info in first])})]
    all_actions = []
    for _ in range(steps):
        actions = [driver.action(i) for i in range(num_envs)]
        next_levels = draw()
        rows = [env.step(action) for env, action in zip(singles, actions, strict=True)]
        obs, final_obs, infos = [], [], []
        terminated = np.array([row[2] for row in rows])
        for i, (single_obs, _, single_term, _, single_info) in enumerate(rows):
            elapsed[i] += 1
            if single_term or elapsed[i] >= MAX_STEPS:
                final_obs.append(single_obs)
                levels[i], elapsed[i] = next_levels[i], 0
                single_obs, single_info = singles[i].reset(options={"level": bank[levels[i]]})
                driver.start(i, levels[i])
            obs.append(single_obs)
            infos.append(single_info)
        done = terminated | (np.array(elapsed) == 0)
        reward = np.array([row[1] for row in rows], np.float32)
        info = {"task": reward, "success": terminated, "level_index": np.array(levels),
                "boxes_on_target": np.array([row[4]["boxes_on_target"] for row in rows]),
                "action_mask": np.stack([single_info["action_mask"] for single_info in infos])}
        if final_obs:
            info.update(final_obs=np.stack(final_obs), _final_obs=done)
        records.append((np.stack(obs), info, reward, terminated, done & ~terminated))
        all_actions.append(actions)
    return all_actions, records


# Rewards unlike the defaults, so that no move's reward in the lookup tables can come from the default table.
_CUSTOM_REWARDS = {"step": -0.3, "box_on_target": 0.7, "box_off_target": -1.3, "solved": 5.1}


@pytest.mark.parametrize(("variant", "obs_mode", "num_envs", "first_env", "total_envs", "action_mask", "rewards"), [
    ("6x6-1b", "array", 24, 0, 24, True, None), ("6x6-1b", "array", 9, 5, 20, False, None),
    ("8x8-2b", "array", 12, 0, 12, False, None), ("6x6-2b", "egocentric", 12, 3, 16, True, None),
    ("10x10-3b", "egocentric", 8, 0, 8, False, None), ("10x10-3b", "array", 8, 0, 8, True, None),
    ("6x6-2b", "array", 12, 0, 12, True, _CUSTOM_REWARDS)])
def test_a_seeded_run_gives_every_output_of_the_reference(variant: str, obs_mode: str, num_envs: int, first_env: int,
                                                          total_envs: int, action_mask: bool,
                                                          rewards: dict[str, float] | None) -> None:
    # Every output of a whole run, kept and compared only at the end: a tensor that a later step changes in place
    # (an observation sharing the env's buffers, say) fails here even if each step was right when it was returned.
    actions, expected = _reference_run(variant, obs_mode, 5, 90, num_envs, first_env, total_envs, rewards)
    vec = SokobanVectorEnv(num_envs, levels=variant, max_episode_steps=MAX_STEPS, obs_mode=obs_mode,
                           action_mask=action_mask, first_env=first_env, total_envs=total_envs, rewards=rewards)
    got = [vec.reset(seed=5)] + [vec.step(torch.tensor(row)) for row in actions]
    ended = solved = 0
    for (obs, *step, info), (expected_obs, expected_info, *expected_step) in zip(got, expected, strict=True):
        assert obs.dtype == torch.uint8 and np.array_equal(obs.numpy(), expected_obs)
        components = info.pop("reward_components")
        assert torch.equal(components["format"], torch.zeros(num_envs))
        if step:
            reward, terminated, truncated = step
            assert reward is components["task"] and reward.dtype == torch.float32
            assert terminated.dtype == truncated.dtype == torch.bool
            for value, expected_value in zip(step, expected_step, strict=True):
                assert np.array_equal(value.numpy(), expected_value)
        if not action_mask:
            del expected_info["action_mask"]
        assert set(info) | {"task"} == set(expected_info)
        assert np.array_equal(components["task"].numpy(), expected_info.pop("task"))
        for key, value in expected_info.items():
            assert np.array_equal(info[key].numpy(), value), key
        ended += len(expected_info.get("final_obs", ()))
        solved += int(expected_info["success"].sum())
    assert ended > 2 * num_envs and solved > 2


def test_the_move_index_off_the_cpu_matches_the_cpu_one() -> None:
    # CUDA has no integer matrix products, so there the row index is a sum of products: no GPU runs the tests, so the
    # other device's formula runs here on CPU tensors, on every move of a seeded run.
    vec = SokobanVectorEnv(64, levels="8x8-2b")
    vec.reset(seed=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        actions = torch.randint(4, (64,), generator=generator)
        cells = vec._cell_offsets.index_select(0, actions) + vec._player_column
        seen = vec._buffer.index_select(0, cells.view(-1)).view(-1, 6)
        on_cpu = vec._move_index(seen, actions)
        vec.device = torch.device("meta")  # any device but the CPU takes the other branch
        elsewhere = vec._move_index(seen, actions)
        vec.device = torch.device("cpu")
        assert torch.equal(on_cpu, elsewhere)
        vec.step(actions)
