"""SokobanEnv: rules, rewards, views, text actions and time limits."""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import pytest

import creditgym  # noqa: F401  (registers the ids)
from creditgym.envs.sokoban.bank import LevelBank
from creditgym.envs.sokoban.env import SokobanEnv
from creditgym.envs.sokoban.level import NUM_TILES, Level, Tile
from creditgym.envs.sokoban.render import SPRITE_SIZE
from creditgym.envs.sokoban.rules import Action, SokobanRewards, resolve_rewards
from creditgym.envs.sokoban.text import parse_action

CORRIDOR = Level.from_rows(["######", "#@$ .#", "######"])


def _env(level: Level, **kwargs) -> SokobanEnv:
    env = SokobanEnv(levels=LevelBank.from_levels([level]), **kwargs)
    env.reset(seed=0)
    return env


def test_push_onto_target_solves_and_pays_gym_sokoban_rewards() -> None:
    env = _env(CORRIDOR)
    _, reward, terminated, truncated, info = env.step(Action.RIGHT)
    assert (reward, terminated, truncated) == (pytest.approx(-0.1), False, False)
    assert env.level.player == (1, 2) and env.level.boxes == [(1, 3)]
    _, reward, terminated, _, info = env.step(Action.RIGHT)
    assert reward == pytest.approx(-0.1 + 1.0 + 10.0)
    assert terminated and info["success"] and info["boxes_on_target"] == 1
    assert info["reward_components"] == {"task": pytest.approx(10.9), "format": 0.0}


def test_a_solved_level_pays_its_bonus_once() -> None:
    env = _env(CORRIDOR)
    env.step(Action.RIGHT)
    assert env.step(Action.RIGHT)[2]
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(Action.LEFT)
    text = _env(CORRIDOR, obs_mode="text")
    text.step("right")
    assert text.step("right")[2]
    obs, reward, terminated, _, info = text.step("left")
    assert info["invalid_action"] and info["reward_components"] == {"task": 0.0, "format": -0.1}
    assert obs.startswith("The level is already solved; call reset().") and not terminated
    env.reset()
    assert env.step(Action.RIGHT)[1] == pytest.approx(-0.1)  # reset starts a new episode


def test_walls_and_blocked_boxes_are_no_ops() -> None:
    env = _env(CORRIDOR)
    before = env.level
    _, reward, *_ = env.step(Action.LEFT)
    assert env.level == before and reward == pytest.approx(-0.1)
    blocked = _env(Level.from_rows(["######", "#@$$.#", "#   .#", "######"]))
    before = blocked.level
    blocked.step(Action.RIGHT)
    assert blocked.level == before


def test_pushing_a_box_off_a_target_costs() -> None:
    env = _env(Level.from_rows(["#######", "#@* .$#", "#######"]))
    _, reward, *_ , info = env.step(Action.RIGHT)
    assert reward == pytest.approx(-0.1 - 1.0)
    assert info["boxes_on_target"] == 0


def test_custom_rewards_and_invalid_reward_config() -> None:
    env = _env(CORRIDOR, rewards=SokobanRewards(step=0.0, solved=1.0, box_on_target=0.0))
    env.step(Action.RIGHT)
    assert env.step(Action.RIGHT)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="SokobanRewards.step must be a finite number"):
        SokobanRewards(step=float("nan"))


def test_rewards_from_a_preset_name_or_a_mapping() -> None:
    two_pushes = Level.from_rows(["#######", "#@$ . #", "#  $. #", "#######"])
    outcome = _env(two_pushes, rewards="outcome")
    outcome.step(Action.RIGHT)
    _, reward, terminated, _, info = outcome.step(Action.RIGHT)
    assert not terminated and info["boxes_on_target"] == 1
    assert reward == pytest.approx(-0.1)  # no per-box reward: only the solve pays
    assert _env(CORRIDOR, rewards={"step": -0.5}).step(Action.LEFT)[1] == pytest.approx(-0.5)
    told = SokobanEnv(obs_mode="text", rewards="outcome").reset(seed=0)[1]["instructions"]
    assert "Rewards: -0.1 per step, +10 when all boxes are on targets," in told and "pushed onto" not in told
    vec = gym.make_vec("creditgym/Sokoban-6x6-2b-v0", num_envs=2, rewards="outcome")
    assert vec.unwrapped.rewards == resolve_rewards("outcome")
    with pytest.raises(ValueError, match="rewards must be one of"):
        _env(CORRIDOR, rewards="dense")
    with pytest.raises(ValueError, match=r"unknown SokobanRewards fields \['bonus'\]"):
        _env(CORRIDOR, rewards={"bonus": 1.0})
    with pytest.raises(ValueError, match="must be numbers"):
        _env(CORRIDOR, rewards={"step": "a lot"})
    with pytest.raises(ValueError, match="a preset name or a mapping, got int"):
        _env(CORRIDOR, rewards=5)


