"""MiniGrid and BabyAI as text: the view as sentences, robust action parsing, and solvable registered ids."""

from __future__ import annotations

import json
import random
import time

import gymnasium as gym
import numpy as np
import pytest
from minigrid.core.actions import Actions
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX
from minigrid.core.world_object import Ball
from minigrid.envs import EmptyEnv

from creditgym.envs.minigrid_scripted import ScriptedMiniGridPolicy
from creditgym.envs.minigrid_text import (
    ACTION_NAMES,
    MAX_OBSERVATION_LENGTH,
    MiniGridTextEnv,
    MiniGridTextRewards,
    describe_view,
    parse_action,
)

TEXT_IDS = [
    "creditgym/MiniGridText-DoorKey-5x5-v0",
    "creditgym/BabyAIText-GoToObj-v0",
    "creditgym/BabyAIText-GoToLocal-v0",
]


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("turn left", Actions.left),
        ("Turn LEFT.", Actions.left),
        ("right", Actions.right),
        ("go forward", Actions.forward),
        ("Move forward!", Actions.forward),
        ("pick up the key", Actions.pickup),
        ("pickup", Actions.pickup),
        ("drop it", Actions.drop),
        ("toggle", Actions.toggle),
        ("open the door", Actions.toggle),
        ("done", Actions.done),
        ("I think I should <answer>go forward</answer>", Actions.forward),
        ("<answer>left</answer> no wait <answer>turn right</answer>", Actions.right),
        ("\\boxed{pick up}", Actions.pickup),
        ("Let me think about whether to turn left. " * 20 + "<answer>toggle</answer>", Actions.toggle),
    ],
)
def test_parse_action(text: str, action: Actions) -> None:
    assert parse_action(text) == action


@pytest.mark.parametrize(
    "text",
    ["", "jump", "turn left then go forward", "<answer></answer>", "x" * 300 + " forward", None, 2, "import os"],
)
def test_parse_action_rejects(text) -> None:
    assert parse_action(text) is None


def test_every_action_name_parses_to_itself() -> None:
    for action, name in ACTION_NAMES.items():
        assert parse_action(name) == action


def _view(cells: dict[tuple[int, int], tuple[str, str, str]]) -> np.ndarray:
    image = np.zeros((7, 7, 3), np.uint8)
    image[:, :, 0] = OBJECT_TO_IDX["empty"]
    for (x, y), (kind, colour, state) in cells.items():
        image[x, y] = (OBJECT_TO_IDX[kind], COLOR_TO_IDX[colour], STATE_TO_IDX[state])
    return image


def test_describe_view_offsets_doors_and_nearest_walls() -> None:
    # The agent sits at (3, 6) looking towards y = 0; x > 3 is to its right.
    image = _view(
        {
            (2, 4): ("key", "red", "open"),
            (3, 5): ("door", "blue", "locked"),
            (5, 6): ("ball", "green", "open"),
            (3, 2): ("wall", "grey", "open"),
            (3, 1): ("wall", "grey", "open"),
            (0, 6): ("wall", "grey", "open"),
            (6, 3): ("wall", "grey", "open"),  # not straight ahead or aside: not described
        }
    )
    assert describe_view(image) == [
        "You see a green ball 2 steps right.",
        "You see a locked blue door 1 step forward.",
        "You see a red key 2 steps forward and 1 step left.",
        "You see a wall 4 steps forward.",
        "You see a wall 3 steps left.",
    ]
    image[0, 0, 0] = OBJECT_TO_IDX["unseen"]
    assert len(describe_view(image)) == 5


def test_observation_has_mission_view_and_carrying() -> None:
    env = gym.make("creditgym/MiniGridText-DoorKey-5x5-v0")
    obs, info = env.reset(seed=0)
    assert obs.startswith("Mission: use the key to open the door and then get to the goal.")
    assert "You see" in obs and "go forward" in info["instructions"]
    assert info["available_actions"] == list(ACTION_NAMES.values())
    policy = ScriptedMiniGridPolicy(env.unwrapped)
    policy.reset()
    for _ in range(20):
        action = policy.act()
        obs, *_ = env.step(action)
        if action == "pick up":
            break
    assert "You are carrying a yellow key." in obs


