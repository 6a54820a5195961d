"""Potential-based shaping keeps the optimal actions; a non-potential bonus does not (Ng, Harada and Russell 1999).

For each small Sokoban level this enumerates every reachable board with the env's own transitions and rewards,
computes the exact optimal action values Q* by value iteration (discounted, no time limit), and repeats that
with (a) shaping F = γΦ(s') − Φ(s) for each built-in potential and (b) a bonus per push. It reports in how many
states the set of optimal actions changed, and exits 1 unless every potential changed none and the push bonus
changed some, summed over the levels.

    python examples/shaping_invariance.py --bank 6x6-2b --levels 5
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from creditgym.envs.sokoban.bank import LevelBank, load_bank
from creditgym.envs.sokoban.env import SokobanEnv
from creditgym.envs.sokoban.level import Level
from creditgym.envs.sokoban.rules import Action
from creditgym.wrappers.potentials import get_potential

POTENTIALS = ("boxes_on_target", "box_distance", "solver_distance")
TIE = 1e-6
"""Action values closer than this to the best count as optimal."""


@dataclass(frozen=True)
class StateGraph:
    """Every board reachable from a level: for board i and action a, the next board, reward and termination."""

    boards: list[Level]
    next_board: np.ndarray
    """(S, 4) index of the next board; 0 (unused) where the move terminates the episode."""
    reward: np.ndarray
    """(S, 4) the env's reward."""
    terminated: np.ndarray
    pushed: np.ndarray


def state_graph(level: Level) -> StateGraph:
    """Breadth-first over boards, stepping a `SokobanEnv` reset onto each board; solved boards end episodes."""
    env = SokobanEnv(levels=LevelBank.from_levels([level]))
    index = {level: 0}
    boards = [level]
    rows: list[list[tuple[int, float, bool, bool]]] = []
    for board in boards:  # grows while iterating
        row = []
        for action in Action:
            env.reset(options={"level": board})
            _, reward, terminated, _, _ = env.step(action)
            after = env.level
            if not terminated and after not in index:
                index[after] = len(boards)
                boards.append(after)
            row.append((0 if terminated else index[after], float(reward), terminated, after.boxes != board.boxes))
        rows.append(row)
    columns = [np.array([[cell[k] for cell in row] for row in rows]) for k in range(4)]
    return StateGraph(boards, columns[0], columns[1], columns[2].astype(bool), columns[3].astype(bool))


def optimal_q(graph: StateGraph, reward: np.ndarray, gamma: float) -> np.ndarray:
    """Q* by value iteration to a sup-norm error below 1e-9."""
    values = np.zeros(len(graph.boards))
    while True:
        q = reward + gamma * np.where(graph.terminated, 0.0, values[graph.next_board])
        new_values = q.max(1)
        if np.abs(new_values - values).max() * gamma / (1 - gamma) < 1e-9:
            return q
        values = new_values


def optimal_actions(q: np.ndarray) -> np.ndarray:
    """(S, 4) mask of the actions within TIE of the best in each state."""
    return q >= q.max(1, keepdims=True) - TIE


@dataclass(frozen=True)
class LevelReport:
    states: int
    changed: dict[str, int]
    """Reward variant -> states whose set of optimal actions differs from the unshaped one."""
    q_error: dict[str, float]
    """Potential -> max |Q'* − (Q* − Φ)|, which the theory says is 0."""


def check_level(level: Level, *, gamma: float = 0.99, push_bonus: float = 0.1,
                potentials: Sequence[str] = POTENTIALS) -> LevelReport:
    graph = state_graph(level)
    q = optimal_q(graph, graph.reward, gamma)
    best = optimal_actions(q)
    changed: dict[str, int] = {}
    q_error: dict[str, float] = {}
    env = SokobanEnv(levels=LevelBank.from_levels([level]))
    for name in potentials:
        potential = get_potential(name)
        phi = np.array([potential(_at(env, board)) for board in graph.boards])
        shaping = gamma * np.where(graph.terminated, 0.0, phi[graph.next_board]) - phi[:, None]
        shaped = optimal_q(graph, graph.reward + shaping, gamma)
        changed[f"PBRS {name}"] = int((optimal_actions(shaped) != best).any(1).sum())
        q_error[name] = float(np.abs(shaped - (q - phi[:, None])).max())
    bonus = optimal_q(graph, graph.reward + push_bonus * graph.pushed, gamma)
    changed[f"bonus {push_bonus:+g} per push"] = int((optimal_actions(bonus) != best).any(1).sum())
    return LevelReport(len(graph.boards), changed, q_error)


def _at(env: SokobanEnv, board: Level) -> SokobanEnv:
    env.reset(options={"level": board})
    return env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", default="6x6-2b", help="shipped level bank, e.g. 6x6-1b (default: 6x6-2b)")
    parser.add_argument("--levels", type=int, default=5, help="how many levels from the start of the bank")
    parser.add_argument("--gamma", type=float, default=0.99, help="discount (default: 0.99, PPO's)")
    parser.add_argument("--push-bonus", type=float, default=0.1, help="the non-potential bonus per push")
    args = parser.parse_args(argv)
    if not 0 <= args.gamma < 1:  # value iteration converges only below 1
        parser.error(f"--gamma must be in [0, 1), got {args.gamma}")
    if args.levels < 1:
        parser.error(f"--levels must be at least 1, got {args.levels}")
    try:
        bank = load_bank(args.bank)
    except ValueError as error:
        parser.error(str(error))
    shaped_changed = bonus_changed = 0
    for i in range(min(args.levels, len(bank))):
        report = check_level(bank[i], gamma=args.gamma, push_bonus=args.push_bonus)
        print(f"{args.bank} level {i}: {report.states} reachable boards")
        for variant, count in report.changed.items():
            print(f"  {variant:<28} optimal actions changed in {count:>5} boards")
        print("  max |Q'* - (Q* - phi)|: " + ", ".join(f"{k} {v:.1e}" for k, v in report.q_error.items()))
        shaped_changed += sum(count for variant, count in report.changed.items() if variant.startswith("PBRS"))
        bonus_changed += report.changed[f"bonus {args.push_bonus:+g} per push"]
    ok = shaped_changed == 0 and bonus_changed > 0
    print(f"{'PASS' if ok else 'FAIL'}: shaping changed the optimal actions in {shaped_changed} boards (expected 0), "
          f"the push bonus in {bonus_changed} (expected some)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
