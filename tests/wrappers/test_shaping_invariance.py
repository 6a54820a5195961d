"""examples/shaping_invariance.py: PBRS keeps the optimal actions, a push bonus does not, on two tiny levels."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from creditgym.envs.sokoban.level import Level
from creditgym.wrappers.potentials import SolverDistance

CORRIDOR = Level.from_rows(["#####", "#@$.#", "#####"])
ROOM = Level.from_rows(["######", "#@   #", "# $  #", "#   .#", "######"])


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    path = Path(__file__).resolve().parents[2] / "examples" / "shaping_invariance.py"
    spec = importlib.util.spec_from_file_location("shaping_invariance", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_optimal_values_of_a_one_move_level(example: ModuleType) -> None:
    gamma = 0.9
    graph = example.state_graph(CORRIDOR)
    assert graph.boards == [CORRIDOR]
    q = example.optimal_q(graph, graph.reward, gamma)
    solve_now = -0.1 + 1.0 + 10.0  # step, box onto target, solved
    bump = -0.1 + gamma * solve_now  # up, down, left hit a wall and leave the board as it was
    assert q[0] == pytest.approx([bump, bump, bump, solve_now], abs=1e-9)


def test_shaping_keeps_optimal_actions_and_a_push_bonus_changes_them(example: ModuleType) -> None:
    corridor = example.check_level(CORRIDOR)
    room = example.check_level(ROOM)
    assert room.states > 50
    for report in (corridor, room):
        assert {k: v for k, v in report.changed.items() if k.startswith("PBRS")} == {
            f"PBRS {name}": 0 for name in example.POTENTIALS}
        assert max(report.q_error.values()) < 1e-6
    assert room.changed["bonus +0.1 per push"] > 0


def test_solver_distance_is_the_exact_distance_to_solution(example: ModuleType) -> None:
    graph = example.state_graph(ROOM)
    moves = np.full(len(graph.boards), np.inf)
    while True:  # Bellman-Ford over the board graph: fewest moves to a solving move
        relaxed = np.where(graph.terminated, 1.0, 1.0 + moves[graph.next_board]).min(1)
        if np.array_equal(relaxed, moves):
            break
        moves = relaxed
    solver = SolverDistance(unsolvable=-np.inf)
    assert [solver(board.tiles) for board in graph.boards] == (-moves).tolist()
    assert np.isinf(moves).any() and np.isfinite(moves).sum() > 20