@pytest.mark.parametrize("env_id", TEXT_IDS)
def test_scripted_policy_succeeds(env_id: str) -> None:
    env = gym.make(env_id)
    policy = ScriptedMiniGridPolicy(env.unwrapped)
    episodes, successes = 20, 0
    for episode in range(episodes):
        env.reset(seed=episode)
        policy.reset()
        terminated = truncated = False
        while not (terminated or truncated):
            _, reward, terminated, truncated, info = env.step(policy.act())
        successes += info["success"]
        assert info["success"] == (reward > 0)
    assert successes / episodes >= 0.9


@pytest.mark.parametrize("env_id", TEXT_IDS)
def test_the_mission_is_paid_once(env_id: str) -> None:
    # MiniGrid plays on after success: GoToObj paid 0.944, 0.93, ... again for every later step
    env = gym.make(env_id, max_episode_steps=10_000)
    policy = ScriptedMiniGridPolicy(env.unwrapped)
    env.reset(seed=0)
    policy.reset()
    terminated = False
    while not terminated:
        _, reward, terminated, _, info = env.step(policy.act())
    assert info["success"] and reward > 0
    for name in ACTION_NAMES.values():
        observation, reward, _, _, info = env.step(name)
        assert info["invalid_action"] and info["reward_components"]["task"] == 0.0
        assert "The episode is over; call reset()." in observation


def test_invalid_text_spends_no_minigrid_step() -> None:
    env = MiniGridTextEnv(env_id="MiniGrid-DoorKey-5x5-v0", rewards=MiniGridTextRewards(invalid_action=-0.3))
    obs, _ = env.reset(seed=0)
    before = env.state()
    bad, reward, terminated, truncated, info = env.step("fly to the moon")
    assert info["invalid_action"] is True and reward == -0.3
    assert info["reward_components"] == {"task": 0.0, "format": -0.3}
    assert bad.startswith("Invalid action 'fly to the moon'") and bad.endswith(obs)
    assert env.state() == before and env.state()["step_count"] == 0
    good, _, _, _, info = env.step("turn left")
    assert info["invalid_action"] is False and "Invalid" not in good
    assert env.state()["agent_dir"] == (before["agent_dir"] - 1) % 4 and env.state()["step_count"] == 1


def test_state_is_plain_data() -> None:
    env = MiniGridTextEnv(env_id="BabyAI-GoToObj-v0")
    env.reset(seed=1)
    state = env.state()
    assert json.loads(json.dumps(state)) == state
    assert np.asarray(state["grid"]).shape == (env.minigrid.width, env.minigrid.height, 3)
    assert state["mission"].startswith("go to")


def test_wraps_any_minigrid_instance_and_renders() -> None:
    env = MiniGridTextEnv(env=EmptyEnv(size=5), render_mode="ansi")
    obs, _ = env.reset(seed=0)
    assert obs.startswith("Mission: get to the green goal square.") and env.render() == obs
    frames = MiniGridTextEnv(env_id="MiniGrid-Empty-5x5-v0", render_mode="rgb_array")
    frames.reset(seed=0)
    frame = frames.render()
    assert isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.dtype == np.uint8
    with pytest.raises(ValueError, match="exactly one"):
        MiniGridTextEnv()
    with pytest.raises(ValueError, match="rgb_array"):
        MiniGridTextEnv(env=EmptyEnv(size=5), render_mode="rgb_array")
    with pytest.raises(TypeError, match="MiniGridEnv"):
        MiniGridTextEnv(env=gym.make("CartPole-v1").unwrapped)  # type: ignore[arg-type]


