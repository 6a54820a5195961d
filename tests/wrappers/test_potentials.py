"""Built-in potentials: batched forms agree with the env's hooks, the solver's distance is exact, MiniGrid BFS."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import creditgym  # noqa: F401
import creditgym.wrappers.potentials as potentials_module
from creditgym.envs.minigrid_text import MiniGridTextEnv
from creditgym.envs.sokoban.bank import LevelBank, load_bank
from creditgym.envs.sokoban.env import SokobanEnv
from creditgym.envs.sokoban.level import Level
from creditgym.envs.sokoban.solver import all_move_distances, solve
from creditgym.wrappers.potentials import (
    SolverDistance,
    box_distance,
    boxes_on_target,
    get_potential,
    goal_distance,
    one_hot,
)


@pytest.mark.parametrize("variant", ["6x6-1b", "10x10-3b"])
def test_batched_sokoban_potentials_match_env_hooks(variant: str) -> None:
    bank = load_bank(variant)
    env = SokobanEnv(levels=variant)
    rng = np.random.default_rng(0)
    boards, expected = [], []
    for index in range(12):
        env.reset(options={"level": bank[index]})
        for _ in range(int(rng.integers(0, 30))):
            if env.step(int(rng.integers(4)))[2]:  # solved: the episode is over
                break
        boards.append(env.level.tiles)
        expected.append((env.potential("box_distance"), env.potential("boxes_on_target")))
    obs = torch.cat([one_hot(tiles) for tiles in boards])
    assert box_distance(obs).tolist() == [d for d, _ in expected]
    assert boxes_on_target(obs).tolist() == [b for _, b in expected]


def test_box_distance_uses_the_best_assignment_and_mixed_box_counts() -> None:
    # Both boxes are 1 from the target at (1,3); the other target at (3,1) is 3 from the left box, 5 from the
    # right one. Nearest targets would give -2; the best one-to-one assignment costs 3 + 1.
    two = Level.from_rows(["#######", "#@$.$ #", "#     #", "#.    #", "#######"])
    one = Level.from_rows(["#######", "#@ $. #", "#     #", "#     #", "#######"])
    obs = torch.cat([one_hot(two.tiles), one_hot(one.tiles)])
    assert box_distance(obs).tolist() == [-4.0, -1.0]
    assert boxes_on_target(obs).tolist() == [0.0, 0.0]
    env = SokobanEnv(levels=LevelBank.from_levels([two]))
    env.reset()
    assert env.potential("box_distance") == -4.0


def test_solver_distance_counts_moves_and_marks_dead_boards() -> None:
    solver = SolverDistance(unsolvable=-99.0)
    corridor = Level.from_rows(["#######", "#@ $ .#", "#######"])
    assert solver(corridor.tiles) == -3.0  # walk 1, push 2
    stuck = Level.from_rows(["#######", "#.@ $ #", "#######"])  # the box can only go right, away from the target
    assert solver(stuck.tiles) == -99.0
    assert solver.batched(torch.cat([one_hot(corridor.tiles), one_hot(stuck.tiles)])).tolist() == [-3.0, -99.0]
    with pytest.raises(ValueError, match="budget.*max_nodes"):
        SolverDistance(max_states=1, max_nodes=1)(load_bank("10x10-3b")[0].tiles)


def test_tight_dead_lock_value_sits_one_move_below_the_farthest_live_board() -> None:
    level = load_bank("6x6-2b")[3]
    table = all_move_distances(level)
    assert table is not None
    farthest = max(table.values())
    tight = SolverDistance(unsolvable="below_farthest")
    values = {key: tight(np.frombuffer(key, np.int8).reshape(level.shape)) for key in table}
    dead = [values[key] for key, moves in table.items() if moves < 0]
    live = [values[key] for key, moves in table.items() if moves >= 0]
    assert dead and set(dead) == {-1.0 - farthest}
    assert max(dead) < min(live) == -farthest
    assert get_potential("solver_distance_tight").batched(one_hot(level.tiles)).item() == values[level.tiles.tobytes()]
    # Levels too big to walk have no farthest board: their dead-locks fall back to -100.
    stuck = Level.from_rows(["#######", "#.@ $ #", "#######"])
    assert SolverDistance(unsolvable="below_farthest", max_states=1)(stuck.tiles) == -100.0
    with pytest.raises(ValueError, match="below_farthest"):
        SolverDistance(unsolvable="tight")  # type: ignore[arg-type]


def test_all_move_distances_are_the_solver_optimum_for_every_reachable_board() -> None:
    level = load_bank("6x6-2b")[3]
    table = all_move_distances(level)
    assert table is not None and table[level.tiles.tobytes()] == len(solve(level))
    assert all_move_distances(level, max_states=5) is None
    boards = [np.frombuffer(key, np.int8).reshape(level.shape) for key in table]
    assert len(boards) > 50 and min(table.values()) == -1 and max(table.values()) > 5
    for board in boards[::7]:
        plan = solve(Level(board))
        assert table[board.tobytes()] == (-1 if plan is None else len(plan))


def test_solver_distance_walks_each_level_once_in_either_view(monkeypatch: pytest.MonkeyPatch) -> None:
    walks = []

    def counting(level: Level, **kwargs: int) -> dict[bytes, int] | None:
        walks.append(level)
        return all_move_distances(level, **kwargs)

    monkeypatch.setattr(potentials_module, "all_move_distances", counting)
    grid, egocentric = SolverDistance(), SolverDistance()
    fallback = SolverDistance(max_states=1)  # one A* search per board instead of one walk per level
    env = SokobanEnv(levels="6x6-2b", obs_mode="egocentric")
    rng = np.random.default_rng(0)
    for episode in range(3):
        obs, _ = env.reset(seed=episode)
        walks_before = len(walks)
        for _ in range(25):
            value = grid(env.level.tiles)
            assert egocentric.batched(torch.as_tensor(obs)[None]).item() == value == fallback(env.level.tiles)
            obs, _, terminated, _, _ = env.step(int(rng.integers(4)))
            if terminated:
                break
        # one walk for the grid, one for the egocentric view and one refused for the fallback
        assert len(walks) - walks_before == 3


def test_offline_forms_agree_with_live_forms_on_recorded_states() -> None:
    env = gym.make("creditgym/Sokoban-6x6-2b-v0", obs_mode="text")
    rng = np.random.default_rng(1)
    env.reset(seed=2)
    for _ in range(30):
        env.step(["Up", "Down", "Left", "Right"][int(rng.integers(4))])
        state = env.unwrapped.state()
        for name in ("boxes_on_target", "box_distance", "solver_distance", "solver_distance_tight"):
            potential = get_potential(name)
            assert potential.offline(None, state) == potential(env)
    with pytest.raises(ValueError, match="record_state=True"):
        get_potential("box_distance").offline(None, None)


def test_offline_forms_parse_each_distinct_recorded_board_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-scoring meets the same boards again and again: each is parsed and checked as a Level once, and the values
    stay those of a fresh parse; a damaged board is refused every time it comes."""
    env = gym.make("creditgym/Sokoban-6x6-2b-v0")
    env.reset(seed=3)
    states = [env.unwrapped.state()]
    for action in [0, 1, 0, 1, 2, 3, 2, 3]:  # up, down, up, down, left, right, ...: boards recur
        env.step(action)
        states.append(env.unwrapped.state())
    distinct = {tuple(state["board"]) for state in states}
    assert len(distinct) < len(states)
    names = ("box_distance", "boxes_on_target", "solver_distance")
    fresh = {name: [float(get_potential(name).batched(one_hot(Level.from_rows(state["board"]).tiles))[0])
                    if name != "solver_distance" else SolverDistance()(Level.from_rows(state["board"]).tiles)
                    for state in states] for name in names}
    potentials_module._parsed_board.cache_clear()
    potentials_module._cached_value.cache_clear()
    parsed = []
    from_rows = Level.from_rows.__func__
    monkeypatch.setattr(Level, "from_rows", classmethod(lambda cls, rows: parsed.append(rows) or from_rows(cls, rows)))
    for name in names:
        for _ in range(2):
            assert [get_potential(name).offline(None, state) for state in states] == fresh[name], name
    assert sorted(parsed) == sorted(distinct)  # once each
    parsed.clear()  # a board past 32x32 cells is parsed every time, so the cache stays small
    wide = {**states[0], "board": ["#" * 400, "#@$." + "_" * 395 + "#", "#" * 400]}
    for _ in range(2):
        assert get_potential("box_distance").offline(None, wide) == -1.0
    assert len(parsed) == 2
    damaged = {**states[0], "board": ["#####", "#@@.#", "#####"]}
    for _ in range(2):
        with pytest.raises(ValueError, match="exactly one player"):
            get_potential("box_distance").offline(None, damaged)


