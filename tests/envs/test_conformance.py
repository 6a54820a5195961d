"""The registry-wide conformance suite, and proof that the suite catches broken envs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import creditgym  # noqa: F401  (registers the ids)
from creditgym.envs import DESCRIPTIONS, obs_modes, registered_ids
from creditgym.envs.lifecycle import ResetNeeded
from creditgym.envs.testing import ConformanceError, check_conformance, check_step_before_reset

# Every env the package registers. A new env adds its id here, so none is silently dropped.
EXPECTED_IDS = {
    "creditgym/Sokoban-6x6-1b-v0",
    "creditgym/Sokoban-6x6-2b-v0",
    "creditgym/Sokoban-8x8-2b-v0",
    "creditgym/Sokoban-10x10-3b-v0",
    "creditgym/Sanity-Bandit-v0",
    "creditgym/Sanity-WordBandit-v0",
    "creditgym/Dialogue-Gather-v0",
    "creditgym/Dialogue-Gather-Hard-v0",
    "creditgym/MiniGridText-DoorKey-5x5-v0",
    "creditgym/BabyAIText-GoToObj-v0",
    "creditgym/BabyAIText-GoToLocal-v0",
    "creditgym/Shop-v1",
    "creditgym/Shop-100k-v1",
    "creditgym/ToolUse-v1",
    "creditgym/ToolUse-Easy-v1",
    "creditgym/ToolUse-Hard-v1",
}


def _cases() -> list[tuple[str, dict]]:
    """Every registered id, once per declared observation mode."""
    cases = []
    for env_id in registered_ids():
        modes = obs_modes(env_id)
        cases += [(env_id, {"obs_mode": mode}) for mode in modes] if modes else [(env_id, {})]
    return cases


def test_every_env_is_registered_and_described() -> None:
    assert set(registered_ids()) == EXPECTED_IDS
    assert len(registered_ids()) == len(EXPECTED_IDS)
    assert set(DESCRIPTIONS) == EXPECTED_IDS


@pytest.mark.parametrize("old", ["creditgym/Shop-v0", "creditgym/Shop-100k-v0", "creditgym/ToolUse-v0",
                                 "creditgym/ToolUse-Easy-v0", "creditgym/ToolUse-Hard-v0"])
def test_replaced_versions_point_to_their_successor(old: str) -> None:
    # Their rewards and splits changed (see the envs' version histories); gymnasium names the version to use
    with pytest.warns(DeprecationWarning), pytest.raises(gym.error.DeprecatedEnv, match=old.replace("-v0", "-v1")):
        gym.make(old)


@pytest.mark.parametrize(("env_id", "kwargs"), _cases(), ids=lambda v: v if isinstance(v, str) else str(v))
def test_conformance(env_id: str, kwargs: dict) -> None:
    check_conformance(env_id, **kwargs)


class _Counter(gym.Env):
    """A tiny correct env; subclasses below break one contract each."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = spaces.Box(0, 10, (1,), np.int64)
        self.action_space = spaces.Discrete(2)
        self.render_mode = render_mode
        self.count: int | None = None  # None until reset

    def step(self, action):
        if self.count is None:
            raise RuntimeError("call reset() first")
        if self.count >= 10:
            raise RuntimeError("the count is done; call reset()")
        return self._count(action)

    def _count(self, action):
        self.count = min(10, self.count + int(action))
        done = self.count >= 10
        reward = float(done)
        return np.array([self.count]), reward, done, False, self._info(reward, done)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.count = int(self.np_random.integers(0, 3))
        info = self._info(0.0, False)
        info["instructions"] = "count to ten"
        return np.array([self.count]), info

    def render(self):
        return str(self.count)

    def _info(self, reward: float, done: bool) -> dict:
        return {"reward_components": {"task": reward}, "success": done}


class _WrongComponents(_Counter):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward + 1.0, terminated, truncated, info


class _GlobalRandom(_Counter):
    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.count = int(np.random.randint(0, 3))  # the bug under test: global RNG
        return np.array([self.count]), info


class _NoInstructions(_Counter):
    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        del info["instructions"]
        return obs, info


class _BadRender(_Counter):
    def render(self):
        return self.count


class _PaysTwice(_Counter):
    def step(self, action):
        return self._count(action)  # the bug under test: stepping on after the end pays the outcome again


