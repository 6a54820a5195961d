"""Move-optimal Sokoban solver: A* over push states, with dead-square and 2x2-freeze pruning.

A search state is (player cell, sorted box cells) right after a push, as flat indices on the level padded
with one ring of wall, so neighbour indices never leave the grid. An edge is "walk to the cell behind a
box, then push it": its cost is the walking distance plus one, so the cost of a path is its number of
moves. The heuristic, the sum over boxes of the pushes still needed to reach the nearest target (ignoring
the other boxes), is consistent because each edge changes it by at most one and costs at least one, so
the first goal popped is optimal in moves.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from creditgym.envs.sokoban.level import BOX_TILES, PLAYER_TILES, TARGET_TILES, Level, Tile
from creditgym.envs.sokoban.rules import DELTAS, Action

_UNREACHABLE = 1 << 30
_ACTIONS = tuple(Action)

SolveStatus = Literal["solved", "unsolvable", "budget"]
# (player cell, sorted box cells), as flat indices on the padded grid.
_State = tuple[int, tuple[int, ...]]
# How a state was reached: the state before and the index of the push action; None for the start.
_Parents = dict[_State, tuple[_State, int] | None]


@dataclass(frozen=True)
class SolveResult:
    """What `search` found. `actions` is a move-optimal solution when `status == "solved"`, else None."""

    status: SolveStatus
    actions: list[Action] | None
    nodes: int
    """Push states expanded."""


class _Room:
    """The static part of a level on the padded grid: free cells, targets and push distances."""

    def __init__(self, level: Level) -> None:
        tiles = np.pad(level.tiles, 1, constant_values=Tile.WALL)
        self.shape = tiles.shape
        self.width = width = tiles.shape[1]
        flat = tiles.ravel()
        self.free: list[bool] = (flat != Tile.WALL).tolist()
        self.is_target: list[bool] = np.isin(flat, TARGET_TILES).tolist()
        self.targets = np.flatnonzero(self.is_target).tolist()
        self.boxes = tuple(np.flatnonzero(np.isin(flat, BOX_TILES)).tolist())
        self.player = int(np.flatnonzero(np.isin(flat, PLAYER_TILES))[0])
        self.moves = tuple(dr * width + dc for dr, dc in (DELTAS[a] for a in _ACTIONS))
        self.push_distance = self._push_distances()
        # Walls, floor and targets only, as int8, for drawing boards of this room.
        self.static = np.where(np.isin(flat, TARGET_TILES), Tile.TARGET,
                               np.where(flat == Tile.WALL, Tile.WALL, Tile.FLOOR)).astype(np.int8)

    def _push_distances(self) -> list[int]:
        """Fewest pushes moving a lone box from each cell onto some target, found by pulling from targets."""
        free = self.free
        distance = [_UNREACHABLE] * len(free)
        frontier = list(self.targets)
        for t in frontier:
            distance[t] = 0
        for cell in frontier:  # grows while iterating: a breadth-first queue
            for d in self.moves:
                # A push by d onto `cell` starts with the box on cell - d and the player on cell - 2d.
                origin = cell - d
                if free[origin] and free[origin - d] and distance[origin] == _UNREACHABLE:
                    distance[origin] = distance[cell] + 1
                    frontier.append(origin)
        return distance

    def walk_distances(self, start: int, boxes: tuple[int, ...]) -> list[int]:
        """Steps from `start` to every cell the player can reach without pushing (-1 where it cannot)."""
        free = self.free
        distance = [-1] * len(free)
        for b in boxes:
            distance[b] = -2  # blocks the walk like a wall; reset below
        distance[start] = 0
        frontier = [start]
        for cell in frontier:
            step = distance[cell] + 1
            for d in self.moves:
                nxt = cell + d
                if distance[nxt] == -1 and free[nxt]:
                    distance[nxt] = step
                    frontier.append(nxt)
        for b in boxes:
            distance[b] = -1
        return distance

    def walk_path(self, start: int, goal: int, boxes: tuple[int, ...]) -> list[Action]:
        """A shortest walk from `start` to `goal` around `boxes`."""
        previous: dict[int, tuple[int, Action]] = {start: (start, Action.UP)}
        blocked = set(boxes)
        frontier = [start]
        for cell in frontier:
            if cell == goal:
                break
            for action, d in zip(_ACTIONS, self.moves, strict=True):
                nxt = cell + d
                if nxt not in previous and self.free[nxt] and nxt not in blocked:
                    previous[nxt] = (cell, action)
                    frontier.append(nxt)
        path: list[Action] = []
        cell = goal
        while cell != start:
            cell, action = previous[cell]
            path.append(action)
        path.reverse()
        return path

    def frozen(self, cell: int, boxes: set[int]) -> bool:
        """A box just pushed onto `cell` closes a 2x2 square of walls and boxes with a box off target.

        No box in such a square can ever move again, so the level can no longer be solved.
        """
        free, is_target, w = self.free, self.is_target, self.width
        for dr in (-w, w):
            for dc in (-1, 1):
                square = (cell, cell + dr, cell + dc, cell + dr + dc)
                if all(not free[c] or c in boxes for c in square) and any(
                    c in boxes and not is_target[c] for c in square
                ):
                    return True
        return False


def dead_squares(level: Level) -> np.ndarray:
    """(H, W) bool mask of non-wall cells from which no sequence of pushes brings a box to a target."""
    room = _Room(level)
    free = np.array(room.free).reshape(room.shape)
    unreachable = np.array(room.push_distance).reshape(room.shape) == _UNREACHABLE
    return (free & unreachable)[1:-1, 1:-1]


def search(level: Level, *, max_nodes: int = 200_000) -> SolveResult:
    """Find a solution with the fewest moves, or say whether the level is unsolvable or the budget ran out.

    Args:
        level: the level to solve.
        max_nodes: most push states to expand before giving up with status "budget".
    """
    if max_nodes < 1:
        raise ValueError(f"max_nodes must be at least 1, got {max_nodes}")
    room = _Room(level)
    push_distance, free, moves = room.push_distance, room.free, room.moves
    start: _State = (room.player, tuple(sorted(room.boxes)))
    h0 = sum(push_distance[b] for b in start[1])
    if h0 >= _UNREACHABLE:
        return SolveResult("unsolvable", None, 0)
    parent: _Parents = {start: None}
    best_cost = {start: 0}
    closed: set[_State] = set()
    # Ties on f go to the smaller heuristic (closer to a goal), then to insertion order for determinism.
    heap = [(h0, h0, 0, 0, start)]
    pushed = 1
    nodes = 0
    while heap:
        _, h, _, cost, state = heapq.heappop(heap)
        if state in closed:
            continue
        if h == 0:
            return SolveResult("solved", _replay(room, state, parent), nodes)
        if nodes >= max_nodes:
            return SolveResult("budget", None, nodes)
        closed.add(state)
        nodes += 1
        player, boxes = state
        walk = room.walk_distances(player, boxes)
        box_set = set(boxes)
        for i, box in enumerate(boxes):
            for k, d in enumerate(moves):
                steps = walk[box - d]
                ahead = box + d
                if steps < 0 or not free[ahead] or ahead in box_set:
                    continue
                to_go = push_distance[ahead]
                if to_go >= _UNREACHABLE:
                    continue
                new_boxes = tuple(sorted((*boxes[:i], ahead, *boxes[i + 1 :])))
                new_state = (box, new_boxes)
                new_cost = cost + steps + 1
                if new_cost >= best_cost.get(new_state, _UNREACHABLE) or new_state in closed:
                    continue
                if room.frozen(ahead, set(new_boxes)):
                    continue
                best_cost[new_state] = new_cost
                parent[new_state] = (state, k)
                new_h = h - push_distance[box] + to_go
                heapq.heappush(heap, (new_cost + new_h, new_h, pushed, new_cost, new_state))
                pushed += 1
    return SolveResult("unsolvable", None, nodes)


def solve(level: Level, *, max_nodes: int = 200_000) -> list[Action] | None:
    """A solution with the fewest moves (pushes included), or None when unsolvable or over `max_nodes`.

    Use `search` to tell an unsolvable level from an exhausted budget.
    """
    return search(level, max_nodes=max_nodes).actions


def _replay(room: _Room, goal: _State, parent: _Parents) -> list[Action]:
    """Expand the chain of pushes ending at `goal` into moves."""
    pushes: list[tuple[_State, int, int]] = []
    state = goal
    while (link := parent[state]) is not None:
        previous, k = link
        pushes.append((previous, k, state[0]))  # the player ends where the pushed box stood
        state = previous
    actions: list[Action] = []
    for (player, boxes), k, box in reversed(pushes):
        actions += room.walk_path(player, box - room.moves[k], boxes)
        actions.append(_ACTIONS[k])
    return actions


def all_move_distances(level: Level, *, max_states: int = 50_000) -> dict[bytes, int] | None:
    """Fewest moves to solve from every board reachable from `level`, or None past `max_states` boards.

    Unlike `search`, which answers for one board, this walks the whole move graph from the level (player moves
    included, episodes ending on solved boards) and then counts moves back from the solved boards, so one call
    gives the exact distance of every board an episode on this level can visit. Keys are the boards' tiles as
    `int8` bytes in the level's own shape; boards from which the level can no longer be solved get -1.
    """
    if max_states < 1:
        raise ValueError(f"max_states must be at least 1, got {max_states}")
    room = _Room(level)
    free, is_target, moves = room.free, room.is_target, room.moves
    start: _State = (room.player, tuple(sorted(room.boxes)))
    index = {start: 0}
    states = [start]
    predecessors: list[list[int]] = [[]]
    solved: list[int] = []
    for i, (player, boxes) in enumerate(states):  # breadth-first; `states` grows while it is walked
        if all(is_target[b] for b in boxes):
            solved.append(i)
            continue
        for d in moves:
            ahead = player + d
            if not free[ahead]:
                continue
            if ahead in boxes:
                beyond = ahead + d
                if not free[beyond] or beyond in boxes:
                    continue
                following: _State = (ahead, tuple(sorted(beyond if b == ahead else b for b in boxes)))
            else:
                following = (ahead, boxes)
            j = index.get(following)
            if j is None:
                if len(states) >= max_states:
                    return None
                j = index[following] = len(states)
                states.append(following)
                predecessors.append([])
            predecessors[j].append(i)
    distance = [-1] * len(states)
    frontier = deque(solved)
    for i in solved:
        distance[i] = 0
    while frontier:
        j = frontier.popleft()
        for i in predecessors[j]:
            if distance[i] < 0:
                distance[i] = distance[j] + 1
                frontier.append(i)
    return {_board_bytes(room, state): moves_left for state, moves_left in zip(states, distance, strict=True)}


def _board_bytes(room: _Room, state: _State) -> bytes:
    """The unpadded tiles of `state` as int8 bytes, as `Level.tiles.astype(np.int8).tobytes()` would give."""
    tiles = room.static.copy()
    player, boxes = state
    for box in boxes:
        tiles[box] = Tile.BOX_ON_TARGET if room.is_target[box] else Tile.BOX
    tiles[player] = Tile.PLAYER_ON_TARGET if room.is_target[player] else Tile.PLAYER
    return tiles.reshape(room.shape)[1:-1, 1:-1].tobytes()
