"""The rules of Sokoban on a single level, shared by the single env, the solver and the tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import IntEnum

import numpy as np

from creditgym.envs.arguments import FiniteRewards
from creditgym.envs.sokoban.level import Tile


class Action(IntEnum):
    UP = 0
    DOWN = 1
    LEFT = 2
    RIGHT = 3


#: (row, column) step for each action.
DELTAS: dict[Action, tuple[int, int]] = {
    Action.UP: (-1, 0),
    Action.DOWN: (1, 0),
    Action.LEFT: (0, -1),
    Action.RIGHT: (0, 1),
}

# Indexed by tile value: what a cell becomes when the player or a box leaves or arrives.
_FREE = np.array([False, True, True, False, False, False, False])
_IS_BOX = np.array([False, False, False, True, True, False, False])
_IS_TARGET = np.array([False, False, True, True, False, False, True])
_PLAYER_ON = {False: Tile.PLAYER, True: Tile.PLAYER_ON_TARGET}
_BOX_ON = {False: Tile.BOX, True: Tile.BOX_ON_TARGET}
_EMPTY = {False: Tile.FLOOR, True: Tile.TARGET}


@dataclass(frozen=True)
class MoveResult:
    player: tuple[int, int]
    moved: bool
    pushed: bool
    box_on_target: bool
    """A box was pushed onto a target."""
    box_off_target: bool
    """A box was pushed off a target."""


def apply_move(tiles: np.ndarray, player: tuple[int, int], action: int) -> MoveResult:
    """Move the player in place on `tiles` (an (H, W) array of Tile values), pushing one box if free behind.

    Moving into a wall or into a box that cannot move is a no-op. The level must be enclosed by walls
    (`Level` guarantees it), so indices never leave the grid.
    """
    dr, dc = DELTAS[Action(action)]
    r, c = player
    r1, c1 = r + dr, c + dc
    ahead = int(tiles[r1, c1])
    pushed = box_on = box_off = False
    if _IS_BOX[ahead]:
        r2, c2 = r1 + dr, c1 + dc
        behind = int(tiles[r2, c2])
        if not _FREE[behind]:
            return MoveResult(player, False, False, False, False)
        pushed = True
        box_off = bool(_IS_TARGET[ahead])
        box_on = bool(_IS_TARGET[behind])
        tiles[r2, c2] = _BOX_ON[box_on]
    elif not _FREE[ahead]:
        return MoveResult(player, False, False, False, False)
    tiles[r, c] = _EMPTY[bool(_IS_TARGET[tiles[r, c]])]
    tiles[r1, c1] = _PLAYER_ON[bool(_IS_TARGET[tiles[r1, c1]])]
    return MoveResult((r1, c1), True, pushed, box_on, box_off)


def effective_moves(tiles: np.ndarray, player: tuple[int, int]) -> np.ndarray:
    """(4,) bool: which actions change the board (not into a wall, not into a box that cannot move)."""
    mask = np.zeros(len(Action), bool)
    r, c = player
    for action, (dr, dc) in DELTAS.items():
        ahead = int(tiles[r + dr, c + dc])
        mask[action] = bool(_FREE[ahead]) or (bool(_IS_BOX[ahead]) and bool(_FREE[tiles[r + 2 * dr, c + 2 * dc]]))
    return mask


@dataclass(frozen=True)
class SokobanRewards(FiniteRewards):
    """Reward sizes; the defaults follow gym-sokoban (also used by RAGEN and GEM)."""

    step: float = -0.1
    """Paid every step, valid or not, into the `task` channel."""
    box_on_target: float = 1.0
    """A box pushed onto a target."""
    box_off_target: float = -1.0
    """A box pushed off a target."""
    solved: float = 10.0
    """All boxes on targets; the episode terminates."""
    invalid_action: float = -0.1
    """Text view only: unparseable text, paid into the `format` channel instead of the step penalty."""



#: Named reward schemes. "outcome" is the sparse reward that the credit-assignment methods start from: gym-sokoban's
#: per-box rewards are themselves shaping (a potential of boxes on targets at gamma 1), so they are off.
REWARD_PRESETS: dict[str, SokobanRewards] = {
    "gym-sokoban": SokobanRewards(),
    "outcome": SokobanRewards(box_on_target=0.0, box_off_target=0.0),
}


def resolve_rewards(rewards: SokobanRewards | str | Mapping[str, float] | None) -> SokobanRewards:
    """Rewards from an instance, a preset name (`REWARD_PRESETS`), a mapping of field values, or None (gym-sokoban).

    Names and mappings let the rewards travel through JSON, e.g. `--env-kwargs '{"rewards": "outcome"}'`.
    """
    if rewards is None:
        return SokobanRewards()
    if isinstance(rewards, SokobanRewards):
        return rewards
    if isinstance(rewards, str):
        if rewards not in REWARD_PRESETS:
            raise ValueError(f"rewards must be one of {sorted(REWARD_PRESETS)} or a mapping of SokobanRewards fields, "
                             f"got {rewards!r}")
        return REWARD_PRESETS[rewards]
    if isinstance(rewards, Mapping):
        known = {f.name for f in fields(SokobanRewards)}
        unknown = sorted(set(rewards) - known)
        if unknown:
            raise ValueError(f"unknown SokobanRewards fields {unknown}; the fields are {sorted(known)}")
        try:
            values = {name: float(value) for name, value in rewards.items()}
        except (TypeError, ValueError) as error:
            raise ValueError(f"SokobanRewards values must be numbers, got {dict(rewards)!r}") from error
        return SokobanRewards(**values)
    raise ValueError(f"rewards must be a SokobanRewards, a preset name or a mapping, got {type(rewards).__name__}")
