"""Named potentials for potential-based shaping, live over an env and offline over recorded states.

A potential Φ scores a state; `creditgym.wrappers.shaping` turns it into the shaping reward γΦ(s') − Φ(s).
Each named potential has up to three forms that agree on the same state (tested):

- `live(env)`: over a running env, through its declared methods (`potential()`, `state()`, `level`);
- `offline(observation, state)`: over a recorded step, where `state` is the env's `state()` dict (used by
  `creditgym rescore`);
- `batched(obs)`: over a batch of Sokoban one-hot observations `(N, 7, H, W)`, giving `(N,)` (used by
  `VectorPotentialShaping` on `SokobanVectorEnv`).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import permutations
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch

from creditgym.envs.sokoban.level import NUM_TILES, Level, Tile
from creditgym.envs.sokoban.solver import all_move_distances, search

EnvPotential = Callable[[gym.Env], float]
"""Φ over a live env: called with the wrapped env after reset and after every step."""
ObsPotential = Callable[[torch.Tensor], torch.Tensor]
"""Φ over a batch of Sokoban one-hot observations (N, 7, H, W), uint8, channels in `Tile` order -> (N,)."""
RecordPotential = Callable[[Any, Mapping[str, Any] | None], float]
"""Φ over a recorded step: (observation, the env's `state()` dict or None)."""


@dataclass(frozen=True)
class NamedPotential:
    """A built-in potential: what it measures, which env it is for, and its live/offline/batched forms."""

    name: str
    description: str
    env_class: str
    """Name of the env class (or a base class) it applies to, e.g. "SokobanEnv"."""
    live: EnvPotential
    offline: RecordPotential | None = None
    batched: ObsPotential | None = None

    def __call__(self, env: gym.Env) -> float:
        return self.live(env)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # Its forms are closures, which pickle refuses; by name it is rebuilt as it was built, so a shaped env
        # pickles (copies for worker processes, the conformance suite's copy check).
        return get_potential, (self.name,)

    def check_env(self, env: gym.Env) -> None:
        """Raise a ValueError naming the potentials that do fit when `env` is not the env this one is for."""
        classes = {cls.__name__ for cls in type(env.unwrapped).__mro__}
        if self.env_class not in classes:
            fitting = [name for name, p in _built_in().items() if p.env_class in classes]
            raise ValueError(
                f"potential {self.name!r} is for {self.env_class}, not {type(env.unwrapped).__name__}; "
                f"potentials for this env: {fitting or 'none built in (pass a callable over the env instead)'}"
            )


# -- Sokoban ---------------------------------------------------------------------------------------------------
def one_hot(tiles: np.ndarray) -> torch.Tensor:
    """(H, W) `Tile` values -> a (1, 7, H, W) uint8 one-hot batch, as the array observation."""
    channels = np.arange(NUM_TILES)[:, None, None]
    return torch.from_numpy((tiles[None] == channels).astype(np.uint8))[None]


def boxes_on_target(obs: torch.Tensor) -> torch.Tensor:
    """Boxes on targets, per board."""
    return obs[:, Tile.BOX_ON_TARGET].sum((1, 2)).to(torch.float64)


def box_distance(obs: torch.Tensor) -> torch.Tensor:
    """Minus the total Manhattan distance from boxes to targets under the best one-to-one assignment, per board.

    Exhaustive over assignments, as `SokobanEnv.potential("box_distance")`: fine for the few boxes of these levels.
    """
    boxes = (obs[:, Tile.BOX] | obs[:, Tile.BOX_ON_TARGET]).bool()
    targets = (obs[:, Tile.TARGET] | obs[:, Tile.BOX_ON_TARGET] | obs[:, Tile.PLAYER_ON_TARGET]).bool()
    counts = boxes.sum((1, 2))
    out = torch.zeros(len(obs), dtype=torch.float64, device=obs.device)
    # Boards are grouped by box count so each group's coordinates stack into one (n, k, 2) tensor.
    for k in counts.unique().tolist():
        rows = (counts == k).nonzero().squeeze(1)
        box_cells = boxes[rows].nonzero()[:, 1:].view(len(rows), k, 2)
        target_cells = targets[rows].nonzero()[:, 1:].view(len(rows), k, 2)
        cost = (box_cells[:, :, None, :] - target_cells[:, None, :, :]).abs().sum(-1)
        assignments = _permutations(k, obs.device)
        totals = cost[:, torch.arange(k, device=obs.device), assignments].sum(-1)
        out[rows] = -totals.min(-1).values.to(torch.float64)
    return out


@functools.cache
def _permutations(k: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(list(permutations(range(k))), dtype=torch.int64, device=device).view(-1, k)


DEAD_LOCK = -100.0
"""`SolverDistance`'s default potential of a board that can no longer be solved, in moves."""


class SolverDistance:
    """Minus the fewest moves that still solve the board (the exact −V* of a −1-per-move task), from the solver.

    For small levels. A board not seen before has the solver walk every board reachable from it
    (`creditgym.envs.sokoban.solver.all_move_distances`), and all their distances are cached at once, so a
    level costs one walk however its episodes go. Boards are cached up to translation, which makes the
    egocentric view (the room moves as the player does) as cheap as the full grid. Levels with more than
    `max_states` reachable boards fall back to one A* `search` per board. Unsolvable boards get `unsolvable`,
    which must lie below every solvable board's value.

    `unsolvable="below_farthest"` gives a dead-locked board one move less than the farthest board that can still
    be solved on its level: the highest value that still ranks every dead-lock below every live board. Under a
    short agent horizon (`PPOConfig.shaping_gamma` above `gamma`) a dead-locking move's shaping then costs a few
    moves' worth, not a hundred, so it does not swamp the per-move signal once advantages are normalised.

    Args:
        max_states: most boards to walk per level before falling back to per-board search.
        max_nodes: search budget per board in that fallback; running out raises, since the value would not be
            exact.
        unsolvable: the potential of a board that can no longer be solved, or "below_farthest" (above). Levels
            too big to walk have no farthest board, and their dead-locks get -100 under "below_farthest".
    """

    def __init__(self, *, max_states: int = 50_000, max_nodes: int = 50_000,
                 unsolvable: float | Literal["below_farthest"] = DEAD_LOCK) -> None:
        if isinstance(unsolvable, str) and unsolvable != "below_farthest":
            raise ValueError(f'unsolvable must be a number or "below_farthest", got {unsolvable!r}')
        self.max_states = max_states
        self.max_nodes = max_nodes
        self.unsolvable = unsolvable
        self._moves_left: dict[tuple[tuple[int, ...], bytes], int] = {}
        """Fewest moves to solve per board; -1 when it can no longer be solved."""
        self._farthest: dict[tuple[tuple[int, ...], bytes], int] = {}
        """Per dead-locked board from a walked level, the level's farthest solvable distance."""
        self._too_big: set[tuple[tuple[int, ...], bytes]] = set()
        """Rooms (walls, floor, targets) whose walk ran past `max_states`."""

    def __call__(self, tiles: np.ndarray) -> float:
        return self._value(_to_corner(np.asarray(tiles, dtype=np.int8)))

    def batched(self, obs: torch.Tensor) -> torch.Tensor:
        boards = _to_corner_batched(obs.argmax(1)).to(torch.int8).cpu().numpy()
        return torch.tensor([self._value(board) for board in boards], dtype=torch.float64, device=obs.device)

    def _value(self, board: np.ndarray) -> float:
        key = (board.shape, board.tobytes())
        moves_left = self._moves_left.get(key)
        if moves_left is None:
            moves_left = self._solve(board, key)
        if moves_left >= 0:
            return -float(moves_left)
        if self.unsolvable != "below_farthest":
            return self.unsolvable
        farthest = self._farthest.get(key)
        return DEAD_LOCK if farthest is None else -1.0 - farthest

    def _solve(self, board: np.ndarray, key: tuple[tuple[int, ...], bytes]) -> int:
        level = Level(board)
        room = (board.shape, level.static_tiles().astype(np.int8).tobytes())
        table = None if room in self._too_big else all_move_distances(level, max_states=self.max_states)
        if table is not None:
            self._moves_left.update(((board.shape, b), d) for b, d in table.items())
            farthest = max(0, *table.values())
            self._farthest.update(((board.shape, b), farthest) for b, d in table.items() if d < 0)
            return table[board.tobytes()]
        self._too_big.add(room)
        result = search(level, max_nodes=self.max_nodes)
        if result.status == "budget":
            raise ValueError(
                f"solver_distance: the solver ran out of its {self.max_nodes}-node budget on a "
                f"{board.shape[0]}x{board.shape[1]} board; it is meant for small levels. Raise max_nodes "
                "or use box_distance"
            )
        self._moves_left[key] = -1 if result.actions is None else len(result.actions)
        return self._moves_left[key]


def _to_corner(tiles: np.ndarray) -> np.ndarray:
    """The board shifted so its room (the non-wall cells) starts at row 1, column 1.

    What rolls off one edge comes back on the other, which is wall whenever the room leaves one row and one
    column of wall beside it, as every enclosed room does.
    """
    rows, cols = np.nonzero(tiles != Tile.WALL)
    return np.roll(tiles, (1 - rows.min(), 1 - cols.min()), axis=(0, 1))


def _to_corner_batched(tiles: torch.Tensor) -> torch.Tensor:
    """`_to_corner` for a batch of boards (N, H, W)."""
    height, width = tiles.shape[1:]
    room = tiles != Tile.WALL
    top = room.any(2).to(torch.uint8).argmax(1)
    left = room.any(1).to(torch.uint8).argmax(1)
    rows = top[:, None] + torch.arange(-1, height - 1, device=tiles.device)
    cols = left[:, None] + torch.arange(-1, width - 1, device=tiles.device)
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    index = rows.clamp(0, height - 1)[:, :, None] * width + cols.clamp(0, width - 1)[:, None, :]
    moved = tiles.reshape(len(tiles), -1).gather(1, index.reshape(len(tiles), -1)).view_as(tiles)
    return torch.where(inside, moved, torch.full_like(moved, Tile.WALL))


def _recorded(state: Mapping[str, Any] | None, key: str) -> Mapping[str, Any]:
    if state is None or key not in state:
        raise ValueError(f"this potential needs the recorded state()[{key!r}]; record with record_state=True")
    return state


# Re-scoring a recording meets the same boards again and again (6,888 distinct boards in 48,692 steps of a PPO
# recording): parsing and checking one as a `Level` took 270 µs, twice what a potential then spends on it. Boards up
# to 32x32 cells are cached (the egocentric window of a 10x10 level, walled, is 21x21): at most about 40 MB.
_RECORDED_BOARDS_CACHED = 1 << 14
_MAX_CACHED_CELLS = 32 * 32


def _rows(state: Mapping[str, Any] | None) -> tuple[str, ...]:
    return tuple(_recorded(state, "board")["board"])


def _cached(rows: tuple[str, ...]) -> bool:
    return sum(len(row) if isinstance(row, str) else _MAX_CACHED_CELLS for row in rows) <= _MAX_CACHED_CELLS


def _board(state: Mapping[str, Any] | None) -> np.ndarray:
    """The recorded board's tiles (read-only), parsed and checked as a `Level` once per distinct board."""
    rows = _rows(state)
    return _parsed_board(rows) if _cached(rows) else Level.from_rows(rows).tiles


@functools.lru_cache(maxsize=_RECORDED_BOARDS_CACHED)
def _parsed_board(rows: tuple[str, ...]) -> np.ndarray:
    return Level.from_rows(rows).tiles


@functools.lru_cache(maxsize=_RECORDED_BOARDS_CACHED)
def _cached_value(batched: ObsPotential, rows: tuple[str, ...]) -> float:
    return float(batched(one_hot(_parsed_board(rows)))[0])


def _recorded_value(batched: ObsPotential, state: Mapping[str, Any] | None) -> float:
    rows = _rows(state)
    return _cached_value(batched, rows) if _cached(rows) else float(batched(one_hot(Level.from_rows(rows).tiles))[0])


def _sokoban(name: str, description: str, batched: ObsPotential) -> NamedPotential:
    return NamedPotential(
        name, description, "SokobanEnv",
        live=lambda env: env.unwrapped.potential(name),
        offline=lambda observation, state: _recorded_value(batched, state),
        batched=batched,
    )


def _solver_distance(name: str, description: str, unsolvable: float | Literal["below_farthest"]) -> NamedPotential:
    solver = SolverDistance(unsolvable=unsolvable)
    return NamedPotential(
        name, description, "SokobanEnv",
        live=lambda env: solver(env.unwrapped.level.tiles),
        offline=lambda observation, state: solver(_board(state)),
        batched=solver.batched,
    )


# -- env hooks and MiniGrid ------------------------------------------------------------------------------------
def _hook(name: str, description: str, env_class: str) -> NamedPotential:
    return NamedPotential(name, description, env_class, live=lambda env: float(env.unwrapped.potential()))


def goal_distance(state: Mapping[str, Any]) -> float:
    """MiniGrid: minus the shortest walk from the agent to the goal tile through non-wall cells (doors count open).

    Raises ValueError when the world has no goal tile (BabyAI missions name objects instead).
    """
    from minigrid.core.constants import OBJECT_TO_IDX

    objects = np.asarray(state["grid"])[..., 0]  # (width, height): MiniGrid indexes cells as [x, y]
    goals = {tuple(cell) for cell in np.argwhere(objects == OBJECT_TO_IDX["goal"]).tolist()}
    if not goals:
        raise ValueError("goal_distance needs a MiniGrid goal tile; this world has none (e.g. a BabyAI mission)")
    start = tuple(state["agent_pos"])
    steps = {start: 0}
    frontier = deque([start])
    while frontier:
        cell = frontier.popleft()
        if cell in goals:
            return -float(steps[cell])
        x, y = cell
        for nxt in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            inside = 0 <= nxt[0] < objects.shape[0] and 0 <= nxt[1] < objects.shape[1]
            if inside and nxt not in steps and objects[nxt] != OBJECT_TO_IDX["wall"]:
                steps[nxt] = steps[cell] + 1
                frontier.append(nxt)
    return -float(objects.size)


def _built_in() -> dict[str, NamedPotential]:
    # Built fresh on each call so every wrapper gets its own solver cache.
    potentials = [
        _sokoban("boxes_on_target", "Sokoban: boxes on targets", boxes_on_target),
        _sokoban("box_distance", "Sokoban: minus the box-to-target distance under the best assignment",
                 box_distance),
        _solver_distance("solver_distance", "Sokoban: minus the solver's fewest moves to solve (exact, small levels; "
                         "dead-locks -100)", unsolvable=DEAD_LOCK),
        _solver_distance("solver_distance_tight", "Sokoban: solver_distance with each dead-lock one move below the "
                         "farthest solvable board of its level", unsolvable="below_farthest"),
        _hook("shop_progress", "Shop: progress stage in [0, 3] (ShopEnv.potential)", "ShopEnv"),
        _hook("plan_progress", "ToolUse: mean best ToolRL score per reference-plan turn, in [0, 1] "
              "(ToolUseEnv.potential)", "ToolUseEnv"),
        _hook("slots_revealed", "Dialogue: share of hidden slots revealed (DialogueGatherEnv.potential)",
              "DialogueGatherEnv"),
        NamedPotential("goal_distance", "MiniGrid text: minus the walk to the goal tile, where there is one",
                       "MiniGridTextEnv", live=lambda env: goal_distance(env.unwrapped.state()),
                       offline=lambda observation, state: goal_distance(_recorded(state, "grid"))),
    ]
    return {p.name: p for p in potentials}


def potential_names() -> list[str]:
    """Names accepted by `get_potential`, `PotentialShaping` and `creditgym rescore --potential`."""
    return list(_built_in())


def get_potential(name: str) -> NamedPotential:
    """The built-in potential called `name` (a fresh instance); a ValueError lists the valid names otherwise."""
    potentials = _built_in()
    if name not in potentials:
        listing = "; ".join(f"{p.name} ({p.description})" for p in potentials.values())
        raise ValueError(f"unknown potential {name!r}; valid names: {listing}")
    return potentials[name]