def _minigrid_state(rows: list[str], agent: tuple[int, int]) -> dict:
    """A MiniGrid `state()` from rows of '#' wall, '.' floor, 'D' door, 'G' goal; cells are indexed [x, y]."""
    from minigrid.core.constants import OBJECT_TO_IDX

    codes = {"#": "wall", ".": "empty", "D": "door", "G": "goal"}
    grid = [[[OBJECT_TO_IDX[codes[rows[y][x]]], 0, 0] for y in range(len(rows))] for x in range(len(rows[0]))]
    return {"grid": grid, "agent_pos": list(agent)}


def test_goal_distance_walks_around_walls_and_through_doors() -> None:
    rows = ["#######",
            "#..#..#",
            "#..D.G#",
            "#..#..#",
            "#######"]
    assert goal_distance(_minigrid_state(rows, (1, 1))) == -5.0  # (1,1) (2,1) (2,2) door (3,2) (4,2) (5,2)
    assert goal_distance(_minigrid_state(rows, (5, 3))) == -1.0
    walled = ["#####", "#.#G#", "#####"]
    assert goal_distance(_minigrid_state(walled, (1, 1))) == -15.0  # unreachable: minus the number of cells
    with pytest.raises(ValueError, match="needs a MiniGrid goal tile"):
        goal_distance(_minigrid_state(["###", "#.#", "###"], (1, 1)))


def test_goal_distance_on_the_registered_env() -> None:
    env = gym.make("creditgym/MiniGridText-DoorKey-5x5-v0")
    env.reset(seed=0)
    potential = get_potential("goal_distance")
    potential.check_env(env)
    assert isinstance(env.unwrapped, MiniGridTextEnv)
    assert potential(env) == potential.offline(None, env.unwrapped.state()) < 0


def test_potentials_check_their_env() -> None:
    env = SokobanEnv(levels=LevelBank.from_levels([Level.from_rows(["#####", "#@$.#", "#####"])]))
    get_potential("box_distance").check_env(env)
    with pytest.raises(ValueError, match="is for MiniGridTextEnv.*boxes_on_target"):
        get_potential("goal_distance").check_env(env)