def test_deadlock_flag_when_a_box_enters_a_non_target_corner() -> None:
    env = _env(Level.from_rows(["######", "#.   #", "#   $#", "#   @#", "######"]))
    assert env.step(Action.LEFT)[4]["deadlock"] is False
    env.step(Action.RIGHT)
    assert env.step(Action.UP)[4]["deadlock"] is True
    assert env.step(Action.DOWN)[4]["deadlock"] is True


def test_array_rgb_and_text_views() -> None:
    array = _env(CORRIDOR).step(Action.RIGHT)[0]
    assert array.shape == (NUM_TILES, 3, 6) and array.dtype == np.uint8
    assert (array.sum(axis=0) == 1).all()
    assert array[Tile.PLAYER, 1, 2] == 1 and array[Tile.BOX, 1, 3] == 1 and array[Tile.TARGET, 1, 4] == 1
    rgb = _env(CORRIDOR, obs_mode="rgb").step(Action.RIGHT)[0]
    assert rgb.shape == (3 * SPRITE_SIZE, 6 * SPRITE_SIZE, 3) and rgb.dtype == np.uint8
    text = _env(CORRIDOR, obs_mode="text").step("Right")[0]
    assert text == "######\n#_PXO#\n######"
    boxoban = _env(CORRIDOR, obs_mode="text", text_symbols="boxoban").step("Right")[0]
    assert boxoban == "######\n# @$.#\n######"


def test_render_modes() -> None:
    assert _env(CORRIDOR, render_mode="ansi").render() == "######\n#PX_O#\n######"
    assert _env(CORRIDOR, render_mode="rgb_array").render().shape == (48, 96, 3)


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("up", Action.UP), ("Up", Action.UP), ("UP", Action.UP), ("u", Action.UP),
        ("<answer>Left</answer>", Action.LEFT), ("\\boxed{down}", Action.DOWN), ("move left", Action.LEFT),
        ("I will go right.", Action.RIGHT), ("Let me think: up is blocked. <answer>Down</answer>", Action.DOWN),
        ("<answer>up</answer> no wait <answer>left</answer>", Action.LEFT),
        ("<answer>\n  Right.\n</answer>", Action.RIGHT), ("reasoning " * 40 + "\\boxed{\\text{Left}}", Action.LEFT),
    ],
)
def test_parse_action_accepts_reasonable_forms(text: str, action: Action) -> None:
    assert parse_action(text) == action


@pytest.mark.parametrize(
    "text", ["", "jump", "up or down", "<answer>upward</answer>", "x" * 300 + " left", "uppercase", None, 3]
)
def test_parse_action_rejects_everything_else(text: object) -> None:
    assert parse_action(text) is None


def test_invalid_text_changes_nothing_pays_format_and_explains() -> None:
    env = _env(CORRIDOR, obs_mode="text", max_invalid_actions=2)
    before = env.state()
    obs, reward, terminated, truncated, info = env.step("fly north")
    assert env.state() == before
    assert info["invalid_action"] and info["reward_components"] == {"task": 0.0, "format": -0.1}
    assert reward == pytest.approx(-0.1) and not terminated and not truncated
    assert obs.startswith("Invalid action 'fly north'") and obs.endswith("######\n#PX_O#\n######")
    obs, *_ = env.step("right")
    assert "Invalid" not in obs
    assert env.step("??")[3] is True  # the second invalid action reaches the cap


@pytest.mark.parametrize("action", ["<answer>Left</answer>", 4, -1, 1.5, None, float("inf")])
def test_a_grid_view_refuses_non_moves_and_points_to_the_text_view(action: object) -> None:
    env = _env(CORRIDOR)
    with pytest.raises(ValueError, match=r"takes the actions 0-3 \(up, down, left, right\)") as raised:
        env.step(action)
    assert ("obs_mode='text'" in str(raised.value)) == isinstance(action, str)
    env.step(np.int64(3))  # numpy ints, as a vector env hands them over, still play: two pushes solve it
    assert env.step(np.int64(3))[2]


