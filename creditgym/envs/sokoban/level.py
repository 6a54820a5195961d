"""Sokoban tiles and the level type shared by the generator, solver, loaders and both envs."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Tile(IntEnum):
    """What occupies one cell. The order follows gym-sokoban, so arrays are interchangeable."""

    WALL = 0
    FLOOR = 1
    TARGET = 2
    BOX_ON_TARGET = 3
    BOX = 4
    PLAYER = 5
    PLAYER_ON_TARGET = 6


NUM_TILES = len(Tile)

BOX_TILES = (Tile.BOX, Tile.BOX_ON_TARGET)
PLAYER_TILES = (Tile.PLAYER, Tile.PLAYER_ON_TARGET)
TARGET_TILES = (Tile.TARGET, Tile.BOX_ON_TARGET, Tile.PLAYER_ON_TARGET)

#: Boxoban / XSB symbols ('#' wall, ' ' floor, '.' goal, '$' box, '*' box on goal, '@' player, '+' player on goal).
BOXOBAN_SYMBOLS: dict[Tile, str] = {
    Tile.WALL: "#",
    Tile.FLOOR: " ",
    Tile.TARGET: ".",
    Tile.BOX_ON_TARGET: "*",
    Tile.BOX: "$",
    Tile.PLAYER: "@",
    Tile.PLAYER_ON_TARGET: "+",
}

#: RAGEN / GEM symbols, the default for the text view.
RAGEN_SYMBOLS: dict[Tile, str] = {
    Tile.WALL: "#",
    Tile.FLOOR: "_",
    Tile.TARGET: "O",
    Tile.BOX_ON_TARGET: "√",
    Tile.BOX: "X",
    Tile.PLAYER: "P",
    Tile.PLAYER_ON_TARGET: "S",
}

_FROM_BOXOBAN = {symbol: tile for tile, symbol in BOXOBAN_SYMBOLS.items()}
# "-" and "_" are floor in some XSB dialects.
_FROM_BOXOBAN.update({"-": Tile.FLOOR, "_": Tile.FLOOR})


class LevelError(ValueError):
    """A level is not a playable Sokoban room; the message says what is wrong."""


@dataclass(frozen=True, eq=False)
class Level:
    """One Sokoban room: an (H, W) int8 array of `Tile` values holding walls, targets, boxes and the player.

    Every level is checked on construction: one player, as many boxes as targets (at least one), and the
    player's reachable area enclosed by walls, so movement never leaves the grid.
    """

    tiles: np.ndarray

    def __post_init__(self) -> None:
        tiles = np.asarray(self.tiles)
        if tiles.ndim != 2 or min(tiles.shape) < 3:
            raise LevelError(f"a level must be a 2-D grid of at least 3x3 cells, got shape {tiles.shape}")
        if tiles.min() < 0 or tiles.max() >= NUM_TILES:
            raise LevelError(f"tile values must be in 0..{NUM_TILES - 1}")
        tiles = tiles.astype(np.int8, copy=True)
        tiles.setflags(write=False)
        object.__setattr__(self, "tiles", tiles)
        num_players = int(np.isin(tiles, PLAYER_TILES).sum())
        if num_players != 1:
            raise LevelError(f"a level needs exactly one player, found {num_players}")
        if self.num_boxes == 0 or self.num_boxes != len(self.targets):
            raise LevelError(
                f"a level needs as many boxes as targets (at least one): {self.num_boxes} boxes, "
                f"{len(self.targets)} targets"
            )
        # Boxes can be pushed, so only walls enclose; this keeps every move and push inside the grid.
        area = flood_fill(tiles == Tile.WALL, self.player)
        if area[0].any() or area[-1].any() or area[:, 0].any() or area[:, -1].any():
            raise LevelError("the player's area is not enclosed by walls: it reaches the edge of the grid")

    # -- conversions --------------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: Sequence[str]) -> Level:
        """Parse Boxoban/XSB rows. Short rows are padded with floor; outside cells stay unreachable."""
        if not rows:
            raise LevelError("a level needs at least one row")
        width = max(len(row) for row in rows)
        tiles = np.full((len(rows), width), Tile.FLOOR, dtype=np.int8)
        for r, row in enumerate(rows):
            for c, symbol in enumerate(row):
                tile = _FROM_BOXOBAN.get(symbol)
                if tile is None:
                    raise LevelError(f"unknown symbol {symbol!r} at row {r}, column {c}")
                tiles[r, c] = tile
        return cls(tiles)

    @classmethod
    def _prechecked(cls, tiles: np.ndarray) -> Level:
        """A level from a read-only (H, W) int8 array that already passed these checks in bulk.

        The Boxoban reader checks a whole file with array operations; checking each level again here is what
        made loading cost 160 µs a level.
        """
        level = object.__new__(cls)
        object.__setattr__(level, "tiles", tiles)
        return level

    def to_rows(self, symbols: dict[Tile, str] = BOXOBAN_SYMBOLS) -> list[str]:
        return board_rows(self.tiles, symbols)

    def __str__(self) -> str:
        return "\n".join(self.to_rows())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Level) and np.array_equal(self.tiles, other.tiles)

    def __hash__(self) -> int:
        return hash((self.tiles.shape, self.tiles.tobytes()))

    # -- queries ------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.tiles.shape  # type: ignore[return-value]

    @property
    def player(self) -> tuple[int, int]:
        r, c = np.argwhere(np.isin(self.tiles, PLAYER_TILES))[0]
        return int(r), int(c)

    @property
    def boxes(self) -> list[tuple[int, int]]:
        return [(int(r), int(c)) for r, c in np.argwhere(np.isin(self.tiles, BOX_TILES))]

    @property
    def targets(self) -> list[tuple[int, int]]:
        return [(int(r), int(c)) for r, c in np.argwhere(np.isin(self.tiles, TARGET_TILES))]

    @property
    def num_boxes(self) -> int:
        return int(np.isin(self.tiles, BOX_TILES).sum())

    @property
    def boxes_on_target(self) -> int:
        return int((self.tiles == Tile.BOX_ON_TARGET).sum())

    @property
    def is_solved(self) -> bool:
        return self.boxes_on_target == self.num_boxes

    def reachable_mask(self) -> np.ndarray:
        """Cells the player can walk to without pushing (walls and boxes block)."""
        blocked = (self.tiles == Tile.WALL) | np.isin(self.tiles, BOX_TILES)
        return flood_fill(blocked, self.player)

    def static_tiles(self) -> np.ndarray:
        """The room without boxes and player: WALL, FLOOR and TARGET only."""
        room = np.where(self.tiles == Tile.WALL, Tile.WALL, Tile.FLOOR).astype(np.int8)
        room[np.isin(self.tiles, TARGET_TILES)] = Tile.TARGET
        return room


def board_rows(tiles: np.ndarray, symbols: dict[Tile, str]) -> list[str]:
    """(H, W) tiles -> one string of symbols per row."""
    table = [symbols[Tile(t)] for t in range(NUM_TILES)]
    return ["".join([table[t] for t in row]) for row in tiles.tolist()]


def flood_fill(blocked: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """4-connected cells reachable from `start` through cells that are not `blocked`."""
    height, width = blocked.shape
    seen = np.zeros_like(blocked, dtype=bool)
    seen[start] = True
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < height and 0 <= nc < width and not seen[nr, nc] and not blocked[nr, nc]:
                seen[nr, nc] = True
                queue.append((nr, nc))
    return seen