class _AnswerTypeVaries(_Counter):
    def _info(self, reward: float, done: bool) -> dict:
        seed = self.np_random_seed  # the bug under test: an int in some episodes, a str in others (as ToolUse's answer)
        return {**super()._info(reward, done), "answer": seed if seed % 2 == 0 else f"seed {seed}"}


class _GlobalRandomOnce(_Counter):
    start: int | None = None

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(render_mode)
        if _GlobalRandomOnce.start is None:  # the bug under test: a layout drawn from the global RNG once a process
            _GlobalRandomOnce.start = int(np.random.randint(0, 3))

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.count = self.start
        return np.array([self.count]), info


class _PaysTwiceForOneAction(_Counter):
    def step(self, action):
        if self.count is not None and self.count >= 10 and action == 1:
            raise RuntimeError("the count is done; call reset()")
        return self._count(action)  # the bug under test: action 0 after the end pays the outcome again


class _PlaysBeforeReset(_Counter):
    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(render_mode)
        self.count = 0  # the bug under test: a step before reset plays (Sokoban paid its solve bonus)


def test_suite_accepts_a_correct_env() -> None:
    check_conformance(_Counter)


@pytest.mark.parametrize(("broken", "error", "message"), [
    (_WrongComponents, ConformanceError, "reward 1.0 != sum of reward_components"),
    # the suite's own global-RNG check, or gymnasium's determinism check when that one runs first
    (_GlobalRandom, (ConformanceError, AssertionError), "used a global RNG|not equivalent for the same seed"),
    (_NoInstructions, ConformanceError, r"info\['instructions'\]"),
    (_BadRender, ConformanceError, "must return str, got int"),
    (_AnswerTypeVaries, ConformanceError, r"info\['answer'\] is a int in one step and a str in another"),
])
def test_suite_catches_broken_envs(broken: type[gym.Env], error: type[Exception] | tuple, message: str) -> None:
    # Each for its own bug: a bare raises((ConformanceError, AssertionError)) also passed if the suite tripped over
    # something else first.
    with pytest.raises(error, match=message):
        check_conformance(broken)


@pytest.mark.parametrize(("env_id", "kwargs"), _cases(), ids=lambda v: v if isinstance(v, str) else str(v))
def test_a_step_before_reset_raises(env_id: str, kwargs: dict) -> None:
    check_step_before_reset(env_id, **kwargs)


def test_the_step_before_reset_check_catches_an_env_that_plays() -> None:
    check_step_before_reset(_Counter)
    with pytest.raises(ConformanceError, match=r"step\(\) before reset\(\) returned reward"):
        check_step_before_reset(_PlaysBeforeReset)


def test_suite_runs_the_env_in_a_gymnasium_vector_env() -> None:
    # Too few steps to end an episode, so one env's infos keep one type; three copies with seeds 0, 1, 2 do not
    # (ToolUse's reference_answer broke gymnasium's vector envs so).
    with pytest.raises(ConformanceError, match="SyncVectorEnv over three copies failed"):
        check_conformance(_AnswerTypeVaries, num_steps=3)


def test_suite_catches_an_outcome_paid_after_the_end() -> None:
    with pytest.raises(ConformanceError, match="after the episode terminated"):
        check_conformance(_PaysTwice)
    # Every action is tried after the end, each on a copy: one random action found this only half the time
    for seed in range(4):
        with pytest.raises(ConformanceError, match=r"step\(0\) after the episode terminated"):
            check_conformance(_PaysTwiceForOneAction, seed=seed)


def test_suite_catches_the_global_rng_used_at_the_first_construction() -> None:
    _GlobalRandomOnce.start = None
    with pytest.raises(ConformanceError, match="used a global RNG"):
        check_conformance(_GlobalRandomOnce)


@pytest.mark.parametrize("env_id", sorted(EXPECTED_IDS))
def test_reset_options_that_are_not_a_dict_get_a_clear_error(env_id: str) -> None:
    # Bandit, WordBandit and MiniGridText used to take them silently.
    with pytest.raises(TypeError, match="reset options must be a dict"):
        gym.make(env_id).reset(options="level 3")  # this was an AttributeError on str.get