@pytest.mark.parametrize("env_id", TEXT_IDS)
def test_same_seed_same_world_and_time_limit_matches_minigrid(env_id: str) -> None:
    a, b = gym.make(env_id), gym.make(env_id)
    assert a.reset(seed=5)[0] == b.reset(seed=5)[0]
    assert a.unwrapped.state() == b.unwrapped.state()
    assert a.spec.max_episode_steps == a.unwrapped.minigrid.max_steps


@pytest.mark.parametrize("env_id", TEXT_IDS)
def test_same_seed_same_world_whatever_the_global_rngs(env_id: str) -> None:
    def episode_starts(global_seed: int) -> list[tuple[str, dict]]:
        random.seed(global_seed)
        np.random.seed(global_seed)
        env = gym.make(env_id)
        starts = [(env.reset(seed=11)[0], env.unwrapped.state())]
        random.random(), np.random.random()  # perturb between resets too
        starts += [(env.reset()[0], env.unwrapped.state()) for _ in range(3)]
        return starts

    first = episode_starts(0)
    assert first == episode_starts(12345)
    layouts = {json.dumps(_start(env_id, seed)) for seed in range(8)}
    assert len(layouts) > 1


def _start(env_id: str, seed: int) -> dict:
    env = gym.make(env_id)
    env.reset(seed=seed)
    return env.unwrapped.state()


