"""Ray rollout workers: the same trajectories as the local vector env, recovery from killed actors, PPO on Ray."""

from __future__ import annotations

import functools
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import ray
import torch

import creditgym  # noqa: F401
from creditgym.agents.ppo import PPO, PPOConfig
from creditgym.agents.vec import make_vec_env
from creditgym.distributed import LocalEnvPool, RayEnvPool, RayVecEnv, split_evenly
from creditgym.distributed.vec import concat_infos
from creditgym.envs.sokoban.vector import SokobanVectorEnv
from creditgym.trajectories import RUN_TRAJECTORIES, load_trajectories

torch.set_num_threads(1)
SOKOBAN = "creditgym/Sokoban-6x6-1b-v0"
# Short episodes, so a few dozen steps cover many autoresets; the mask checks that action_mask flows through.
SOKOBAN_KWARGS = {"max_episode_steps": 6, "action_mask": True}
CPU = torch.device("cpu")


def _assert_same(expected: Any, actual: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert expected.keys() == actual.keys(), where
        for name in expected:
            _assert_same(expected[name], actual[name], f"{where}[{name!r}]")
    else:
        assert expected.dtype == actual.dtype and torch.equal(expected, actual), where


def _random_actions(num_envs: int, steps: int, num_actions: int = 4) -> torch.Tensor:
    return torch.randint(num_actions, (steps, num_envs), generator=torch.Generator().manual_seed(7))


def _replay(envs: Any, actions: torch.Tensor, seed: int = 3, on_step: Any = None) -> list[Any]:
    """Every output of a reset and then `actions`, step by step."""
    outputs = [envs.reset(seed)]
    for t, action in enumerate(actions):
        if on_step is not None:
            on_step(t)
        outputs.append(envs.step(action))
    return outputs


def _assert_same_trajectories(expected: list[Any], actual: list[Any]) -> None:
    for t, (want, got) in enumerate(zip(expected, actual, strict=True)):
        for k, (a, b) in enumerate(zip(want, got, strict=True)):
            _assert_same(a, b, f"step {t} output {k}")


# -- without Ray --------------------------------------------------------------------------------------------------
def test_split_sokoban_batches_draw_the_same_levels_as_one_batch() -> None:
    whole = SokobanVectorEnv(7, max_episode_steps=3)
    parts = [SokobanVectorEnv(4, max_episode_steps=3, first_env=0, total_envs=7),
             SokobanVectorEnv(3, max_episode_steps=3, first_env=4, total_envs=7)]
    levels = [whole.reset(seed=5)[1]["level_index"]]
    split = [torch.cat([part.reset(seed=5)[1]["level_index"] for part in parts])]
    for action in _random_actions(7, 12):
        levels.append(whole.step(action)[4]["level_index"])
        split.append(torch.cat([parts[0].step(action[:4])[4]["level_index"],
                                parts[1].step(action[4:])[4]["level_index"]]))
    assert torch.equal(torch.stack(levels), torch.stack(split))
    assert len(torch.stack(levels).unique()) > 7  # boards were reloaded with new levels
    with pytest.raises(ValueError, match="within the batch"):
        SokobanVectorEnv(4, first_env=5, total_envs=8)


def test_joined_final_obs_rows_follow_the_joined_mask() -> None:
    first = {"success": np.array([True, False]), "_final_obs": np.array([False, True]), "level": np.array([7, 8]),
             "final_obs": np.array([[1.0]]), "reward_components": {"task": np.array([1.0, 2.0])}}
    second = {"success": np.array([False]), "reward_components": {"task": np.array([3.0])}}
    third = {"success": np.array([True, True]), "_final_obs": np.array([True, True]),
             "final_obs": np.array([[2.0], [3.0]]), "reward_components": {"task": np.array([4.0, 5.0])}}
    joined = concat_infos([first, second, third], [2, 1, 2])
    assert joined["_final_obs"].tolist() == [False, True, False, True, True]
    assert joined["final_obs"].tolist() == [[1.0], [2.0], [3.0]]
    assert joined["reward_components"]["task"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert joined["level"].tolist() == [7, 8, 0, 0, 0]  # slices that did not report a key get zeros
    assert "_final_obs" not in concat_infos([second, second], [1, 1])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RayVecEnv("creditgym/Nope-v0", 4, 2), "creditgym list"),
        (lambda: RayVecEnv(SOKOBAN, 4, 0), "at least 1 worker"),
        (lambda: RayVecEnv(SOKOBAN, 2, 3), "use fewer workers"),
        (lambda: RayVecEnv("creditgym/Sanity-Bandit-v0", 4, 2, shaping="box_distance"), "needs a batched torch env"),
        (lambda: PPOConfig(rollout_backend="spark"), "rollout_backend must be local or ray"),
        (lambda: PPOConfig(rollout_backend="ray", num_envs=4, num_workers=8), "num_workers must be between 1"),
        (lambda: PPOConfig(ray_address="auto"), "only used with rollout_backend='ray'"),
    ],
)
def test_bad_input_says_what_to_change_before_starting_ray(make: Any, message: str) -> None:
    ray_was_up = ray.is_initialized()
    with pytest.raises(ValueError, match=message):
        make()
    assert ray.is_initialized() == ray_was_up