def test_reset_instructions_and_seeding() -> None:
    env = gym.make("creditgym/Sokoban-6x6-2b-v0", obs_mode="text")
    first, info = env.reset(seed=3)
    assert "Push every box onto a target" in info["instructions"] and "<answer>" in info["instructions"]
    assert env.reset(seed=3)[0] == first
    boards = {env.reset(seed=seed)[0] for seed in range(20)}
    assert len(boards) > 10


def test_reset_with_a_given_level_and_bad_options() -> None:
    env = SokobanEnv(levels="6x6-1b")
    bank = env.bank
    obs, _ = env.reset(options={"level": bank[5]})
    assert env.level == bank[5]
    with pytest.raises(ValueError, match="shape"):
        env.reset(options={"level": CORRIDOR})
    with pytest.raises(TypeError, match="Level"):
        env.reset(options={"level": "#####"})


def test_time_limit_from_registration_truncates() -> None:
    env = gym.make("creditgym/Sokoban-6x6-1b-v0")
    env.reset(seed=0)
    truncated = False
    for t in range(120):
        _, _, terminated, truncated, _ = env.step(t % 2)  # up, down: never solves
        assert not terminated
    assert truncated and env.spec.max_episode_steps == 120


def test_potentials() -> None:
    env = _env(Level.from_rows(["#######", "#@$ ..#", "#  $  #", "#######"]))
    assert env.potential() == 0.0
    # best assignment: box (1,2)->(1,4) is 2, box (2,3)->(1,5) is 3, total 5 (the other pairing is 2+3 too)
    assert env.potential("box_distance") == -5.0
    env.step(Action.RIGHT)
    assert env.potential("box_distance") == -4.0
    with pytest.raises(ValueError, match="unknown potential"):
        env.potential("magic")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"obs_mode": "pixels"}, "obs_mode must be one of"),
        ({"text_symbols": "emoji"}, "text_symbols must be one of"),
        ({"render_mode": "human"}, "render_mode must be one of"),
        ({"max_invalid_actions": 0}, "max_invalid_actions"),
        ({"levels": "/no/such/path"}, "neither a shipped bank"),
    ],
)
def test_constructor_errors_say_what_to_change(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SokobanEnv(**kwargs)


def test_action_mask_lists_the_moves_that_change_the_board() -> None:
    env = SokobanEnv(levels=LevelBank.from_levels([CORRIDOR]), action_mask=True)
    _, info = env.reset(seed=0)
    assert info["action_mask"].tolist() == [False, False, False, True]
    _, _, _, _, info = env.step(Action.RIGHT)
    assert info["action_mask"].tolist() == [False, False, True, True]
    assert "action_mask" not in _env(CORRIDOR).step(Action.RIGHT)[4]


@pytest.mark.parametrize("tail", ["\n", " ", "\t"])
@pytest.mark.parametrize("opening", ["<answer>", "\\boxed{"])
def test_a_reply_that_degenerates_into_whitespace_is_read_at_once(opening: str, tail: str) -> None:
    # `\s*` around a lazy span backtracked quadratically: 8,000 newlines after <answer> took 30 s, and 20,000 would
    # take minutes. A generous bound, to catch a hang rather than to time the parser.
    start = time.perf_counter()
    assert parse_action("Let me think. " + opening + tail * 20_000) is None
    assert time.perf_counter() - start < 5


def test_a_text_observation_of_a_large_level_fits_its_space(tmp_path) -> None:
    side = 64
    rows = ["#" * side] + ["#" + " " * (side - 2) + "#" for _ in range(side - 2)] + ["#" * side]
    rows[1] = "#@$." + " " * (side - 5) + "#"
    path = tmp_path / "big.txt"
    path.write_text("; 0\n" + "\n".join(rows) + "\n")
    env = SokobanEnv(levels=str(path), obs_mode="text")
    observation, _ = env.reset(seed=0)
    assert len(observation) > 4096 and env.observation_space.contains(observation)
    observation, *_ = env.step("nonsense")
    assert env.observation_space.contains(observation)