@pytest.mark.parametrize("env_id", TEXT_IDS)
def test_minigrid_is_seeded_only_from_the_envs_np_random(env_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = gym.make(env_id)
    world = env.unwrapped.minigrid
    seeds: list[int | None] = []
    inner_reset = world.reset

    def recording_reset(*, seed: int | None = None, options: dict | None = None):
        seeds.append(seed)
        return inner_reset(seed=seed, options=options)

    monkeypatch.setattr(world, "reset", recording_reset)
    python_state, numpy_state = random.getstate(), np.random.get_state()[1].copy()
    env.reset(seed=3)
    env.reset()
    policy = ScriptedMiniGridPolicy(env.unwrapped)
    policy.reset()
    for _ in range(10):
        env.step(policy.act())
    rng = gym.utils.seeding.np_random(3)[0]
    assert seeds == [int(rng.integers(2**31 - 1)), int(rng.integers(2**31 - 1))]
    assert random.getstate() == python_state and (np.random.get_state()[1] == numpy_state).all()


@pytest.mark.parametrize("env_id", TEXT_IDS)
def test_scripted_policy_solves_100_seeds(env_id: str) -> None:
    env = gym.make(env_id)
    policy = ScriptedMiniGridPolicy(env.unwrapped)
    failures = []
    for seed in range(100):
        env.reset(seed=seed)
        policy.reset()
        terminated = truncated = False
        while not (terminated or truncated):
            _, reward, terminated, truncated, info = env.step(policy.act())
        if not (terminated and info["success"] and reward > 0):
            failures.append(seed)
    assert failures == []


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"env_id": "MiniGrid-Empty-5x5-v0", "env_kwargs": {"size": 2}}, ValueError,
         r"cannot create MiniGrid-Empty-5x5-v0 with env_kwargs=\{'size': 2\}: a failed MiniGrid assertion"),
        ({"env_id": "MiniGrid-Empty-5x5-v0", "env_kwargs": {"agent_view_size": 4}}, ValueError, "agent_view_size"),
        ({"env_id": "BabyAI-GoToObj-v0", "env_kwargs": {"room_size": 1}}, ValueError, "room_size"),
        ({"env_id": "MiniGrid-Empty-5x5-v0", "env_kwargs": {"size": "big"}}, ValueError, r"\{'size': 'big'\}"),
        ({"env_id": "MiniGrid-Empty-5x5-v0", "env_kwargs": {"sise": 6}}, ValueError, "unexpected keyword argument"),
        ({"env_id": "MiniGrid-Empty-5x5-v0", "env_kwargs": {"render_mode": "human"}}, ValueError,
         "pass render_mode to MiniGridTextEnv"),
        ({"env_id": "MiniGrid-Empty-5x5-v0", "env_kwargs": [("size", 6)]}, TypeError, "env_kwargs must be a dict"),
        ({"env": EmptyEnv(size=5), "env_kwargs": {"size": 6}}, ValueError, "env_kwargs applies to env_id only"),
        ({"env_id": 5}, TypeError, "env_id must be a MiniGrid/BabyAI id string"),
        ({"env_id": "MiniGrid-Nope-v0"}, gym.error.Error, "MiniGrid-Nope"),
        ({"env_id": "CartPole-v1"}, TypeError, "expected a minigrid MiniGridEnv, got CartPoleEnv"),
        ({"env_id": "MiniGrid-Empty-5x5-v0", "render_mode": "human"}, ValueError, "render_mode must be one of"),
        ({"env_id": "MiniGrid-Empty-5x5-v0", "max_invalid_actions": "3"}, ValueError, "got '3'"),
        ({"env_id": "MiniGrid-Empty-5x5-v0", "max_invalid_actions": 2.5}, ValueError, "got 2.5"),
        # MiniGrid checks these only when it lays out a grid: they failed at reset with "low >= high", or
        # exhausted memory.
        ({"env_id": "MiniGrid-DoorKey-5x5-v0", "env_kwargs": {"size": 3}}, ValueError,
         r"cannot create MiniGrid-DoorKey-5x5-v0 with env_kwargs=\{'size': 3\}"),
        ({"env_id": "MiniGrid-DoorKey-5x5-v0", "env_kwargs": {"size": 10**6}}, ValueError,
         "env_kwargs size=1000000 is too large for MiniGrid-DoorKey-5x5-v0: grid sides go up to 100"),
    ],
)
def test_bad_arguments_are_explained(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        MiniGridTextEnv(**kwargs)


def test_env_kwargs_checked_by_a_trial_layout_leave_the_first_reset_random() -> None:
    layouts = {MiniGridTextEnv(env_id="MiniGrid-DoorKey-5x5-v0", env_kwargs={"size": 6}).reset()[0] for _ in range(8)}
    assert len(layouts) > 1  # the trial layout's seed 0 did not stick


class _Crowded(EmptyEnv):
    """A room full of balls, seen through a wide view: more to describe than the observation space holds."""

    def _gen_grid(self, width: int, height: int) -> None:
        super()._gen_grid(width, height)
        for x in range(1, width - 1):
            for y in range(1, height - 1):
                if self.grid.get(x, y) is None and (x, y) != tuple(self.agent_pos):
                    self.grid.set(x, y, Ball("purple"))


def test_huge_views_fit_the_observation_space() -> None:
    env = MiniGridTextEnv(env=_Crowded(size=21, agent_view_size=19), render_mode="ansi")
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs) and len(obs) == MAX_OBSERVATION_LENGTH
    assert env.render() == obs
    obs, *_ = env.step("jump")
    assert env.observation_space.contains(obs) and obs.startswith("Invalid action 'jump'")
    obs, *_ = env.step("turn left")
    assert env.observation_space.contains(obs)


@pytest.mark.parametrize("tail", ["\n", " "])
@pytest.mark.parametrize("opening", ["<answer>", "\\boxed{"])
def test_a_reply_that_degenerates_into_whitespace_is_read_at_once(opening: str, tail: str) -> None:
    start = time.perf_counter()  # a hang guard (8,000 newlines took seconds), not a timing of the parser
    assert parse_action(opening + tail * 20_000) is None
    assert time.perf_counter() - start < 5
    assert parse_action("thinking " * 40 + "\\boxed{\\text{turn left}}") == Actions.left


def test_instructions_give_the_agents_view_size() -> None:
    _, info = gym.make("creditgym/MiniGridText-DoorKey-5x5-v0", env_kwargs={"agent_view_size": 5}).reset(seed=0)
    assert "a 5x5 square ahead" in info["instructions"]