# -- with a local Ray -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [1, 2])
@pytest.mark.parametrize(("env_id", "env_kwargs", "num_actions"),
                         [(SOKOBAN, SOKOBAN_KWARGS, 4), ("creditgym/Sanity-Bandit-v0", {}, 4)])
def test_same_trajectories_as_the_local_vector_env(local_ray: None, env_id: str, env_kwargs: dict, num_actions: int,
                                                   num_workers: int) -> None:
    actions = _random_actions(7, 20, num_actions)  # 7 envs: the 2 workers get uneven slices
    local = make_vec_env(env_id, 7, CPU, env_kwargs)
    expected = _replay(local, actions)
    envs = RayVecEnv(env_id, 7, num_workers, env_kwargs=env_kwargs)
    try:
        assert envs.single_observation_space == local.single_observation_space
        assert envs.single_action_space == local.single_action_space
        _assert_same_trajectories(expected, _replay(envs, actions))
    finally:
        envs.close()


def test_killed_workers_are_replaced_without_changing_the_trajectories(local_ray: None) -> None:
    actions = _random_actions(8, 24)
    expected = _replay(make_vec_env(SOKOBAN, 8, CPU, SOKOBAN_KWARGS), actions)
    # A snapshot every 10 steps: the kill at step 4 replays reset + steps, the one at 15 a snapshot + steps.
    envs = RayVecEnv(SOKOBAN, 8, 2, env_kwargs=SOKOBAN_KWARGS, snapshot_every=10)
    killer: list[threading.Timer] = []

    def kill(t: int) -> None:
        if t == 4:
            ray.kill(envs.workers.actors[1])
        if t == 15:  # from another thread, while the driver steps
            killer.append(threading.Timer(0.001, ray.kill, [envs.workers.actors[0]]))
            killer[0].start()

    try:
        _assert_same_trajectories(expected, _replay(envs, actions, on_step=kill))
        killer[0].join()
        envs.step(actions[0])  # in case the thread's kill came after the last step
        assert envs.restarts == 2
        # get_state / set_state go back exactly, and refuse a state of another split.
        state = envs.get_state()
        after = [envs.step(action) for action in actions[:5]]
        envs.set_state(state)
        _assert_same_trajectories(after, [envs.step(action) for action in actions[:5]])
        with pytest.raises(ValueError, match="num_workers=3"):
            envs.set_state({"ray_workers": [{}, {}, {}], "sizes": [3, 3, 2]})
        with pytest.raises(ValueError, match="rollout_backend='local'"):
            envs.set_state(make_vec_env(SOKOBAN, 8, CPU, {}).get_state())
    finally:
        envs.close()


def test_an_env_error_in_a_worker_arrives_as_itself(local_ray: None) -> None:
    with pytest.raises(ValueError, match="obs_mode"):
        RayVecEnv(SOKOBAN, 2, 1, env_kwargs={"obs_mode": "text"})
    # The failed worker was killed; a worker left holding its CPU would make later ones wait forever.
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0) < 2:
        assert time.monotonic() < deadline, "the failed worker still holds its CPU"
        time.sleep(0.1)


