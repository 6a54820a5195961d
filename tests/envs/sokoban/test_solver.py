from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from creditgym.envs.sokoban.generator import generate_level
from creditgym.envs.sokoban.level import Level, Tile
from creditgym.envs.sokoban.rules import Action, apply_move
from creditgym.envs.sokoban.solver import dead_squares, search, solve

# Box two cells from the player, target three cells further: one step, then three pushes.
CORRIDOR = ["########", "#@ $  .#", "########"]
# The player starts on the wrong side of the box and must walk round it (5 steps) before one push.
AROUND = ["#######", "#     #", "#@.$  #", "#     #", "#######"]
# Two boxes in a corridor: pushing the first jams it against the second.
JAMMED = ["########", "#@$ $..#", "########"]
# The box sits in a corner that is not a target.
CORNERED = ["#####", "#$ .#", "#@  #", "#####"]


def replay(level: Level, actions: list[Action]) -> Level:
    """Play `actions` with the game rules; every one must move the player."""
    tiles = level.tiles.copy()
    player = level.player
    for action in actions:
        result = apply_move(tiles, player, action)
        assert result.moved, f"{action.name} does not move the player"
        player = result.player
    return Level(tiles)


def bfs_optimal_moves(level: Level) -> int | None:
    """Fewest moves by plain breadth-first search over whole boards: slow but obviously right."""
    start = level.tiles.copy()
    seen = {start.tobytes()}
    queue = deque([(start, level.player, 0)])
    while queue:
        tiles, player, moves = queue.popleft()
        if not (tiles == Tile.BOX).any():
            return moves
        for action in Action:
            child = tiles.copy()
            result = apply_move(child, player, action)
            key = child.tobytes()
            if result.moved and key not in seen:
                seen.add(key)
                queue.append((child, result.player, moves + 1))
    return None


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (CORRIDOR, [Action.RIGHT] * 4),
        (["#####", "#@$.#", "#####"], [Action.RIGHT]),
    ],
)
def test_corridor_solutions_are_exact(rows: list[str], expected: list[Action]) -> None:
    assert solve(Level.from_rows(rows)) == expected


def test_walking_round_a_box_is_counted_in_moves() -> None:
    level = Level.from_rows(AROUND)
    actions = solve(level)
    assert actions is not None
    assert len(actions) == 6
    assert actions[-1] == Action.LEFT
    assert replay(level, actions).is_solved


def test_solved_level_needs_no_moves() -> None:
    result = search(Level.from_rows(["#####", "#@* #", "#####"]))
    assert result.status == "solved"
    assert result.actions == []


@pytest.mark.parametrize("rows", [JAMMED, CORNERED])
def test_unsolvable_levels_are_reported(rows: list[str]) -> None:
    level = Level.from_rows(rows)
    result = search(level)
    assert result.status == "unsolvable"
    assert result.actions is None
    assert solve(level) is None


def test_exhausted_budget_is_not_unsolvable() -> None:
    level = Level.from_rows(CORRIDOR)
    result = search(level, max_nodes=1)
    assert result.status == "budget"
    assert result.actions is None
    assert result.nodes == 1
    assert solve(level, max_nodes=1) is None
    assert search(level, max_nodes=10).status == "solved"


def test_max_nodes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_nodes"):
        search(Level.from_rows(CORRIDOR), max_nodes=0)


def test_dead_squares_are_wall_hugging_cells_off_the_target_lines() -> None:
    level = Level.from_rows(["######", "#    #", "# .$ #", "#@   #", "######"])
    dead = dead_squares(level)
    expected = np.zeros(level.shape, dtype=bool)
    expected[1, 1:5] = expected[3, 1:5] = True  # along the top and bottom walls
    expected[1:4, 1] = expected[1:4, 4] = True  # along the side walls
    assert dead.shape == level.shape
    np.testing.assert_array_equal(dead, expected)


def test_a_target_is_never_dead_even_in_a_corner() -> None:
    level = Level.from_rows(CORNERED)
    dead = dead_squares(level)
    assert dead[1, 1]  # the cornered box
    assert not dead[1, 3]  # the target, itself a corner
    assert not dead[level.tiles == Tile.WALL].any()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num_boxes=st.sampled_from([1, 2]))
def test_solutions_are_as_short_as_brute_force(seed: int, num_boxes: int) -> None:
    level = generate_level(np.random.default_rng(seed), height=6, width=6, num_boxes=num_boxes)
    actions = solve(level)
    assert actions is not None
    assert replay(level, actions).is_solved
    assert len(actions) == bfs_optimal_moves(level)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_larger_generated_levels_solve_and_replay(seed: int) -> None:
    level = generate_level(np.random.default_rng(seed), height=10, width=10, num_boxes=3)
    result = search(level)
    assert result.status == "solved"
    assert result.actions is not None
    assert replay(level, result.actions).is_solved