@pytest.mark.parametrize(("env_id", "kwargs", "message"), [
    # Each used to fail later with a TypeError or AttributeError ("'int' object has no attribute 'purchase'"), or
    # was taken silently: the string "false" switched the action mask on, and 1.5 invalid actions were allowed.
    ("creditgym/Sokoban-6x6-1b-v0", {"levels": None}, "levels must be a shipped bank name"),
    ("creditgym/Sokoban-6x6-1b-v0", {"levels": ""}, "levels must be a shipped bank name"),
    ("creditgym/Sokoban-6x6-1b-v0", {"action_mask": "false"}, "action_mask must be True or False"),
    ("creditgym/Sokoban-6x6-1b-v0", {"max_invalid_actions": 1.5}, "max_invalid_actions must be a positive integer"),
    ("creditgym/Sokoban-6x6-1b-v0", {"text_symbols": ["#"]}, "text_symbols must be one of"),
    ("creditgym/Shop-v1", {"rewards": 1}, "rewards must be a ShopRewards, a mapping of its fields"),
    ("creditgym/Shop-v1", {"num_products": "2000"}, "num_products must be an integer from 1 to 1,000,000"),
    ("creditgym/Shop-v1", {"max_invalid_actions": "3"}, "max_invalid_actions must be a positive integer"),
    ("creditgym/ToolUse-v1", {"rewards": "sparse"}, "rewards must be a ToolUseRewards"),
    ("creditgym/Dialogue-Gather-v0", {"rewards": {"bonus": 1.0}}, r"unknown GatherRewards fields \['bonus'\]"),
    ("creditgym/Dialogue-Gather-v0", {"tight_patience": "yes"}, "tight_patience must be True or False"),
    ("creditgym/Dialogue-Gather-v0", {"min_slots": None}, "min_slots must be a positive integer"),
    ("creditgym/Dialogue-Gather-v0", {"domains": "trip"}, "domains must be a list of domain names"),
    ("creditgym/Dialogue-Gather-v0", {"simulator": "rule-based"}, "simulator must be a UserSimulator"),
    ("creditgym/MiniGridText-DoorKey-5x5-v0", {"rewards": 1.0}, "rewards must be a MiniGridTextRewards"),
    ("creditgym/Sanity-WordBandit-v0", {"rewards": {"correct": float("nan")}},
     "WordBanditRewards.correct must be a finite number"),
    ("creditgym/Sanity-WordBandit-v0", {"num_rounds": "2"}, "num_rounds must be a positive integer"),
    ("creditgym/Sanity-Bandit-v0", {"num_arms": None}, "num_arms must be a positive integer"),
])
def test_constructor_arguments_of_the_wrong_type_are_named(env_id: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gym.make(env_id, **kwargs)


@pytest.mark.parametrize(("env_id", "kwargs"), [
    # MiniGridText and ToolUse used to refuse NumPy integers (e.g. from a config array) that every other env takes.
    ("creditgym/MiniGridText-DoorKey-5x5-v0", {"max_invalid_actions": np.int64(3)}),
    ("creditgym/ToolUse-v1", {"max_invalid_actions": np.int64(3), "num_worlds": np.int64(4),
                              "min_calls": np.int32(2), "max_calls": np.int32(3), "max_turns": np.uint8(5)}),
])
def test_numpy_integers_are_taken_as_python_ints(env_id: str, kwargs: dict) -> None:
    env = gym.make(env_id, **kwargs).unwrapped
    for name, value in kwargs.items():
        assert getattr(env, name) == value and type(getattr(env, name)) is int


@pytest.mark.filterwarnings("ignore:.*not in the possible render_modes")  # gymnasium's, before the env refuses
@pytest.mark.parametrize("env_id", sorted(EXPECTED_IDS))
def test_every_env_declares_render_fps_and_refuses_unknown_render_modes(env_id: str) -> None:
    # The sanity envs lacked render_fps (check_env warns), and WordBandit took any render_mode, then failed in render
    env_class = type(gym.make(env_id).unwrapped)
    assert isinstance(env_class.metadata.get("render_fps"), int | float)
    with pytest.raises(ValueError, match="render_mode must be one of"):
        gym.make(env_id, render_mode="bogus")


@pytest.mark.parametrize(("env_id", "kwargs", "call"), [
    # what each did before: Sokoban paid the solve bonus and reported success, Dialogue divided by zero or ended the
    # talk (patience 0), MiniGrid failed inside minigrid, Shop searched, WordBandit played
    pytest.param("creditgym/Sokoban-6x6-1b-v0", {}, lambda env: env.step(1), id="sokoban-array"),
    pytest.param("creditgym/Sokoban-6x6-1b-v0", {"obs_mode": "text"}, lambda env: env.step("up"), id="sokoban-text"),
    pytest.param("creditgym/Dialogue-Gather-v0", {}, lambda env: env.step('<propose>{"budget": "low"}</propose>'),
                 id="dialogue-propose"),
    pytest.param("creditgym/Dialogue-Gather-v0", {}, lambda env: env.step("What budget?"), id="dialogue-ask"),
    pytest.param("creditgym/MiniGridText-DoorKey-5x5-v0", {}, lambda env: env.step("go forward"), id="minigrid-step"),
    pytest.param("creditgym/BabyAIText-GoToObj-v0", {"render_mode": "rgb_array"}, lambda env: env.render(),
                 id="babyai-render"),
    pytest.param("creditgym/Shop-v1", {}, lambda env: env.step("search[red shoes]"), id="shop"),
    pytest.param("creditgym/Sanity-WordBandit-v0", {}, lambda env: env.step("B"), id="word-bandit"),
    pytest.param("creditgym/ToolUse-v1", {}, lambda env: env.step("<answer>1</answer>"), id="tooluse"),
])
def test_a_step_or_render_before_reset_says_to_call_reset(env_id: str, kwargs: dict, call) -> None:
    env = gym.make(env_id, **kwargs).unwrapped  # without gym.make's OrderEnforcing, which would answer first
    with pytest.raises(ResetNeeded, match=r"call reset\(\) first"):
        call(env)


def test_the_batched_sokoban_env_checks_its_arguments_too() -> None:
    with pytest.raises(TypeError, match="reset options must be a dict"):
        gym.make_vec("creditgym/Sokoban-6x6-1b-v0", 2).reset(options=[0, 1])
    with pytest.raises(ValueError, match="action_mask must be True or False"):
        gym.make_vec("creditgym/Sokoban-6x6-1b-v0", 2, action_mask="no")
    with pytest.raises(ValueError, match="max_episode_steps must be a positive integer"):
        gym.make_vec("creditgym/Sokoban-6x6-1b-v0", 2, max_episode_steps="100")
    with pytest.raises(ValueError, match="levels must be a shipped bank name"):
        gym.make_vec("creditgym/Sokoban-6x6-1b-v0", 2, levels=None)


@pytest.mark.parametrize("env_id", ["creditgym/Shop-v1", "creditgym/ToolUse-v1", "creditgym/Dialogue-Gather-v0",
                                    "creditgym/MiniGridText-DoorKey-5x5-v0", "creditgym/Sanity-WordBandit-v0"])
def test_reward_sizes_from_a_mapping_as_json_gives_them(env_id: str) -> None:
    # `--env-kwargs '{"rewards": {...}}'` can only pass a mapping; it used to crash on the first step.
    env = gym.make(env_id, rewards={"invalid_action": -0.5})
    env.reset(seed=0)
    _, reward, _, _, info = env.step(None)
    assert info["invalid_action"] and reward == pytest.approx(-0.5)


def test_every_reward_dataclass_refuses_sizes_that_are_not_finite_numbers() -> None:
    import dataclasses

    from creditgym.envs.arguments import FiniteRewards
    from creditgym.envs.dialogue.env import GatherRewards
    from creditgym.envs.dialogue.negotiation import NegotiationRewards
    from creditgym.envs.minigrid_text import MiniGridTextRewards
    from creditgym.envs.sanity.words import WordBanditRewards
    from creditgym.envs.shop.reward import ShopRewards
    from creditgym.envs.sokoban.rules import SokobanRewards
    from creditgym.envs.tooluse.reward import ToolUseRewards

    classes = [GatherRewards, NegotiationRewards, MiniGridTextRewards, WordBanditRewards, ShopRewards, SokobanRewards,
               ToolUseRewards]
    assert {cls.__name__ for cls in FiniteRewards.__subclasses__()} == {cls.__name__ for cls in classes}
    for cls in classes:
        field = dataclasses.fields(cls)[0].name
        for bad in (float("nan"), float("inf"), "1", True):
            with pytest.raises(ValueError, match=f"{cls.__name__}.{field} must be a finite number"):
                cls(**{field: bad})