def test_env_pool_steps_text_envs_like_local_envs_and_survives_a_kill(local_ray: None) -> None:
    make_env = functools.partial(gym.make, "creditgym/MiniGridText-DoorKey-5x5-v0")
    local = LocalEnvPool([make_env() for _ in range(5)])
    pool = RayEnvPool(make_env, 5, 2)
    moves = ["turn left", "go forward", "<answer>turn right</answer>", "pick up", "toggle", "jump"]
    try:
        assert len(pool) == 5 and pool.spec.id == "creditgym/MiniGridText-DoorKey-5x5-v0"
        seeds = [11, 11, 12, 12, 13]
        assert local.reset_many(range(5), seeds) == pool.reset_many(range(5), seeds)
        for turn in range(8):
            live = [i for i in range(5) if i != turn % 5]
            texts = [moves[(i + turn) % len(moves)] for i in live]
            if turn == 3:
                ray.kill(pool.workers.actors[1])
            assert local.step_many(live, texts) == pool.step_many(live, texts)
        assert pool.restarts == 1
        assert pool[4].step("go forward") == local[4].step("go forward")
        assert pool[-1].reset(seed=3) == local[4].reset(seed=3)
        with pytest.raises(ValueError, match="distinct env indices"):
            pool.step_many([0, 0], ["turn left", "turn left"])
    finally:
        pool.close()


def test_ppo_on_ray_trains_exactly_as_locally_through_a_kill_and_a_resume(local_ray: None, tmp_path: Path) -> None:
    common = dict(env_id=SOKOBAN, env_kwargs={"max_episode_steps": 10}, num_envs=6, num_steps=8, total_steps=192,
                  hidden=16, shaping="box_distance", progress=False, tensorboard=False, runs_dir=str(tmp_path),
                  checkpoint_every=0, record_envs=4)
    local = PPO(PPOConfig(**common, run_name="local"))
    local.learn()

    trainer = PPO(PPOConfig(**common, run_name="ray", rollout_backend="ray", num_workers=2))
    step, steps = trainer.envs.step, []

    def step_then_kill(actions: torch.Tensor) -> Any:
        steps.append(1)
        if len(steps) == 12:  # 4 steps into the second rollout: a snapshot and 3 steps to replay
            ray.kill(trainer.envs.workers.actors[1])
        return step(actions)

    trainer.envs.step = step_then_kill
    try:
        trainer.learn(until_steps=96)
        assert trainer.envs.restarts == 1
        # In the run folder: a checkpoint loaded from elsewhere moves the run (and its recordings) there.
        shutil.copy(tmp_path / "ray" / "checkpoint.pt", tmp_path / "ray" / "at_96_steps.pt")
        trainer.learn(until_steps=144)  # moves the workers' envs past the checkpoint, then back with set_state
        trainer.load_checkpoint(tmp_path / "ray" / "at_96_steps.pt")
        trainer.learn()
    finally:
        trainer.envs.close()
    for name, value in local.agent.state_dict().items():
        assert torch.equal(value, trainer.agent.state_dict()[name]), name
    assert trainer.global_step == local.global_step == 192
    # The recorded episodes too, with the board states read off the workers' observations.
    recorded = [load_trajectories(tmp_path / name / RUN_TRAJECTORIES) for name in ("local", "ray")]
    assert len(recorded[0]) > 4 and all(step.state for episode in recorded[0] for step in episode.steps)
    assert [e.to_dict() for e in recorded[0]] == [e.to_dict() for e in recorded[1]]


def test_split_evenly_gives_contiguous_uneven_slices() -> None:
    assert split_evenly(7, 3) == [3, 2, 2]
    assert split_evenly(4, 4) == [1, 1, 1, 1]


def test_llm_trainer_with_ray_workers_trains_exactly_as_with_local_envs(local_ray: None, tmp_path: Any) -> None:
    # The LLM trainer's text envs step in Ray actors: same episodes, so bit-identical weights after an update.
    from tests.agents.llm.helpers import make_trainer

    def weights(trainer: Any) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in trainer.policy.model.named_parameters()}

    local = make_trainer(tmp_path / "local", iterations=1, env_id="creditgym/Sanity-WordBandit-v0")
    local_metrics = local.learn()
    remote = make_trainer(tmp_path / "ray", iterations=1, env_id="creditgym/Sanity-WordBandit-v0",
                          rollout_backend="ray", num_workers=2)
    remote_metrics = remote.learn()
    assert remote_metrics["charts/episodic_return"] == local_metrics["charts/episodic_return"]
    local_weights = weights(local)
    for name, value in weights(remote).items():
        assert torch.equal(value, local_weights[name]), name
    with pytest.raises(ValueError, match="num_workers must be between 1"):
        make_trainer(tmp_path / "bad", rollout_backend="ray", num_workers=99)
